"""flowflexd's benchmark: one command, baselines and the daemon measured in the same run.

    python bench/run.py            # the full run (several minutes)
    python bench/run.py --quick    # fewer files, for a first look
    python bench/run.py --sweep 1 2 4 8   # 0 ms only, once per worker count

Throughput, 1,000 files of 20 kB at 0 ms and 50 ms emulated API latency:
  A  the official SDK as a user would script it: one send_event per file, then a
     move to done;
  B  the protocol's floor: a pooled requests.Session doing only the three calls
     per file, with as many threads as the daemon has workers, no folder work;
  flowflexd  files dropped into a watched inbox, timed until the last is in done.
Also: close-to-event latency (p50, p95 over 50 drops), peak RSS uploading
8 x 25 MB at once, CPU of an idle daemon watching 20 folders for 60 s, and a
10,000-file backlog present at start (first event, last event, peak RSS,
RSS while draining, CPU per file in its first and last quarter). The scaling
checks run on request: ``--only backlog --backlog 100000``, ``--only
sidecar_backlog`` (20,000 files, each with a sidecar) and ``--only
ignored_idle`` (an idle inbox holding 20,000 files no rule takes); ``--only
rate_limit`` sends 1,000 files to an emulator with a quota of 50 events/s,
with the daemon limited to it and without (events/s measured at the emulator,
429s answered); ``--only cpu`` measures CPU per delivered file for flowflexd,
the SDK loop and three floors (requests, urllib3, http.client), beside
flowflexd's own client making the three calls from memory, flowflexd with
one worker, the durable file work alone (no HTTP), that work and the
three calls together in the same threads (the protocol's own floor), and the
same in a process of its own that notices each file by inotify
(``least_daemon.py``: the least daemon there can be); ``--only one_core``
measures flowflexd and the http.client floor confined to one CPU against
free, the emulator on another; ``--only
upload_speed`` times a 25 MB upload by flowflexd's client against ``curl -T``
of the same file to the same emulator; ``--only cpu_ab --against OTHER``
runs flowflexd and another install of it (``OTHER``: its ``flowflexd``
command, from a virtualenv holding an earlier commit, say) in turns against
one emulator, CPU per file and files/s of each run; ``--only counts``
counts instead of timing what flowflexd and the least daemon do per file:
Python calls (``count_calls.py``) and system calls by kind (strace), which
do not move with the machine's load. The emulator runs in its own process;
so does the daemon.
Prints a table and writes JSON (bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import functools
import http.client
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import flowflex
import requests
import urllib3
import yaml

import flowflexd.client as flowflexd_client
from flowflexd.commands.preflight import inotify_queue_size
from flowflexd.support.durable import fsync_dir

HERE = Path(__file__).resolve().parent
FLOWFLEXD = str(Path(sys.executable).with_name("flowflexd"))
API_KEY, API_SECRET, CODE = "cik_bench", "bench-secret-0123456789", "ic_bench"


# ------------------------------------------------------------------ processes


def wait_for_line(log_path: Path, needle: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists():
            for line in log_path.read_text(errors="replace").splitlines():
                if needle in line:
                    try:
                        return dict(json.loads(line))
                    except ValueError:
                        continue
        time.sleep(0.05)
    raise RuntimeError(f"{needle!r} never appeared in {log_path}")


class Emulator:
    """``flowflexd emulator`` in its own process."""

    def __init__(self, root: Path, latency_ms: float, *extra: str) -> None:
        self.log = root / f"emulator-{latency_ms:g}.log"
        self.proc = subprocess.Popen(
            [
                FLOWFLEXD,
                "emulator",
                "--port",
                "0",
                "--latency-ms",
                str(latency_ms),
                "--data-dir",
                str(root / f"emulator-{latency_ms:g}"),
                "--api-key",
                API_KEY,
                "--api-secret",
                API_SECRET,
                "--integration-code",
                CODE,
                "--log-format",
                "json",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        self.url = wait_for_line(self.log, "emulator ready")["base_url"]

    def stats(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/_emulator/stats", timeout=60).json())

    def events(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.url}/_emulator/events", timeout=60).json())

    def count(self) -> int:
        return int(requests.get(f"{self.url}/_emulator/stats", timeout=60).json()["events"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


class Daemon:
    """``flowflexd run`` in its own process, with its peak RSS and CPU readable."""

    def __init__(
        self,
        root: Path,
        url: str,
        folders: list[Path],
        *,
        workers: int,
        settle: float,
        rescan: float = 60.0,
        rule: dict[str, Any] | None = None,
        events_per_second: float | None = None,
        command: str | Sequence[str] = FLOWFLEXD,
    ) -> None:
        self.root = root
        limit = {"max_events_per_second": events_per_second} if events_per_second else {}
        config = {
            "flowflex": {
                "base_url": url,
                "api_key": API_KEY,
                "api_secret": API_SECRET,
                "integration_code": CODE,
                **limit,
            },
            "workers": workers,
            "settle_seconds": settle,
            "rescan_seconds": rescan,
            "state_dir": str(root / "state"),
            "folders": [
                {
                    "path": str(f),
                    "done": str(f.parent / f"{f.name}-done"),
                    "failed": str(f.parent / f"{f.name}-failed"),
                    "rules": [rule or {"name": "any", "pattern": "*", "event": "bench.file"}],
                }
                for f in folders
            ],
        }
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        self.log = root / "daemon.log"
        self.started = time.monotonic()
        argv = [command] if isinstance(command, str) else list(command)
        self.proc = subprocess.Popen(
            [*argv, "run", "-c", str(path), "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        wait_for_line(self.log, "flowflexd ready", timeout=120)
        self.ready_after = time.monotonic() - self.started

    def status(self) -> dict[str, str]:
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return fields

    def rss_mb(self) -> float:
        return int(self.status()["VmRSS"].split()[0]) / 1024

    def peak_rss_mb(self) -> float:
        return int(self.status()["VmHWM"].split()[0]) / 1024

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return 0


def wait_count(folder: Path, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while count_files(folder) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count_files(folder)} of {n} files reached {folder}")
        time.sleep(0.01)
    return time.monotonic()


PDF_END = b"\n%%EOF\n"  # what makes random bytes a whole PDF to flowflexd's format check


def make_payloads(n: int, size: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(max(size - len(PDF_END), 0)) + PDF_END for _ in range(n)]


def write_files(folder: Path, payloads: list[bytes], prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(payloads):
        path = folder / f"{prefix}-{i:05}.pdf"
        path.write_bytes(data)
        paths.append(path)
    return paths


# ----------------------------------------------------------------- throughput


def baseline_a(url: str, root: Path, payloads: list[bytes]) -> float:
    """The official SDK, one file at a time, then a move to done."""
    inbox, done = root / "a-inbox", root / "a-done"
    files = write_files(inbox, payloads, "a")
    done.mkdir()
    sdk = flowflex.FlowFlex(
        api_key=API_KEY, api_secret=API_SECRET, integration_code=CODE, base_url=url
    )
    started = time.monotonic()
    for path in files:
        sdk.send_event("bench.sdk", payload={"assetId": sdk.file(path)})
        os.rename(path, done / path.name)
    return len(files) / (time.monotonic() - started)


def baseline_b(url: str, payloads: list[bytes], threads: int) -> float:
    """The three calls per file over one pooled session, no folder work at all."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=threads * 2)
    session.mount("http://", adapter)
    auth = (API_KEY, API_SECRET)

    def one(item: tuple[int, bytes]) -> None:
        i, data = item
        info = session.post(
            f"{url}/v1/assets/upload-url",
            auth=auth,
            timeout=30,
            json={"filename": f"b-{i}.pdf", "mime": "application/pdf", "size": len(data)},
        ).json()
        session.put(
            info["uploadUrl"], data=data, headers={"Content-Type": "application/pdf"}, timeout=30
        ).raise_for_status()
        session.post(
            f"{url}/v1/events/{CODE}",
            auth=auth,
            timeout=30,
            json={"assetId": info["assetId"]},
            headers={"x-event": "bench.floor", "x-idempotency-key": f"b-{i}-{time.time_ns()}"},
        ).raise_for_status()

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, enumerate(payloads)))
    return len(payloads) / (time.monotonic() - started)


