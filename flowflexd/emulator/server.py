"""The emulator's HTTP server: a threaded HTTP/1.1 keep-alive server on loopback.

It speaks the three calls of the FlowFlex custom-integration API plus the
presigned storage PUT it hands out, and a few ``/_emulator/...`` control
endpoints for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from flowflexd.client import wire
from flowflexd.emulator.state import Answer, Clock, EmulatorState, Faults, error

DEFAULT_API_KEY = "cik_emulator"
DEFAULT_API_SECRET = "emulator-secret-not-for-production"  # noqa: S105 -- the local emulator's demo secret
DEFAULT_INTEGRATION_CODE = "ic_emulator"
MAX_JSON_BODY = 1024 * 1024
_CHUNK = 64 * 1024

log = structlog.get_logger("flowflexd.emulator")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        state: EmulatorState,
        upload_base_url: str | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.state = state
        self.upload_base_url = upload_base_url
        self.tls = tls
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        """With TLS, each connection is wrapped; its handshake runs in its own thread."""
        sock, address = self.socket.accept()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (killed, timed out) is routine here."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("client went away", client=str(client_address), error=str(error))
            return
        log.exception("emulator request failed", client=str(client_address))

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _Headers(dict[str, str]):
    """A request's headers by lower-cased name (the first of a repeated one), read as
    ``email.message.Message`` is: ``get`` and ``in`` ignore case."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


