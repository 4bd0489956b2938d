"""Helpers shared by the tests: polling waits, subprocess logs, misbehaving servers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from flowflexd.client import FlowFlex
from flowflexd.commands.cli import destination_client, make_clients
from flowflexd.config.model import load
from flowflexd.engine import journal
from flowflexd.engine.daemon import Daemon
from flowflexd.engine.journal import Journal
from flowflexd.engine.outcomes import Verdict
from flowflexd.engine.pipeline import Pipeline
from flowflexd.inbox.spool import SPARE_PREFIX, Claim, Spool

T = TypeVar("T")


ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> str:
    """The shell block under ``<!-- marker -->`` in the README, as a reader copies it."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```sh\n(.*?)```", text, re.DOTALL)
    assert found, f"README has no {marker} block"
    return found.group(1)


def need(*programs: str) -> None:
    """Skip (fail in CI, where .ci/run installs them) when a program is missing."""
    missing = [p for p in programs if shutil.which(p) is None and not Path(p).exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (Debian: see .ci/run for the packages)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def readme_yaml(marker: str) -> str:
    """The YAML block under ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```yaml\n(.*?)```", text, re.DOTALL)
    assert found, f"README has no {marker} block"
    return found.group(1)


@contextmanager
def reachable_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder other users can reach (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


NOBODY = 65534  # Debian's nobody and nogroup


def as_nobody(*, cap_lease: bool = False) -> list[str]:
    """``setpriv``'s words for running what follows as nobody: no capability, or CAP_LEASE alone
    (the one the unit's AmbientCapabilities= grants)."""
    caps = ["--inh-caps=-all,+lease", "--ambient-caps=+lease"] if cap_lease else ["--inh-caps=-all"]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *caps]


def skip_unless_nobody_runs(argv: Sequence[str]) -> None:
    """Skip, saying why, when ``argv`` cannot start as nobody.

    This environment's Python may sit where another user cannot reach it (a
    private home) or cannot load it (a shared libpython found only through
    root's environment). CI's is Debian's own, which everyone can run: there
    it fails, so that the service-user tests are never skipped unseen.
    """
    done = subprocess.run(
        [*as_nobody(), *argv], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        message = f"{argv[0]} does not start as nobody: {said}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback port free at this moment (another process may take it before we do)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a socket listening on loopback ``port``.

    A connect alone would also succeed against another process that took the
    port first, while ours failed to bind and is on its way out.
    """
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            inodes.add(f"socket:[{inode}]")
    if not inodes:
        return False
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        return True  # its descriptors are hidden from us: a listener on the port is all we know
    except FileNotFoundError:
        return False
    for fd in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def start_listener(
    launch: Callable[[int], subprocess.Popen[bytes]],
    what: str,
    *,
    tries: int = 5,
    timeout: float = 20.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free loopback port: ``launch(port)`` starts it on that port.

    The port is free when chosen, not when the server binds it: another test's
    server or an outgoing connection can take it in between. A server that
    exits before listening is started again on a new port.
    """
    for _ in range(tries):
        port = free_port()
        proc = launch(port)
        deadline = time.monotonic() + timeout
        while not listens(proc.pid, port):
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")
            time.sleep(0.02)
        else:
            return proc, port
    raise RuntimeError(
        f"{what} exited with {proc.returncode} before listening, {tries} times on new ports"
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256(path.read_bytes())


class LoggedProcess:
    """A subprocess whose stderr and stdout lines are collected as they come."""

    def __init__(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.snapshot():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def wait_for_log(self, event: str, *, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        def find() -> dict[str, Any]:
            for record in self.json_lines():
                if record.get("event") == event and all(
                    record.get(k) == v for k, v in fields.items()
                ):
                    return record
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.proc.returncode}) before logging {event!r}:\n"
                    + "\n".join(self.snapshot())
                )
            return {}

        return wait_until(find, timeout=timeout, what=f"log line {event!r} {fields}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("process did not exit:\n" + "\n".join(self.snapshot())) from None

    @contextmanager
    def held_still(self) -> Iterator[None]:
        """SIGSTOP the process, and go on only once every thread of it has stopped; SIGCONT after.

        The signal is sent, not yet acted on, when ``send_signal`` returns: a
        thread running on the other CPU goes on for a moment, long enough to
        read events or take a lock the test means it not to.
        """
        self.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(
                lambda: all(state == "T" for state in thread_states(self.proc.pid)),
                what=f"every thread of {self.proc.pid} stopped",
            )
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def output(self) -> str:
        for reader in self._readers:
            reader.join(timeout=5)
        return "\n".join(self.snapshot())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def thread_states(pid: int) -> list[str]:
    """The state letter of each thread of ``pid`` (``T``: stopped), read from /proc."""
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        states.append(stat.rsplit(")", 1)[1].split()[0])
    return states


def flowflexd_argv(*args: str) -> list[str]:
    """Run the real console script from the same environment as the tests."""
    script = Path(sys.executable).with_name("flowflexd")
    return [str(script), *args]


def block_inbox(base: Path) -> Path:
    """``base``/inbox made one flowflexd cannot take up: someone's file where its work goes.

    Removing that file (``.flowflexd``) is the fix; the daemon takes the inbox up by itself.
    """
    inbox = base / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / ".flowflexd").write_text("someone's file where flowflexd keeps its work")
    return inbox


def status_json(config: Path) -> list[dict[str, Any]]:
    """``flowflexd status -c CONFIG --json`` as a subprocess: one row per folder."""
    shown = subprocess.run(
        flowflexd_argv("status", "-c", str(config), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(shown.stdout)
    return rows


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWFLEX", "NOTIFY_SOCKET"))}
    env.update(extra)
    return env


class RawServer:
    """A TCP server on loopback that misbehaves on purpose, counting connections.

    ``mode`` is ``close`` (accept and hang up at once), ``silent`` (accept
    and never answer), ``bad-gzip`` (answer 200 with a body that claims to
    be gzip and is not) or ``script``: answer each request on a kept-alive
    connection with ``answer``, bytes as they go on the wire (hanging up
    after one that says ``Connection: close`` or is HTTP/1.0).
    """

    def __init__(self, mode: str, answer: bytes = b"") -> None:
        self.mode = mode
        self.answer = answer
        self.requests = 0
        self.accepted = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def client(self, **settings: Any) -> FlowFlex:
        """A client of this server: two attempts, short backoff, unless ``settings`` say."""
        return FlowFlex(
            **{
                "api_key": "k",
                "api_secret": "a-long-secret",
                "integration_code": "ic",
                "base_url": self.url,
                "max_attempts": 2,
                "backoff_base_seconds": 0.01,
                **settings,
            }
        )

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.mode == "close":
                conn.recv(65536)
                conn.close()
            elif self.mode == "bad-gzip":
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Encoding: gzip\r\nContent-Length: 8\r\n"
                    b"Connection: close\r\n\r\nnot gzip"
                )
                conn.close()
            elif self.mode == "script":
                threading.Thread(target=self._script, args=(conn,), daemon=True).start()
            else:
                self._held.append(conn)

    def _script(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with conn, reader:
            while True:
                request = reader.readline()
                if not request:
                    return
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                reader.read(length)
                self.requests += 1
                conn.sendall(self.answer)
                if b"Connection: close" in self.answer or self.answer.startswith(b"HTTP/1.0"):
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._sock.close()


class _EchoAuthHandler(BaseHTTPRequestHandler):
    """A hostile API that repeats the caller's Authorization header in its errors."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        auth = self.headers.get("Authorization", "")
        body = json.dumps(
            {
                "error": f"rejected {auth}",
                "code": "BAD",
                "echo": {"authorization": auth, "list": [auth]},
            }
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _RedirectHandler(BaseHTTPRequestHandler):
    """An API or storage that answers every request with a 307 to ``/elsewhere``."""

    protocol_version = "HTTP/1.1"
    seen: list[str]  # paths asked for, set per server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _redirect(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(self.path)
        self.send_response(307)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_GET = _redirect


@contextmanager
def redirect_server() -> Iterator[tuple[str, list[str]]]:
    """A server on loopback that redirects everything; yields its URL and the paths it saw."""
    seen: list[str] = []
    handler = type("Handler", (_RedirectHandler,), {"seen": seen})
    with _serving(handler) as url:
        yield url, seen


@contextmanager
def echo_auth_server() -> Iterator[str]:
    with _serving(_EchoAuthHandler) as url:
        yield url


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client_for(emulator: Any, **options: Any) -> FlowFlex:
    """Our client pointed at an emulator, with backoff short enough for tests."""
    options.setdefault("backoff_base_seconds", 0.01)
    options.setdefault("backoff_max_seconds", 0.05)
    return FlowFlex(
        api_key=emulator.api_key,
        api_secret=emulator.api_secret,
        integration_code=emulator.integration_code,
        base_url=emulator.url,
        **options,
    )


# ------------------------------------------------------------------ the daemon


def write_config(
    path: Path,
    emulator: Any,
    *,
    folders: list[dict[str, Any]],
    secret: str | None = None,
    **top: Any,
) -> Path:
    """A configuration file pointing at ``emulator``, readable only by its owner."""
    data: dict[str, Any] = {
        "flowflex": {
            "base_url": emulator.url,
            "api_key": emulator.api_key,
            "api_secret": secret or emulator.api_secret,
            "integration_code": emulator.integration_code,
            "timeout_seconds": 5,
        },
        "workers": 4,
        "settle_seconds": 0.3,
        "state_dir": str(path.parent / "state"),
        **top,
        "folders": folders,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


class RunningDaemon:
    """The real daemon (scheduler, workers, folder watches) on a thread."""

    def __init__(
        self,
        config_path: Path,
        *,
        once: bool = False,
        notifier: Any = None,
        reload_config: Any = None,
    ) -> None:
        self.config = load(config_path)
        self.cancel = threading.Event()
        clients = make_clients(self.config, self.cancel)
        self.client = next(iter(clients.values()))
        self.daemon = Daemon(
            self.config,
            self.client,
            clients=clients,
            once=once,
            notifier=notifier,
            reload_config=reload_config,
            make_client=lambda fresh, api: destination_client(fresh, api, self.cancel),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.daemon.ready.is_set() or self.error, what="daemon ready")
        if self.error:
            raise self.error

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as err:
            self.error = err

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "daemon did not stop"
        if self.error:
            raise self.error

    def __enter__(self) -> RunningDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PDF_END = b"\n%%EOF\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def pdf(body: bytes = b"") -> bytes:
    """Bytes that end like a whole PDF, as flowflexd's format check wants."""
    return b"%PDF-1.7\n" + body + PDF_END


def drop(folder: Path, name: str, data: bytes) -> Path:
    """Write a file the way a quick copier does: open, write, close."""
    path = folder / name
    with path.open("wb") as fh:
        fh.write(data)
    return path


def files_in(folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir() if p.is_file()}
    except FileNotFoundError:
        return set()


def files_below(root: Path) -> set[str]:
    """Every file below ``root`` ("a/b.pdf"), but in flowflexd's own folder (lock, claims).

    Safe while a daemon runs: a folder that vanishes mid-walk (a claim's,
    released) is passed over, as os.walk does, where Path.rglob would raise.
    """
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".flowflexd"]
        below = Path(folder).relative_to(root)
        found.update((below / f).as_posix() for f in files if os.path.isfile(Path(folder, f)))
    return found


def read_report(failed: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((failed / f"{name}.error.json").read_text()))


def read_claim(claim_dir: Path) -> dict[str, Any]:
    """A claim's current state: its last state line with the delta lines after it."""
    claim = Claim.from_lines((claim_dir / "claim.jsonl").read_bytes())
    return dict(json.loads(claim.to_json()))


def claim_dirs(inbox: Path) -> list[Path]:
    """The claim folders in an inbox's work area; not the emptied ones kept for reuse."""
    work = inbox / ".flowflexd" / "work"
    if not work.exists():
        return []
    return sorted(d for d in work.iterdir() if not d.name.startswith(SPARE_PREFIX))


def claims_in(inbox: Path) -> list[dict[str, Any]]:
    return [read_claim(d) for d in claim_dirs(inbox)]


def nothing_sent(emulator: Any) -> None:
    """No byte of any file and no event reached the emulator (an upload URL may
    have been asked for while the file settled: that carries only its name)."""
    paths = emulator.stats()["requests_by_path"]
    assert "/_storage" not in paths, paths
    assert not any(p.startswith("/v1/events/") for p in paths), paths
    assert emulator.events() == []


def run_daemon(config: Path, **env: str) -> LoggedProcess:
    """``flowflexd run -c CONFIG`` with JSON logs, in a clean environment plus ``env``."""
    return LoggedProcess(
        flowflexd_argv("run", "-c", str(config), "--log-format", "json"), env=child_env(**env)
    )


def folder_spec(base: Path, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A folder for the configuration: ``base``/inbox with done and failed beside it."""
    return {
        "path": str(base / "inbox"),
        "done": str(base / "done"),
        "failed": str(base / "failed"),
        "rules": rules,
        **extra,
    }


class Folders:
    """One inbox with its done and failed folders under ``root``, and its configuration."""

    FOLDER_KEYS = ("poll", "poll_interval", "unmatched", "order", "own_thread")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.done = root / "done"
        self.failed = root / "failed"
        self.inbox.mkdir()

    def config(self, emulator: Any, rules: list[dict[str, Any]], **options: Any) -> Path:
        """Write config.yaml: folder keys (poll, unmatched ...) go to the folder, others on top."""
        extra = {k: options.pop(k) for k in self.FOLDER_KEYS if k in options}
        spec = folder_spec(self.root, rules, **extra)
        return write_config(self.root / "config.yaml", emulator, folders=[spec], **options)


class SpoolRun:
    """One inbox's spool and a pipeline to the emulator, driven by hand in-process.

    What the daemon's loop does (claims, carrying them, commits) is called
    directly; files, folders, the journal and HTTP are real.
    """

    def __init__(self, root: Path, emulator: Any) -> None:
        self.layout = Folders(root)
        rule = {"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}
        self.folder = load(self.layout.config(emulator, [rule])).folders[0]
        self.spool = Spool(self.folder)
        self.spool.prepare()
        self.state = root / "state"
        self.pipeline = Pipeline(client_for(emulator), Journal(self.state))

    def claim(self, name: str, spool: Spool | None = None) -> Claim:
        drop(self.layout.inbox, name, f"%PDF {name}".encode() + PDF_END)
        claim = (spool or self.spool).claim({"file": name}, rule="pdf")
        assert claim is not None
        return claim

    def deliver(self, name: str) -> Claim:
        """Claim and carry a file to done; its claim leaves with the next commit."""
        claim = self.claim(name)
        assert self.pipeline.carry(self.spool, claim).verdict is Verdict.DONE
        return claim

    def records(self) -> list[str]:
        return [r["file"] for r in journal.read(self.state)]


class NotifySocket:
    """The receiving end of sd_notify: a real unix datagram socket, read all the time.

    Like systemd, it reads each message as it comes: the kernel queues only
    ``net.unix.max_dgram_qlen`` (10 by default) unread, and drops what comes
    after (the daemon never waits for the socket).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(message)

    def drain(self) -> list[str]:
        """Every message received so far."""
        with self._lock:
            return list(self.messages)

    def fields(self) -> list[str]:
        return [line for message in self.drain() for line in message.splitlines()]

    def wait_for(self, text: str, *, after: int = 0, timeout: float = 15.0) -> int:
        """Index of the first message from ``after`` on with a line starting with ``text``."""

        def find() -> int | None:
            for i, message in enumerate(self.drain()[after:], start=after):
                if any(line == text or line.startswith(text) for line in message.splitlines()):
                    return i + 1
            return None

        found = wait_until(find, timeout=timeout, what=f"sd_notify {text!r}")
        assert found is not None  # wait_until returns only what is truthy
        return found - 1

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=5)
        self.sock.close()