def _auth_header() -> str:
    return "Basic " + base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()


def _floor_threads(payloads: Sequence[Any], threads: int, one: Any) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, enumerate(payloads)))


def floor_urllib3(url: str, payloads: list[bytes], threads: int) -> None:
    """The three calls per file over urllib3 directly: one pool, no requests on top."""
    pool = urllib3.PoolManager(maxsize=threads * 2)
    headers = {"Authorization": _auth_header(), "Content-Type": "application/json"}

    def one(item: tuple[int, bytes]) -> None:
        i, data = item
        body = json.dumps({"filename": f"u-{i}.pdf", "mime": "application/pdf", "size": len(data)})
        res = pool.request("POST", f"{url}/v1/assets/upload-url", body=body, headers=headers)
        info = json.loads(res.data)
        put = pool.request(
            "PUT", info["uploadUrl"], body=data, headers={"Content-Type": "application/pdf"}
        )
        assert put.status == 200, put.status
        event = pool.request(
            "POST",
            f"{url}/v1/events/{CODE}",
            body=json.dumps({"assetId": info["assetId"]}),
            headers={
                **headers,
                "x-event": "bench.floor",
                "x-idempotency-key": f"u-{i}-{time.time_ns()}",
            },
        )
        assert event.status == 200, event.status

    _floor_threads(payloads, threads, one)


class _HttpClientCalls:
    """The three calls over http.client, each thread on a kept-alive connection of its own."""

    def __init__(self, url: str) -> None:
        self._host = urllib.parse.urlsplit(url).netloc
        self._local = threading.local()
        self._headers = {"Authorization": _auth_header(), "Content-Type": "application/json"}

    def _call(self, method: str, target: str, body: bytes, extra: dict[str, str]) -> bytes:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self._host, timeout=30)
        conn.request(method, target, body=body, headers=extra)
        res = conn.getresponse()
        data = res.read()
        assert res.status == 200, (res.status, data)
        return data

    def three(
        self, name: str, data: bytes, key: str, before_event: Callable[[str], None] | None = None
    ) -> None:
        """Ask for an upload URL, PUT the bytes, fire the event; ``before_event`` gets its asset."""
        body = json.dumps({"filename": name, "mime": "application/pdf", "size": len(data)})
        info = json.loads(self._call("POST", "/v1/assets/upload-url", body.encode(), self._headers))
        upload = urllib.parse.urlsplit(info["uploadUrl"])
        self._call(
            "PUT", f"{upload.path}?{upload.query}", data, {"Content-Type": "application/pdf"}
        )
        if before_event is not None:
            before_event(info["assetId"])
        event = json.dumps({"assetId": info["assetId"]}).encode()
        self._call(
            "POST",
            f"/v1/events/{CODE}",
            event,
            {**self._headers, "x-event": "bench.floor", "x-idempotency-key": key},
        )


def floor_http_client(url: str, payloads: list[bytes], threads: int) -> None:
    """The three calls per file over http.client, one kept-alive connection per thread."""
    calls = _HttpClientCalls(url)

    def one(item: tuple[int, bytes]) -> None:
        i, data = item
        calls.three(f"h-{i}.pdf", data, f"h-{i}-{time.time_ns()}")

    _floor_threads(payloads, threads, one)


def own_client_calls(url: str, payloads: list[bytes], threads: int) -> None:
    """The three calls per file through flowflexd's own client, as its workers make them.

    The bytes come from memory and nothing is written: beside the http.client
    floor, this shows what the client's layers (checks, retries, deadlines,
    redaction, its own HTTP path) cost over the bare calls.
    """
    client = flowflexd_client.FlowFlex(
        api_key=API_KEY, api_secret=API_SECRET, integration_code=CODE, base_url=url
    )

    def one(item: tuple[int, bytes]) -> None:
        i, data = item
        asset = client.upload_file(client.file(data, filename=f"o-{i}.pdf"))
        client.fire_event("bench.client", {"file": asset}, f"o-{i}-{time.time_ns()}")

    try:
        _floor_threads(payloads, threads, one)
    finally:
        client.close()