_dates = threading.local()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flowflex-emulator/0.1"
    timeout = 120  # an idle keep-alive connection frees its thread after this
    # Headers and body go out in two writes; with Nagle on, the second waits
    # for the client's delayed ACK and every answer costs 40 ms.
    disable_nagle_algorithm = True
    server: _Server
    raw_requestline: bytes  # set by handle_one_request before parse_request

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator logs events, not every request line."""

    def parse_request(self) -> bool:
        """The usual request (``METHOD target HTTP/1.1``, plain header lines) read lightly.

        The standard library parses headers with the email package, most of
        the emulator's CPU per request, and a benchmark shares the machine's
        cores with it. Anything unusual goes to the standard parser, which
        has read nothing yet either.
        """
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        if len(words) != 3 or words[2] != "HTTP/1.1":
            return super().parse_request()
        self.requestline = line
        self.command, self.path, self.request_version = words
        try:
            pairs = wire.header_lines(cast(BinaryIO, self.rfile))
        except http.client.HTTPException as err:
            self.close_connection = True
            too_big = isinstance(err, http.client.LineTooLong) or "more than" in str(err)
            self.send_error(431 if too_big else 400, str(err))
            return False
        headers = _Headers()
        for name, value in pairs:
            headers.setdefault(name.lower(), value)
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("Connection", "").lower()
        self.close_connection = connection == "close"
        if headers.get("Expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, formatted once a second per thread rather than per answer."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        if getattr(_dates, "second", None) != now:
            _dates.second, _dates.text = now, super().date_time_string(now)
        text: str = _dates.text
        return text

    def setup(self) -> None:
        super().setup()
        self.server.state.note_connection()

    # ------------------------------------------------------------- plumbing

    @property
    def state(self) -> EmulatorState:
        return self.server.state

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None or not value.strip().isdigit():
            return None
        return int(value)

    def _drain(self, length: int | None) -> bool:
        """Read and drop a body we will not use; False when the connection must close."""
        if length is None:
            return self.headers.get("Transfer-Encoding") is None
        if length > 4 * 1024 * 1024 * 1024:
            return False
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(_CHUNK, remaining))
            if not chunk:
                return False
            remaining -= len(chunk)
        return True

    def _send(self, answer: Answer, *, close: bool = False) -> None:
        latency = self.state.faults.latency_ms
        if latency > 0:
            time.sleep(latency / 1000.0)
        payload = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
        if answer.drip > 0:
            self._drip(answer, payload)
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in answer.headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _drip(self, answer: Answer, payload: bytes) -> None:
        """The whole answer one byte at a time; the connection closes after it."""
        head = (
            f"HTTP/1.1 {answer.status} Slow\r\nContent-Type: {answer.content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.close_connection = True
        data = head + payload
        try:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(answer.drip)
        except OSError:
            pass  # the client gave up, as it should

    def _read_json(self) -> tuple[Any, Answer | None]:
        length = self._content_length()
        if length is None:
            ok = self._drain(None)
            return None, error(411, "LENGTH_REQUIRED", "Content-Length is required") if ok else None
        if length > MAX_JSON_BODY:
            self._drain(length)
            return None, error(413, "BODY_TOO_LARGE", f"JSON bodies are limited to {MAX_JSON_BODY}")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw), None
        except (ValueError, UnicodeDecodeError):
            return None, error(400, "INVALID_JSON", "The body is not valid JSON")

    # ------------------------------------------------------------- routes

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self.state.count(path)
        if path == "/_emulator/clock":
            body, problem = self._read_json()
            if problem is None:
                seconds = body.get("advance_seconds", 0) if isinstance(body, dict) else 0
                problem = Answer(200, {"now": self.state.clock.advance(float(seconds))})
            self._send(problem)
            return
        body, problem = self._read_json()
        if problem is None:
            problem = self.state.authenticate(self.headers.get("Authorization"))
        if problem is not None:
            self._send(problem)
            return
        if path == "/v1/assets/upload-url":
            self._upload_url(body)
        elif path.startswith("/v1/events/") and path.count("/") == 3:
            self._event(unquote(path.removeprefix("/v1/events/")), body)
        else:
            self._send(error(404, "NOT_FOUND", f"No route for POST {path}"))

    def _upload_url(self, body: Any) -> None:
        injected = self.state.injected_failure(call="upload-url")
        if injected is not None and not injected.after_processing:
            self._send(injected.answer)
            return
        answer = self.state.create_upload(body, self.server.upload_base_url or self.server.base_url)
        self._send(injected.answer if injected is not None else answer)

    def _event(self, code: str, body: Any) -> None:
        refused = self.state.over_quota()
        if refused is not None:
            self._send(refused)
            return
        injected = self.state.injected_failure(call="event")
        if injected is not None and not injected.after_processing:
            self._send(injected.answer)
            return
        event = self.headers.get("x-event")
        key = self.headers.get("x-idempotency-key")
        answer, replay = self.state.fire_event(code, event, key, body)
        if answer.status == 200 and not replay:
            log.info(
                "event received",
                event_name=event,
                idempotency_key=key,
                payload=body,
                answer_lost=injected is not None,
            )
        # An injected failure after processing: the answer is lost on the way back.
        self._send(injected.answer if injected is not None else answer)

    def do_PUT(self) -> None:
        parts = urlsplit(self.path)
        self.state.count("/_storage")
        length = self._content_length()
        if not parts.path.startswith("/_storage/"):
            self._send(error(404, "NOT_FOUND", "No such bucket"), close=not self._drain(length))
            return
        asset_id = parts.path.removeprefix("/_storage/")
        token = parse_qs(parts.query).get("token", [None])[0]
        problem = self.state.check_upload(
            asset_id,
            token,
            content_type=self.headers.get("Content-Type"),
            has_authorization="Authorization" in self.headers,
            length=length,
        )
        if problem is None:
            injected = self.state.injected_failure(storage=True)
            problem = injected.answer if injected is not None else None
        if problem is not None:
            self._send(problem, close=not self._drain(length))
            return
        assert length is not None
        target = self.state.asset_path(asset_id)
        digest = hashlib.sha256()
        received = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{asset_id}.")
        try:
            with os.fdopen(fd, "wb") as out:
                while received < length:
                    chunk = self.rfile.read(min(_CHUNK, length - received))
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
            if received < length:
                # The client went away mid-body; nothing is stored.
                self.close_connection = True
                return
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()
        self.state.finish_upload(asset_id, received, digest.hexdigest())
        self._send(Answer(200, {}))

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.state.count(parts.path)
        if parts.path in ("/", "/index.html"):
            page = resources.files("flowflexd.emulator").joinpath("page.html").read_bytes()
            self._send(Answer(200, None, raw=page, content_type="text/html; charset=utf-8"))
        elif parts.path.startswith("/_emulator/assets/"):
            self._stored_asset(parts.path.rsplit("/", 1)[1])
        elif parts.path == "/_emulator/info":
            self._send(Answer(200, self.state.info()))
        elif parts.path == "/_emulator/events":
            since = parse_qs(parts.query).get("since", ["0"])[0]
            self._send(Answer(200, self.state.events(int(since) if since.isdigit() else 0)))
        elif parts.path == "/_emulator/stats":
            self._send(Answer(200, self.state.stats_snapshot()))
        elif parts.path == "/_emulator/health":
            self._send(Answer(200, {"ok": True}))
        else:
            self._send(error(404, "NOT_FOUND", f"No route for GET {parts.path}"))

    def _stored_asset(self, asset_id: str) -> None:
        """An uploaded file, served with its type so that a browser shows PDFs and images."""
        found = self.state.stored(asset_id)
        if found is None:
            self._send(error(404, "ASSET_NOT_FOUND", f"No uploaded file for {asset_id}"))
            return
        path, asset = found
        data = path.read_bytes()
        shown = asset.filename.encode("ascii", "replace").decode().replace('"', "_")
        headers = [
            ("Content-Disposition", f'inline; filename="{shown}"'),
            ("X-Content-Type-Options", "nosniff"),
        ]
        if asset.mime != "application/pdf":
            # What a stranger's file may do in the page's origin: nothing. (Not for
            # PDFs: the sandbox would also keep Chromium's PDF viewer out.)
            headers.append(("Content-Security-Policy", "sandbox"))
        self._send(Answer(200, None, headers=tuple(headers), raw=data, content_type=asset.mime))


class Emulator:
    """A local FlowFlex-compatible server, startable from Python or ``flowflexd emulator``.

    ``port=0`` picks a free port; ``url`` tells which. Without ``data_dir`` a
    temporary directory holds events and asset bytes and is removed on stop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        integration_code: str = DEFAULT_INTEGRATION_CODE,
        latency_ms: float = 0.0,
        fail_rate: float = 0.0,
        storage_fail_rate: float = 0.0,
        retry_after_seconds: int = 1,
        seed: int | None = None,
        upload_base_url: str | None = None,
        quota_per_second: float | None = None,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    ) -> None:
        """``tls``: (certificate, key) files in PEM to serve HTTPS with."""
        if not 0.0 <= fail_rate <= 1.0 or not 0.0 <= storage_fail_rate <= 1.0:
            raise ValueError("fail rates are shares between 0 and 1")
        if latency_ms < 0:
            raise ValueError("latency_ms cannot be negative")
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="ffemu-"))
        self.api_key = api_key
        self.api_secret = api_secret
        self.integration_code = integration_code
        self.faults = Faults(
            latency_ms=latency_ms,
            fail_rate=fail_rate,
            storage_fail_rate=storage_fail_rate,
            retry_after_seconds=retry_after_seconds,
            quota_per_second=quota_per_second,
        )
        self.clock = Clock()
        self.state = EmulatorState(
            data_dir=self.data_dir,
            api_key=api_key,
            api_secret=api_secret,
            integration_code=integration_code,
            faults=self.faults,
            clock=self.clock,
            seed=seed,
        )
        self._address = (host, port)
        self._upload_base_url = upload_base_url.rstrip("/") if upload_base_url else None
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(*tls)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server.base_url

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return int(self._server.server_address[1])

    def start(self) -> Emulator:
        try:
            self._server = _Server(self._address, self.state, self._upload_base_url, self._tls)
        except BaseException:
            self.stop()  # a port taken or refused leaves no temporary folder behind
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="flowflex-emulator",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "emulator listening", url=self.url, page=f"{self.url}/", data_dir=str(self.data_dir)
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Conveniences for tests and benchmarks.

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        return self.state.events(since)

    def stats(self) -> dict[str, Any]:
        return self.state.stats_snapshot()

    def fail_next(self, count: int, *, status: int = 503, after_processing: bool = False) -> None:
        """Answer the next ``count`` API calls with ``status``; see ``EmulatorState``."""
        self.state.fail_next(count, status=status, after_processing=after_processing)

    def answer_next(
        self,
        count: int,
        answer: Answer,
        *,
        after_processing: bool = False,
        only: str | None = None,
    ) -> None:
        """Answer the next ``count`` API calls with ``answer``; see ``EmulatorState``."""
        self.state.answer_next(count, answer, after_processing=after_processing, only=only)

    def set_faults(
        self, *, latency_ms: float | None = None, fail_rate: float | None = None
    ) -> None:
        if latency_ms is not None:
            self.faults.latency_ms = latency_ms
        if fail_rate is not None:
            self.faults.fail_rate = fail_rate