class _DurableClaims:
    """The file work the durability promise asks for, as plain system calls.

    Per file what a claim needs before the upload (its record written and
    fsynced, the file renamed in, the three folders fsynced), one read of the
    file, the asset's line fsynced before the event, a link into done and the
    claim's names removed. Each thread reuses one claim folder, as flowflexd's
    spares are reused; the journal and the done folder's fsyncs, one per batch,
    are left out.
    """

    def __init__(self, root: Path) -> None:
        self.inbox, self.work, self.done = root / "inbox", root / "work", root / "done"
        for folder in (self.work, self.done):
            folder.mkdir(parents=True)
        self._local = threading.local()

    def carry(
        self, i: int, path: Path, send: Callable[[bytes, Callable[[str], None]], None]
    ) -> None:
        """Claim ``path``, read it, ``send(data, record_asset)``, then move it to done."""
        claim = getattr(self._local, "claim", None)
        if claim is None:
            claim = self._local.claim = str(self.work / f"c{threading.get_ident()}")
            os.mkdir(claim)
        record, member = f"{claim}/claim.jsonl", f"{claim}/{path.name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        fd = os.open(record, flags, 0o600)

        def record_asset(asset: str) -> None:
            os.write(fd, json.dumps({"asset": asset}).encode())
            os.fsync(fd)

        try:
            os.write(fd, json.dumps({"id": i, "key": f"k-{i}", "file": path.name}).encode())
            os.rename(path, member)
            os.fsync(fd)
            fsync_dir(claim)
            fsync_dir(self.work)
            fsync_dir(self.inbox)
            src = os.open(member, os.O_RDONLY)
            try:
                data = os.pread(src, os.fstat(src).st_size, 0)
            finally:
                os.close(src)
            send(data, record_asset)
        finally:
            os.close(fd)
        os.link(member, self.done / path.name)
        os.unlink(member)


def floor_durable_files(root: Path, files: list[Path], threads: int) -> None:
    """The durable file work alone (``_DurableClaims``), in ``threads`` threads, no HTTP."""
    claims = _DurableClaims(root)

    def one(item: tuple[int, Path]) -> None:
        i, path = item
        claims.carry(i, path, lambda data, record_asset: record_asset(f"a-{i}"))

    _floor_threads(files, threads, one)


def floor_protocol(url: str, root: Path, files: list[Path], threads: int) -> None:
    """The durable file work and the three calls over http.client, together, per file.

    The least any daemon keeping the durability promise does per file, made the
    most direct way from Python: no noticing of files, no settling, no journal,
    no log line. Each thread claims a file, reads it, makes the three calls on
    its own connection with the asset's line fsynced before the event, and
    moves the file to done.
    """
    claims = _DurableClaims(root)
    calls = _HttpClientCalls(url)

    def one(item: tuple[int, Path]) -> None:
        i, path = item

        def send(data: bytes, record_asset: Callable[[str], None]) -> None:
            calls.three(path.name, data, f"p-{i}-{time.time_ns()}", record_asset)

        claims.carry(i, path, send)

    _floor_threads(files, threads, one)


def floor_least_daemon(
    url: str,
    root: Path,
    payloads: list[bytes],
    threads: int,
    *,
    python: Sequence[str] = (sys.executable,),
    watch: Callable[[int], AbstractContextManager[Any]] = lambda pid: nullcontext(),
) -> float:
    """The protocol's floor plus noticing each file by inotify (``least_daemon.py``): CPU ms/file.

    It runs in its own process, as a daemon does, while this one writes the
    files; it counts its own CPU from the moment it watches to the last move.
    ``python`` starts it (``count_calls.py`` in front, say); ``watch(pid)`` is
    entered once it watches and left once it is done (``strace_counts``).
    """
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            *python,
            str(HERE / "least_daemon.py"),
            url,
            str(root),
            str(len(payloads)),
            str(threads),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("least_daemon.py did not start")
        with watch(proc.pid):
            write_files(inbox, payloads, "l")
            used = proc.stdout.readline().strip()
    finally:
        proc.wait(timeout=900)
    if not used:
        raise RuntimeError(f"least_daemon.py failed (exit {proc.returncode}); see above")
    return float(used) / len(payloads) * 1000


def own_cpu() -> float:
    """This process's user+sys CPU seconds, all threads, to the nanosecond.

    os.times() counts in clock ticks (10 ms): a small run's baseline could read 0.
    """
    return time.process_time()


def confine(pid: int, cpu: int) -> None:
    """Every thread of process ``pid`` onto one CPU (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def daemon_cpu(
    root: Path,
    url: str,
    payloads: list[bytes],
    workers: int,
    cpu: int | None = None,
    *,
    command: str | Sequence[str] = FLOWFLEXD,
    watch: Callable[[int], AbstractContextManager[Any]] = lambda pid: nullcontext(),
) -> tuple[float, float]:
    """flowflexd's CPU ms per delivered file, and its files/s, with ``workers`` workers.

    ``cpu``: the daemon confined to that one CPU once it is ready. ``command``
    starts it (``count_calls.py`` in front, say); ``watch(pid)`` is entered
    once it is ready and left once the last file is in done (``strace_counts``).
    """
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    daemon = Daemon(root, url, [inbox], workers=workers, settle=0.5, command=command)
    if cpu is not None:
        confine(daemon.proc.pid, cpu)
    try:
        with watch(daemon.proc.pid):
            before = daemon.cpu_seconds()
            started = time.monotonic()
            write_files(inbox, payloads, "c")
            finished = wait_count(root / "inbox-done", len(payloads), timeout=900)
            used = daemon.cpu_seconds() - before
    finally:
        daemon.stop()
    return used / len(payloads) * 1000, len(payloads) / (finished - started)


def cpu_ab(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """This flowflexd against ``--against`` (another install), in turns: CPU per file, files/s.

    An A/B of two versions of the code on the same emulator, machine and
    hour: the rounds alternate which goes first, so a machine getting slower
    during the run weighs on both alike.
    """
    if args.against is None:
        raise SystemExit("cpu_ab needs --against PATH: the other install's flowflexd command")
    commands = {"this": FLOWFLEXD, "against": str(args.against)}
    payloads = make_payloads(args.cpu_files, args.size)
    emulator = Emulator(root, args.cpu_latency)
    runs: dict[str, list[float]] = {"this": [], "against": []}
    rates: dict[str, list[float]] = {"this": [], "against": []}
    try:
        for i in range(args.repeat):
            for name in ("this", "against") if i % 2 == 0 else ("against", "this"):
                used, rate = daemon_cpu(
                    root / f"{name}{i}", emulator.url, payloads, 4, command=commands[name]
                )
                runs[name].append(used)
                rates[name].append(rate)
    finally:
        emulator.stop()
    ms = medians(runs, 3)
    return {
        **cpu_run(args, len(payloads)),
        "against": commands["against"],
        "cpu_ms_per_file": ms,
        "this_vs_against": round(ms["this"] / ms["against"], 3),
        "files_per_s": medians(rates, 1),
        "all_runs": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
        "all_rates": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
    }


def cpu_run(args: argparse.Namespace, files: int) -> dict[str, Any]:
    """What a CPU part ran: its files, their size, the API's latency, workers and runs."""
    return {
        "files": files,
        "size": args.size,
        "latency_ms": args.cpu_latency,
        "workers": 4,
        "runs_each": args.repeat,
    }


def medians(runs: dict[str, list[float]], digits: int) -> dict[str, float]:
    return {k: round(statistics.median(v), digits) for k, v in runs.items()}


def cpu_per_file(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """CPU (user+sys) per delivered file: flowflexd, the SDK loop and three floors.

    2,000 files of 20 kB at 0 ms (``--cpu-latency``), 4 workers (threads for the
    floors), medians of ``--repeat`` interleaved runs. The emulator is another
    process, never counted; the baselines run in this process, measured with
    time.process_time(), one at a time.
    Beside them, flowflexd's own client making the three calls (``own_client_calls``),
    and the durable file work alone (``floor_durable_files``): no floor of the
    three calls does any, and flowflexd cannot do less of it; the two together in
    the same threads (``floor_protocol``), as a daemon must do them; the same
    in a process of its own that notices each file by inotify
    (``floor_least_daemon``), the least daemon there can be. And flowflexd
    with one worker: what its threads cost in taking turns at the interpreter lock.
    """
    payloads = make_payloads(args.cpu_files, args.size)
    emulator = Emulator(root, args.cpu_latency)
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            *("flowflexd", "flowflexd_1_worker", "sdk", "requests", "urllib3", "http_client"),
            *("client", "files", "protocol", "least_daemon"),
        )
    }
    rates: dict[str, list[float]] = {"flowflexd": [], "sdk": []}
    n = len(payloads)
    try:
        for i in range(args.repeat):
            for name, floor in (
                ("requests", baseline_b),
                ("urllib3", floor_urllib3),
                ("http_client", floor_http_client),
                ("client", own_client_calls),
            ):
                before = own_cpu()
                floor(emulator.url, payloads, 4)
                runs[name].append((own_cpu() - before) / n * 1000)
            files_at = root / f"files{i}"
            files = write_files(files_at / "inbox", payloads, "f")  # not counted
            before = own_cpu()
            floor_durable_files(files_at, files, 4)
            runs["files"].append((own_cpu() - before) / n * 1000)
            protocol_at = root / f"protocol{i}"
            files = write_files(protocol_at / "inbox", payloads, "p")  # not counted
            before = own_cpu()
            floor_protocol(emulator.url, protocol_at, files, 4)
            runs["protocol"].append((own_cpu() - before) / n * 1000)
            runs["least_daemon"].append(
                floor_least_daemon(emulator.url, root / f"least{i}", payloads, 4)
            )
            before = own_cpu()
            rates["sdk"].append(baseline_a(emulator.url, root / f"sdk{i}", payloads))
            runs["sdk"].append((own_cpu() - before) / n * 1000)
            used, rate = daemon_cpu(root / f"cpu{i}", emulator.url, payloads, 4)
            runs["flowflexd"].append(used)
            rates["flowflexd"].append(rate)
            used, _ = daemon_cpu(root / f"one{i}", emulator.url, payloads, 1)
            runs["flowflexd_1_worker"].append(used)
    finally:
        emulator.stop()
    ms = medians(runs, 2)
    return {
        **cpu_run(args, n),
        "cpu_ms_per_file": ms,
        # The comparisons the targets are about; the other baselines explain them.
        "flowflexd_vs": {
            k: round(ms["flowflexd"] / ms[k], 2)
            for k in ("sdk", "requests", "urllib3", "http_client")
        },
        # Whether the daemon's HTTP path is at the floor: its client alone against http.client.
        "client_vs_http_client": round(ms["client"] / ms["http_client"], 2),
        # What a client of the three calls that kept the durability promise could not go below.
        "http_client_and_files_ms": round(ms["http_client"] + ms["files"], 2),
        "flowflexd_vs_http_client_and_files": round(
            ms["flowflexd"] / (ms["http_client"] + ms["files"]), 2
        ),
        # The two done together in the same threads, as a daemon must: how much of
        # the 2x-http.client budget the protocol itself takes, and what flowflexd adds.
        "protocol_vs_http_client": round(ms["protocol"] / ms["http_client"], 2),
        "flowflexd_vs_protocol": round(ms["flowflexd"] / ms["protocol"], 2),
        # The same in a process of its own that notices each file by inotify: the
        # least a daemon can do, and so what the 2x-http.client budget leaves for
        # settling, the journal, rules and log lines.
        "least_daemon_vs_http_client": round(ms["least_daemon"] / ms["http_client"], 2),
        "flowflexd_vs_least_daemon": round(ms["flowflexd"] / ms["least_daemon"], 2),
        "files_per_s": medians(rates, 1),
        "all_runs": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
    }


def counts(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """What flowflexd and the least daemon do per file, counted rather than timed.

    CPU per file moves by several per cent between runs on a shared machine,
    more than most single changes to the per-file path are worth. These counts
    do not: Python calls per file (``count_calls.py``: every thread under
    cProfile, builtins included; the difference between a run of
    ``--count-files`` files and one of three times as many, so the start and
    the stop cancel out), and system calls per file by kind (``strace -f -c``
    attached once the program watches, detached once the last file is in done;
    skipped, saying so, where strace is not installed). futex calls are the
    threads' hand-offs, the interpreter lock's included; strace slows every
    call, so read them as a comparison between the two, not as a rate.
    Beside them, from runs with nothing attached (the same two sizes, the same
    difference): context switches per file, each a thread that gave up or was
    made to give up the CPU, and user and system CPU per file (timed, so as
    noisy as ``cpu``; here to show which half the switches land in), also for
    flowflexd with one worker: what its workers' taking turns costs.
    """
    small, large = args.count_files, 3 * args.count_files
    emulator = Emulator(root, args.cpu_latency)
    tracing = shutil.which("strace") is not None

    def run(
        program: str,
        where: Path,
        payloads: list[bytes],
        *,
        calls_into: Path | None = None,
        watch: Callable[[int], AbstractContextManager[Any]] = lambda pid: nullcontext(),
    ) -> None:
        """One run of ``program``; under ``count_calls.py`` when ``calls_into`` is given."""
        counting = [*_COUNTING, str(calls_into)] if calls_into is not None else []
        if program == "least_daemon":
            floor_least_daemon(
                emulator.url, where, payloads, 4, python=counting or [sys.executable], watch=watch
            )
            return
        workers = 1 if program == "flowflexd_1_worker" else 4
        command = [*counting, "-m", "flowflexd"] if counting else FLOWFLEXD
        daemon_cpu(where, emulator.url, payloads, workers, command=command, watch=watch)

    calls: dict[str, list[dict[str, int]]] = {"flowflexd": [], "least_daemon": []}
    usage: dict[str, list[list[float]]] = {
        "flowflexd": [],
        "flowflexd_1_worker": [],
        "least_daemon": [],
    }
    syscalls: dict[str, dict[str, float]] = {}
    try:
        for n in (small, large):
            payloads = make_payloads(n, args.size)
            for name, used in usage.items():
                where = root / f"plain-{name}-{n}"
                used.append(children_usage(functools.partial(run, name, where, payloads)))
            for name, found in calls.items():
                out = root / f"calls-{name}-{n}.json"
                run(name, root / f"calls-{name}-{n}", payloads, calls_into=out)
                found.append(json.loads(out.read_text()))
        if tracing:
            payloads = make_payloads(small, args.size)
            for name in ("flowflexd", "least_daemon"):
                out = root / f"strace-{name}.txt"
                watch = functools.partial(strace_counts, out=out)
                run(name, root / f"strace-{name}", payloads, watch=watch)
                syscalls[name] = syscalls_per_file(out, small)
    finally:
        emulator.stop()
    per_file = {name: per_file_calls(*runs, more=large - small) for name, runs in calls.items()}
    # Each of children_usage's four figures, per file: the larger run's less the smaller's.
    per_file_usage = {
        name: [(b - a) / (large - small) for a, b in zip(*runs, strict=True)]
        for name, runs in usage.items()
    }
    by_module: dict[str, float] = collections.defaultdict(float)
    for key, n in per_file["flowflexd"].items():
        by_module[_module_of(key)] += n
    return {
        "files": [small, large],
        "size": args.size,
        "latency_ms": args.cpu_latency,
        "workers": 4,
        "python_calls_per_file": {
            name: round(sum(found.values())) for name, found in per_file.items()
        },
        "flowflexd_python_calls_by_module": {
            module: round(n, 1)
            for module, n in sorted(by_module.items(), key=lambda item: -item[1])[:15]
        },
        "syscalls_per_file": syscalls if tracing else "strace is not installed",
        "switches_per_file": {
            name: {"voluntary": round(d[0], 1), "involuntary": round(d[1], 1)}
            for name, d in per_file_usage.items()
        },
        "cpu_ms_per_file": {
            name: {"user": round(d[2] * 1000, 2), "sys": round(d[3] * 1000, 2)}
            for name, d in per_file_usage.items()
        },
    }


def children_usage(run: Callable[[], object]) -> list[float]:
    """What ``run`` cost in the processes it started and waited for (none may be left running).

    [voluntary and involuntary context switches, user and system CPU seconds],
    every thread counted, those that ended before the process included.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return [
        after.ru_nvcsw - before.ru_nvcsw,
        after.ru_nivcsw - before.ru_nivcsw,
        after.ru_utime - before.ru_utime,
        after.ru_stime - before.ru_stime,
    ]


_COUNTING = (sys.executable, str(HERE / "count_calls.py"))


@contextlib.contextmanager
def strace_counts(pid: int, out: Path) -> Iterator[None]:
    """Count the system calls of every thread of ``pid`` (and any it starts) into ``out``."""
    # strace -p of a process attaches all its threads ("attached with N threads").
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), "-p", str(pid)], stderr=subprocess.PIPE, text=True
    )
    assert tracer.stderr is not None
    line = tracer.stderr.readline()  # it says so once it traces
    if "attached" not in line:
        tracer.kill()
        raise RuntimeError(f"strace could not attach to {pid}: {line.strip()}")
    try:
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.communicate(timeout=60)


def syscalls_per_file(out: Path, files: int) -> dict[str, float]:
    """strace -c's table, per file: all calls, futex, fsync and the rest."""
    found: dict[str, int] = {}
    for line in out.read_text().splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[0][0].isdigit() and cells[-1] != "total":
            found[cells[-1]] = int(cells[3])
    total = sum(found.values())
    futex, fsync = found.get("futex", 0), found.get("fsync", 0) + found.get("fdatasync", 0)
    return {
        "all": round(total / files, 1),
        "futex": round(futex / files, 1),
        "fsync": round(fsync / files, 1),
        "other": round((total - futex - fsync) / files, 1),
    }


def per_file_calls(small: dict[str, int], large: dict[str, int], *, more: int) -> dict[str, float]:
    """Each function's calls per file: the larger run's count less the smaller's, over ``more``."""
    return {key: (n - small.get(key, 0)) / more for key, n in large.items()}


def _module_of(key: str) -> str:
    """Where a function of ``count_calls.py``'s keys lives: flowflexd/..., a package, builtins."""
    if key.startswith("<") and ":" not in key:
        return "builtins"  # C functions and methods: keyed by their own description
    filename = key.rsplit(":", 2)[0]
    if "/flowflexd/" in filename:
        return "flowflexd/" + filename.rsplit("/flowflexd/", 1)[1]
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if filename.startswith("<frozen "):
        return filename[len("<frozen ") : -1]
    return Path(filename).stem if filename.endswith(".py") else filename


def one_core(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """flowflexd confined to one CPU against free, with the emulator on another CPU.

    A daemon's threads take turns at the interpreter lock; on two cores each
    turn can wake a thread on the other core. Interleaved runs, medians, CPU
    per delivered file as in ``cpu``; the http.client floor the same two ways
    (this process, confined while it runs). With two CPUs the free daemon
    shares the emulator's: what it would gain with idle cores to itself is
    not measured here.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"skipped": "needs two CPUs: one for the emulator, one for flowflexd"}
    emulator_cpu, own_cpu_id = cpus[0], cpus[1]
    payloads = make_payloads(args.cpu_files, args.size)
    emulator = Emulator(root, args.cpu_latency)
    confine(emulator.proc.pid, emulator_cpu)
    runs: dict[str, list[float]] = {
        k: [] for k in ("flowflexd", "flowflexd_one_cpu", "http_client", "http_client_one_cpu")
    }
    rates: dict[str, list[float]] = {"flowflexd": [], "flowflexd_one_cpu": []}
    n = len(payloads)
    try:
        for i in range(args.repeat):
            for name, cpu in (("http_client", None), ("http_client_one_cpu", own_cpu_id)):
                if cpu is not None:
                    os.sched_setaffinity(0, {cpu})  # the floor's threads inherit it
                try:
                    before = own_cpu()
                    floor_http_client(emulator.url, payloads, 4)
                    runs[name].append((own_cpu() - before) / n * 1000)
                finally:
                    os.sched_setaffinity(0, cpus)
            for name, cpu in (("flowflexd", None), ("flowflexd_one_cpu", own_cpu_id)):
                used, rate = daemon_cpu(root / f"{name}{i}", emulator.url, payloads, 4, cpu)
                runs[name].append(used)
                rates[name].append(rate)
    finally:
        emulator.stop()
    ms, per_s = medians(runs, 2), medians(rates, 1)
    return {
        **cpu_run(args, n),
        "cpus": {"emulator": emulator_cpu, "one_cpu": own_cpu_id},
        "cpu_ms_per_file": ms,
        "files_per_s": per_s,
        "one_cpu_vs_free": {
            "cpu": round(ms["flowflexd_one_cpu"] / ms["flowflexd"], 2),
            "files_per_s": round(per_s["flowflexd_one_cpu"] / per_s["flowflexd"], 2),
        },
        "flowflexd_vs_http_client": {
            "free": round(ms["flowflexd"] / ms["http_client"], 2),
            "one_cpu": round(ms["flowflexd_one_cpu"] / ms["http_client_one_cpu"], 2),
        },
        "all_runs": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
    }


def daemon_throughput(
    url: str, root: Path, payloads: list[bytes], workers: int, settle: float
) -> float:
    inbox = root / "d-inbox"
    inbox.mkdir(parents=True)
    daemon = Daemon(root, url, [inbox], workers=workers, settle=settle)
    try:
        started = time.monotonic()
        write_files(inbox, payloads, "d")
        finished = wait_count(root / "d-inbox-done", len(payloads), timeout=900)
    finally:
        daemon.stop()
    return len(payloads) / (finished - started)


def throughput(
    args: argparse.Namespace, root: Path, latency_ms: float, workers: int
) -> dict[str, Any]:
    """A, B and flowflexd (at the short and at the default settle) on one emulator.

    Without latency each run takes seconds and varies by a third from run to
    run (the emulator warms up, the two cores are shared), so each is run
    ``--repeat`` times, interleaved, and the medians are compared.
    """
    payloads = make_payloads(args.files, args.size)
    repeat = args.repeat if latency_ms == 0 else 1
    emulator = Emulator(root, latency_ms)
    runs: dict[str, list[float]] = {"a": [], "b": [], "d": [], "slow": []}
    try:
        for i in range(repeat):
            runs["b"].append(baseline_b(emulator.url, payloads, workers))
            runs["a"].append(baseline_a(emulator.url, root / f"a{i}", payloads))
            runs["d"].append(
                daemon_throughput(
                    emulator.url, root / f"d{i}", payloads, workers, args.throughput_settle
                )
            )
            runs["slow"].append(
                daemon_throughput(emulator.url, root / f"s{i}", payloads, workers, args.settle)
            )
        events = emulator.count()
    finally:
        emulator.stop()
    assert events == 4 * repeat * len(payloads), f"{events} events for {4 * repeat} runs"
    a, b, d, slow = (statistics.median(runs[k]) for k in ("a", "b", "d", "slow"))
    return {
        "latency_ms": latency_ms,
        "files": len(payloads),
        "size": args.size,
        "workers": workers,
        "runs_each": repeat,
        "sdk_files_per_s": round(a, 1),
        "floor_files_per_s": round(b, 1),
        "settle_seconds": args.throughput_settle,
        "flowflexd_files_per_s": round(d, 1),
        "vs_sdk": round(d / a, 2),
        "vs_floor": round(d / b, 2),
        "default_settle_seconds": args.settle,
        "flowflexd_default_settle_files_per_s": round(slow, 1),
        "default_settle_vs_sdk": round(slow / a, 2),
        "default_settle_vs_floor": round(slow / b, 2),
        "all_runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
    }


# -------------------------------------------------------------------- latency


def close_to_event(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    emulator = Emulator(root, 0)
    inbox = root / "l-inbox"
    inbox.mkdir()
    daemon = Daemon(root, emulator.url, [inbox], workers=args.workers, settle=args.settle)
    latencies = []
    try:
        for i in range(args.drops):
            path = inbox / f"l-{i:03}.pdf"
            with path.open("wb") as fh:
                fh.write(os.urandom(max(args.size - len(PDF_END), 0)) + PDF_END)
            closed = time.time()
            deadline = time.monotonic() + 30
            while emulator.count() <= i:
                if time.monotonic() > deadline:
                    raise RuntimeError("the event never came")
                time.sleep(0.005)
            received = emulator.events()[i]["received_at"]
            latencies.append(received - closed)
    finally:
        daemon.stop()
        emulator.stop()
    latencies.sort()
    return {
        "drops": len(latencies),
        "settle_seconds": args.settle,
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "p50_over_settle_s": round(statistics.median(latencies) - args.settle, 3),
    }


# --------------------------------------------------------------------- memory


def big_files(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    emulator = Emulator(root, 0)
    inbox = root / "m-inbox"
    inbox.mkdir()
    daemon = Daemon(root, emulator.url, [inbox], workers=8, settle=args.settle)
    try:
        baseline = daemon.peak_rss_mb()
        staging = root / "m-staging"
        staging.mkdir()
        for i in range(8):
            with (staging / f"big-{i}.pdf").open("wb") as fh:
                for _ in range(25):
                    fh.write(os.urandom(1024 * 1024))
                fh.seek(-len(PDF_END), os.SEEK_END)
                fh.write(PDF_END)
        for i in range(8):  # all eight appear at once
            os.rename(staging / f"big-{i}.pdf", inbox / f"big-{i}.pdf")
        wait_count(root / "m-inbox-done", 8, timeout=300)
        peak = daemon.peak_rss_mb()
    finally:
        daemon.stop()
        emulator.stop()
    return {
        "files": 8,
        "mb_each": 25,
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(baseline, 1),
    }


def idle_cpu(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    emulator = Emulator(root, 0)
    folders = [root / f"idle-{i:02}" for i in range(20)]
    for folder in folders:
        folder.mkdir()
    daemon = Daemon(root, emulator.url, folders, workers=args.workers, settle=args.settle)
    try:
        time.sleep(2)  # past start-up
        before = daemon.cpu_seconds()
        time.sleep(args.idle_seconds)
        used = daemon.cpu_seconds() - before
    finally:
        daemon.stop()
        emulator.stop()
    return {
        "folders": 20,
        "seconds": args.idle_seconds,
        "cpu_seconds": round(used, 3),
        "cpu_seconds_per_minute": round(used * 60 / args.idle_seconds, 3),
    }


SIDECAR_RULE = {
    "name": "with-sidecar",
    "pattern": "*.pdf",
    "sidecar": "{stem}.json",
    "event": "bench.file",
    "payload": {"ref": "{sidecar.ref}"},
}


def backlog(args: argparse.Namespace, root: Path, *, sidecars: int = 0) -> dict[str, Any]:
    """A backlog present at start; with ``sidecars``, that many files each with a sidecar.

    CPU per file is compared between the first and the last quarter of the
    drain (by files delivered): bookkeeping that walks every tracked file
    shows up as a rise.
    """
    emulator = Emulator(root, 0)
    inbox = root / "k-inbox"
    files = sidecars or args.backlog
    write_files(inbox, make_payloads(files, args.backlog_size, seed=3), "k")
    rule = None
    if sidecars:
        rule = SIDECAR_RULE
        for i in range(files):
            (inbox / f"k-{i:05}.json").write_text(json.dumps({"ref": f"r{i}"}))
    samples: list[tuple[float, float, int]] = []  # (rss MB, CPU s, files in done)
    started = time.monotonic()
    daemon = Daemon(
        root, emulator.url, [inbox], workers=args.workers, settle=args.settle, rule=rule
    )
    done = root / "k-inbox-done"
    try:
        first = None
        while first is None:
            if emulator.count() > 0:
                first = time.monotonic() - started
            time.sleep(0.01)
        delivered = 0
        while delivered < files:
            delivered = emulator.count()
            samples.append((daemon.rss_mb(), daemon.cpu_seconds(), delivered))
            time.sleep(0.25)
        last = time.monotonic() - started
        peak = daemon.peak_rss_mb()
        wait_count(done, files * (2 if sidecars else 1), 120)
    finally:
        daemon.stop()
        emulator.stop()

    def cpu_ms_per_file(low: float, high: float) -> float | None:
        """CPU per file while the files delivered went from ``low`` to ``high`` of all.

        None when the drain was too quick to sample that stretch twice.
        """
        inside = [s for s in samples if low * files <= s[2] <= high * files]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return None
        (_, cpu0, n0), (_, cpu1, n1) = inside[0], inside[-1]
        return round((cpu1 - cpu0) * 1000 / (n1 - n0), 2)

    quarter = max(1, len(samples) // 4)
    first_q, last_q = cpu_ms_per_file(0.0, 0.25), cpu_ms_per_file(0.75, 1.0)
    return {
        "files": files,
        "sidecars": bool(sidecars),
        "first_event_s": round(first, 2),
        "last_event_s": round(last, 1),
        "ready_s": round(daemon.ready_after, 2),
        "peak_rss_mb": round(peak, 1),
        "rss_first_quarter_mb": round(statistics.mean(s[0] for s in samples[:quarter]), 1),
        "rss_last_quarter_mb": round(statistics.mean(s[0] for s in samples[-quarter:]), 1),
        "cpu_ms_per_file_first_quarter": first_q,
        "cpu_ms_per_file_last_quarter": last_q,
        "last_vs_first": round(last_q / first_q, 2) if first_q and last_q else None,
    }


def sidecar_backlog(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    return backlog(args, root, sidecars=args.sidecar_backlog)


def ignored_idle(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """An idle daemon whose inbox holds many files no rule takes (they stay, as promised)."""
    emulator = Emulator(root, 0)
    inbox = root / "ignored"
    inbox.mkdir()
    for i in range(args.ignored):
        (inbox / f"note-{i:05}.txt").write_bytes(b"x")
    rule = {"name": "pdf", "pattern": "*.pdf", "event": "bench.file"}
    daemon = Daemon(
        root, emulator.url, [inbox], workers=args.workers, settle=args.settle, rule=rule
    )
    try:
        time.sleep(args.settle + 5)  # past the first full look at every name
        before = daemon.cpu_seconds()
        time.sleep(args.idle_seconds)
        used = daemon.cpu_seconds() - before
        rss = daemon.rss_mb()
    finally:
        daemon.stop()
        emulator.stop()
    return {
        "ignored_files": args.ignored,
        "seconds": args.idle_seconds,
        "cpu_seconds_per_minute": round(used * 60 / args.idle_seconds, 3),
        "rss_mb": round(rss, 1),
    }


# ---------------------------------------------------------------------- report


def rate_limit(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Events per second at the emulator, against a quota, with and without the daemon's limit."""
    quota = args.quota
    runs: dict[str, Any] = {}
    for label, limit in (("limited", quota), ("unlimited", None)):
        where = root / label
        where.mkdir()
        emulator = Emulator(where, 0, "--quota-per-second", f"{quota:g}")
        inbox = where / "inbox"
        inbox.mkdir()
        write_files(inbox, make_payloads(args.rate_files, 2_000), "r")
        daemon = Daemon(
            where, emulator.url, [inbox], workers=8, settle=0.2, events_per_second=limit
        )
        try:
            wait_count(
                where / "inbox-done", args.rate_files, timeout=args.rate_files / quota * 4 + 60
            )
            times = sorted(e["received_at"] for e in emulator.events())
            refused = emulator.stats()["quota_refused"]
        finally:
            daemon.stop()
            emulator.stop()
        rate = (len(times) - 1) / (times[-1] - times[0])
        runs[label] = {
            "events": len(times),
            "events_per_s": round(rate, 2),
            "vs_quota": round(rate / quota, 3),
            "answered_429": refused,
        }
    return {"quota_per_s": quota, "files": args.rate_files, **runs}


def upload_speed(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """A 25 MB upload: flowflexd's client against ``curl -T``, same file, same emulator, MB/s."""
    emulator = Emulator(root, 0)
    path = root / "big.pdf"
    path.write_bytes(random.Random(3).randbytes(25_000_000 - len(PDF_END)) + PDF_END)
    size_mb = path.stat().st_size / 1e6
    client = flowflexd_client.FlowFlex(
        api_key=API_KEY, api_secret=API_SECRET, integration_code=CODE, base_url=emulator.url
    )
    runs: dict[str, list[float]] = {"flowflexd": [], "curl": []}
    try:
        for _ in range(args.repeat):
            ref = client.file(path)
            info = client.create_upload_url(filename="big.pdf", mime="application/pdf")
            started = time.monotonic()
            client.put_file(ref, info["uploadUrl"])
            runs["flowflexd"].append(size_mb / (time.monotonic() - started))
            info = client.create_upload_url(filename="big.pdf", mime="application/pdf")
            started = time.monotonic()
            subprocess.run(
                ["curl", "-sS", "-f", "-T", str(path), "-H", "Content-Type: application/pdf",
                 "-o", "/dev/null", info["uploadUrl"]],
                check=True,
            )  # fmt: skip
            runs["curl"].append(size_mb / (time.monotonic() - started))
    finally:
        client.close()
        emulator.stop()
    mbps = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    return {
        "size_mb": round(size_mb, 1),
        "runs_each": args.repeat,
        "mb_per_s": mbps,
        "flowflexd_vs_curl": round(mbps["flowflexd"] / mbps["curl"], 2),
        "all_runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
    }


def table(results: dict[str, Any]) -> str:
    rows = results["throughput"]
    lines = [
        "| API latency | workers | SDK (A) | floor (B) | flowflexd, settle "
        f"{rows[0]['settle_seconds']:g} s | vs A | vs B | flowflexd, settle "
        f"{rows[0]['default_settle_seconds']:g} s (default) | vs A | vs B |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['latency_ms']:g} ms | {row['workers']} | {row['sdk_files_per_s']} "
            f"| {row['floor_files_per_s']} "
            f"| {row['flowflexd_files_per_s']} | {row['vs_sdk']}x | {row['vs_floor']}x "
            f"| {row['flowflexd_default_settle_files_per_s']} | {row['default_settle_vs_sdk']}x "
            f"| {row['default_settle_vs_floor']}x |"
        )
    lat, big, idle, back = (results[k] for k in ("latency", "big_files", "idle", "backlog"))
    lines += [
        "",
        "| measure | result |",
        "| --- | ---: |",
        f"| close to event, p50 / p95 (settle_seconds {lat['settle_seconds']:g}) "
        f"| {lat['p50_s']} s / {lat['p95_s']} s |",
        f"| peak RSS, 8 x 25 MB uploaded at once | {big['peak_rss_mb']} MB |",
        f"| idle CPU, 20 folders | {idle['cpu_seconds_per_minute']} CPU-s per minute |",
        f"| {back['files']:,}-file backlog: first event / last event "
        f"| {back['first_event_s']} s / {back['last_event_s']} s |",
        f"| {back['files']:,}-file backlog: peak RSS; RSS in the first / last quarter of "
        f"the drain | {back['peak_rss_mb']} MB; {back['rss_first_quarter_mb']} / "
        f"{back['rss_last_quarter_mb']} MB |",
    ]
    return "\n".join(lines)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 files, 2,000 backlog, 10 s idle")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--settle", type=float, default=2.0, help="settle_seconds (the default)")
    parser.add_argument(
        "--throughput-settle",
        type=float,
        default=0.5,
        help="settle_seconds for the throughput runs (they also run at --settle)",
    )
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each at 0 ms (medians)")
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--backlog-size", type=int, default=20_000, help="bytes per backlog file")
    parser.add_argument(
        "--sidecar-backlog",
        type=int,
        default=20_000,
        help="files in the backlog where each has a JSON sidecar (part sidecar_backlog)",
    )
    parser.add_argument(
        "--ignored", type=int, default=20_000, help="files no rule takes (part ignored_idle)"
    )
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="throughput latency big_files idle backlog; also sidecar_backlog ignored_idle "
        "(the scaling checks), rate_limit, cpu, one_core, upload_speed, cpu_ab and counts, "
        "not in the default run",
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        help="cpu_ab: the flowflexd command of another install to compare with",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="+",
        metavar="WORKERS",
        help="throughput at 0 ms only, once per worker count (e.g. 1 2 4 8); "
        "writes bench/results/workers.json unless --json says otherwise",
    )
    parser.add_argument("--cpu-files", type=int, default=2000, help="cpu: files per run")
    parser.add_argument(
        "--cpu-latency",
        type=float,
        default=0.0,
        help="cpu: the emulator's latency in ms (the targets are at 0; a far API is 50 or more)",
    )
    parser.add_argument(
        "--count-files",
        type=int,
        default=500,
        help="counts: files in the smaller run (the larger has three times as many)",
    )
    parser.add_argument("--quota", type=float, default=50, help="rate_limit: events/s quota")
    parser.add_argument("--rate-files", type=int, default=1000, help="rate_limit: files sent")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def main() -> int:
    args = arguments()
    if args.quick:
        args.files, args.backlog, args.idle_seconds, args.drops = 200, 2000, 10, 20
        args.sidecar_backlog, args.ignored = 2000, 2000
    if args.sweep:
        args.only = ["throughput"]
    if args.json is None:
        args.json = HERE / "results" / ("workers.json" if args.sweep else "latest.json")
    parts = args.only or ["throughput", "latency", "big_files", "idle", "backlog"]
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        # Below a few thousand, bursts overflow it and the daemon looks at whole folders.
        "inotify_max_queued_events": inotify_queue_size(),
    }
    with tempfile.TemporaryDirectory(prefix="flowflexd-bench-") as tmp:
        root = Path(tmp)
        for part in parts:
            sub = root / part
            sub.mkdir()
            print(f"running {part} ...", file=sys.stderr, flush=True)
            if part == "throughput":
                rows = []
                # 50 ms with the 8 workers the targets name; 0 ms with those and
                # with the daemon's default of 4.
                shapes = [(0, args.workers), (0, 4), (50, args.workers)]
                if args.sweep:
                    shapes = [(0, workers) for workers in args.sweep]
                for latency, workers in shapes:
                    where = sub / f"{latency}-{workers}"
                    where.mkdir()
                    rows.append(throughput(args, where, latency, workers))
                results[part] = rows
            else:
                results[part] = {
                    "latency": close_to_event,
                    "big_files": big_files,
                    "idle": idle_cpu,
                    "backlog": backlog,
                    "sidecar_backlog": sidecar_backlog,
                    "ignored_idle": ignored_idle,
                    "rate_limit": rate_limit,
                    "cpu": cpu_per_file,
                    "cpu_ab": cpu_ab,
                    "one_core": one_core,
                    "counts": counts,
                    "upload_speed": upload_speed,
                }[part](args, sub)
            print(json.dumps(results[part]), file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    if set(parts) == {"throughput", "latency", "big_files", "idle", "backlog"}:
        print(table(results))
    else:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
