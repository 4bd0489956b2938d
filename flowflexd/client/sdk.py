"""FlowFlex custom-integration client with the official SDK's public surface.

A script written for ``flowflex`` 0.1.0 runs unchanged after swapping its
import for ``from flowflexd.client import ...``. Where the SDK falls short this
client does better: every file streams from its source to storage through the
one pooled session, types and sizes are checked before any request, the upload
URL must be https, transient failures are retried with jittered exponential
backoff under one idempotency key, and no credential ever reaches a message,
an error's details or a repr.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import ipaddress
import json
import logging
import os
import random
import re
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from email.utils import parsedate_to_datetime
from typing import IO, Any, BinaryIO, cast
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3
from requests.auth import AuthBase
from requests.structures import CaseInsensitiveDict

from flowflexd import __version__
from flowflexd.client.deadline import WATCHER, DeadlineAdapter, DeadlinePassed
from flowflexd.client.filetypes import ALLOWED_MIMES, MAX_FILE_BYTES, mime_for_name
from flowflexd.client.transport import Transport, proxy_supported
from flowflexd.engine.outcomes import RETRYABLE_STATUSES, Code
from flowflexd.errors import FlowFlexConfigError, FlowFlexError, FlowFlexUploadError

DEFAULT_MAX_FILE_BYTES = MAX_FILE_BYTES
#: An answer is read up to this size; the rest is never read into memory.
MAX_ANSWER_BYTES = 1 << 20
#: Each exchange must end within this many read timeouts, plus the time its
#: body takes at this slowest rate a link may have (bytes per second).
DEADLINE_TIMEOUTS = 4
SLOWEST_UPLOAD = 64 * 1024
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SPOOL_IN_MEMORY_BYTES = 1024 * 1024
_READ_CHUNK = 256 * 1024

log = logging.getLogger("flowflexd.client")

# What requests sends by default, for the requests this module builds itself.
_DEFAULT_HEADERS = {"Accept-Encoding": "gzip, deflate", "Accept": "*/*", "Connection": "keep-alive"}

FileSource = str | os.PathLike[str] | bytes | bytearray | BinaryIO


# --------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=64)  # asked per upload; ipaddress parses in Python
def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback addresses, where plain http is tolerated."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_base_url(base_url: str) -> str:
    """Strip trailing slashes and one trailing ``/api``, as the SDK does."""
    stripped = base_url.strip().rstrip("/")
    stripped = stripped.removesuffix("/api")
    return stripped.rstrip("/")


def redact_url(url: str) -> str:
    """A presigned URL without its query: the signature is a bearer secret."""
    parts = urlsplit(url)
    return urlunsplit(
        (parts.scheme, parts.netloc, parts.path, "<redacted>" if parts.query else "", "")
    )


def _assert_safe_header_value(label: str, value: str) -> None:
    if not isinstance(value, str):
        raise FlowFlexConfigError(f"{label} must be a string, got {type(value).__name__}")
    if _CONTROL_CHARS.search(value):
        raise FlowFlexConfigError(
            f"{label} contains control characters (CR, LF, NUL or 0x00-0x1f/0x7f); "
            "they cannot be sent in an HTTP header"
        )


class _Secret:
    """Holds a credential so that repr(), vars() and logs only ever see stars."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


class _Redactor:
    """Replaces every form of the credentials with ``***`` in text and JSON values."""

    def __init__(self, *secrets: str) -> None:
        # Very short strings would shred ordinary words; real secrets are long.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            value = value.replace(secret, "***")
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


class _StripAuthorization(AuthBase):
    """Request auth that guarantees no Authorization header.

    Passing it for the storage PUT stops requests from adding one from the
    session's own ``auth`` or headers, or from ~/.netrc: an extra
    Authorization makes storage reject a presigned upload.
    """

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


class AnswerExcerpt(str):
    """The start of an answer that was over MAX_ANSWER_BYTES, as text; the rest was not read."""


def _read_capped(response: requests.Response) -> None:
    """Read an answer up to MAX_ANSWER_BYTES; past that, drop the connection unread.

    A whole answer frees its connection for the next request; a cut one
    marks the response (``cut_at``) and closes the connection instead.
    """
    chunks: list[bytes] = []
    total = 0
    cut = False
    while chunk := _read_some(response):
        total += len(chunk)
        if total > MAX_ANSWER_BYTES:
            chunks.append(chunk[: len(chunk) - (total - MAX_ANSWER_BYTES)])
            cut = True
            break
        chunks.append(chunk)
    response._content = b"".join(chunks)
    response._content_consumed = True  # type: ignore[attr-defined]
    if cut:
        response.cut_at = MAX_ANSWER_BYTES  # type: ignore[attr-defined]
        response.close()
    else:
        response.raw.release_conn()


def _read_some(response: requests.Response) -> bytes:
    """The next bytes of an answer, with urllib3's errors as requests' (as requests gives them)."""
    try:
        return bytes(response.raw.read1(65536, decode_content=True))
    except urllib3.exceptions.ReadTimeoutError as err:
        raise requests.Timeout(err) from err
    except urllib3.exceptions.DecodeError as err:
        raise requests.exceptions.ContentDecodingError(err) from err
    except urllib3.exceptions.ProtocolError as err:
        raise requests.exceptions.ChunkedEncodingError(err) from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise requests.ConnectionError(err) from err


def _parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


# ----------------------------------------------------------------------- files


class _Body:
    """One upload attempt's request body: exactly ``length`` bytes, streamed.

    requests treats an object with ``__iter__`` and ``__len__`` as a stream of
    known length and sends it with Content-Length, reading it with ``read()``
    in small blocks. A file that shrinks under us fails the upload instead of
    leaving the server waiting for bytes that never come; one that grows is
    cut at the length that was checked against the cap.
    """

    def __init__(self, raw: IO[bytes], length: int, label: str) -> None:
        self._raw = raw
        self._remaining = length
        self._length = length
        self._label = label

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_READ_CHUNK):
            yield chunk

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        want = self._remaining if size is None or size < 0 else min(size, self._remaining)
        data = self._raw.read(want)
        if isinstance(data, str):
            data = data.encode()
        if not data:
            raise FlowFlexUploadError(
                f'"{self._label}" shrank while it was being uploaded '
                f"({self._length - self._remaining} of {self._length} bytes sent)"
            )
        self._remaining -= len(data)
        return data


class FileRef:
    """A lazy reference to a file to attach to an event.

    Same surface as the SDK's ``FileRef`` (``source``, ``filename``, ``mime``,
    ``size``, ``read_bytes()``); the client itself never calls
    ``read_bytes()``: it streams the source in blocks instead.
    """

    def __init__(
        self,
        source: FileSource,
        *,
        filename: str | None = None,
        mime: str | None = None,
        size: int | None = None,
    ) -> None:
        self.source = source
        self._filename = filename
        self._mime = mime
        self._size = size
        self._lock = threading.Lock()
        self._start: int | None = None
        self._spooled: IO[bytes] | None = None

    def __repr__(self) -> str:
        try:
            name = self.filename
        except FlowFlexUploadError:
            name = "?"
        return f"FileRef({name!r})"

    @property
    def filename(self) -> str:
        if self._filename:
            return self._filename
        if isinstance(self.source, str | os.PathLike):
            return os.path.basename(os.fspath(self.source))
        name = getattr(self.source, "name", None)
        if isinstance(name, str) and name and not name.startswith("<"):
            return os.path.basename(name)
        raise FlowFlexUploadError(
            "Cannot determine the filename of an attachment; pass filename= to file()"
        )

    @property
    def mime(self) -> str:
        if self._mime:
            return self._mime
        inferred = mime_for_name(self.filename)
        if inferred:
            return inferred
        raise FlowFlexUploadError(
            f'Cannot determine the MIME type of "{self.filename}" from its extension; '
            "pass mime= to file()"
        )

    @property
    def size(self) -> int | None:
        """The size given by the caller, else the length of a bytes source (SDK semantics)."""
        if self._size is not None:
            return self._size
        if isinstance(self.source, bytes | bytearray):
            return len(self.source)
        return None

    def read_bytes(self) -> bytes:
        """Read the whole file into memory (SDK compatibility; uploads stream instead)."""
        if isinstance(self.source, bytes | bytearray):
            return bytes(self.source)
        with self.open() as (body, _length):
            return b"".join(body)

    # The streaming side, used by FlowFlex.upload_file.

    def measure(self) -> int:
        """The number of bytes an upload would send, found without reading the data.

        A stream whose length cannot be known (a pipe) is copied once into a
        temporary file, in memory only up to 1 MiB, and stops at one byte
        past the cap, so an oversized stream is never read whole.
        """
        src = self.source
        if isinstance(src, bytes | bytearray):
            return len(src)
        if isinstance(src, str | os.PathLike):
            try:
                return os.stat(src).st_size
            except OSError as err:
                raise FlowFlexUploadError(
                    f'Failed to read "{self.filename}": {err.strerror}'
                ) from err
        with self._lock:
            stream = self._seekable_stream()
            return _remaining(stream, cast(int, self._start))

    def _seekable_stream(self) -> IO[bytes]:
        """The caller's stream if it can seek, else a spooled copy. Caller holds the lock."""
        if self._spooled is not None:
            return self._spooled
        src = cast(IO[bytes], self.source)
        if not hasattr(src, "read"):
            raise FlowFlexUploadError(f"Unsupported file source: {type(src).__name__}")
        try:
            seekable = src.seekable()
        except (AttributeError, ValueError):
            seekable = False
        if seekable:
            if self._start is None:
                self._start = src.tell()
            return src
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 -- lives as long as this ref
        limit = MAX_FILE_BYTES + 1
        copied = 0
        while copied < limit and (chunk := src.read(min(_READ_CHUNK, limit - copied))):
            if isinstance(chunk, str):
                chunk = chunk.encode()
            spool.write(chunk)
            copied += len(chunk)
        spool.seek(0)
        self._spooled = cast(IO[bytes], spool)
        self._start = 0
        return self._spooled

    def open(self) -> _OpenedBody:
        """A context manager giving ``(body, length)`` positioned at the file's start."""
        return _OpenedBody(self)


class _OpenedBody:
    def __init__(self, ref: FileRef) -> None:
        self._ref = ref
        self._close: IO[bytes] | None = None
        self._locked = False

    def __enter__(self) -> tuple[Any, int]:
        ref = self._ref
        src = ref.source
        if isinstance(src, bytes | bytearray):
            return bytes(src), len(src)
        if isinstance(src, str | os.PathLike):
            try:
                fh = open(src, "rb")
            except OSError as err:
                raise FlowFlexUploadError(
                    f'Failed to read "{ref.filename}": {err.strerror}'
                ) from err
            self._close = fh
            length = os.fstat(fh.fileno()).st_size
            return _Body(fh, length, ref.filename), length
        # A caller's stream is shared state: one upload at a time reads it.
        ref._lock.acquire()
        self._locked = True
        stream = ref._seekable_stream()
        start = cast(int, ref._start)
        length = _remaining(stream, start)
        stream.seek(start)
        return _Body(stream, length, ref.filename), length

    def __exit__(self, *exc: object) -> None:
        if self._close is not None:
            self._close.close()
        if self._locked:
            ref = self._ref
            stream = ref._spooled or cast(IO[bytes], ref.source)
            # A caller's stream that is closed by now has nothing left to rewind.
            with contextlib.suppress(OSError, ValueError):
                stream.seek(cast(int, ref._start))
            ref._lock.release()


def _remaining(stream: IO[bytes], start: int) -> int:
    """Bytes from ``start`` to the end: fstat for a real file, else seek to the end."""
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        info = None
    if info is not None and stat.S_ISREG(info.st_mode):
        return max(0, info.st_size - start)
    end = stream.seek(0, io.SEEK_END)
    stream.seek(start)
    return end - start


def file(
    source: FileSource,
    *,
    filename: str | None = None,
    mime: str | None = None,
    size: int | None = None,
) -> FileRef:
    """Wrap a path, bytes or binary file object so it can ride in an event payload."""
    return FileRef(source, filename=filename, mime=mime, size=size)


# ---------------------------------------------------------------------- client


class SendEventResult:
    """What ``send_event`` returns: the API's answer and where each file went."""

    def __init__(
        self,
        response: Any,
        uploaded_assets: dict[str, str],
        idempotency_key: str | None = None,
    ) -> None:
        #: The events endpoint's answer body, as it came.
        self.response = response
        #: Payload path (``invoice``, ``gallery[0]``, ``order.receipt``) -> assetId.
        self.uploaded_assets = uploaded_assets
        #: The key the event was sent with (generated when none was given).
        self.idempotency_key = idempotency_key

    def __repr__(self) -> str:
        return (
            f"SendEventResult(response={self.response!r}, uploaded_assets={self.uploaded_assets!r})"
        )


_FoundRef = tuple[Any, Any, FileRef, str]


class FlowFlex:
    """FlowFlex custom-integration client.

    The first seven options are the SDK's. The rest tune what the SDK lacks:
    ``max_attempts`` (1 disables retries), the backoff base and ceiling,
    ``max_retry_after_seconds`` (a longer Retry-After is raised to the caller
    rather than slept through), ``pool_maxsize`` (connections kept per host)
    and ``cancel_event`` (set it to cut a backoff wait short).
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        integration_code: str,
        base_url: str,
        timeout_seconds: float = 30.0,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        session: requests.Session | None = None,
        max_attempts: int = 5,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        max_retry_after_seconds: float = 60.0,
        pool_maxsize: int = 32,
        cancel_event: threading.Event | None = None,
    ) -> None:
        for label, value in (
            ("api_key", api_key),
            ("api_secret", api_secret),
            ("integration_code", integration_code),
            ("base_url", base_url),
        ):
            if not value:
                raise FlowFlexConfigError(f"{label} is required")
            if not isinstance(value, str):
                raise FlowFlexConfigError(f"{label} must be a string")
        if not timeout_seconds or timeout_seconds <= 0:
            raise FlowFlexConfigError("timeout_seconds must be a positive number of seconds")
        if max_file_bytes <= 0:
            raise FlowFlexConfigError("max_file_bytes must be a positive number of bytes")
        if max_attempts < 1:
            raise FlowFlexConfigError("max_attempts must be at least 1")
        if backoff_base_seconds < 0 or backoff_max_seconds < 0:
            raise FlowFlexConfigError("backoff delays cannot be negative")
        if _CONTROL_CHARS.search(api_key) or _CONTROL_CHARS.search(api_secret):
            raise FlowFlexConfigError("api_key and api_secret cannot contain control characters")

        stripped = normalize_base_url(base_url)
        parsed = urlsplit(stripped)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise FlowFlexConfigError(f'base_url is not a valid URL: "{base_url}"')
        if parsed.scheme != "https" and not is_loopback_host(parsed.hostname):
            raise FlowFlexConfigError(
                f'base_url must use https (got "{parsed.scheme}://{parsed.hostname}"): '
                "Basic-auth credentials would otherwise travel in cleartext. "
                "Plain http is only allowed for localhost."
            )

        self._base_url = stripped
        self._integration_code = integration_code
        self._timeout = float(timeout_seconds)
        self._max_file_bytes = int(max_file_bytes)
        self._max_attempts = int(max_attempts)
        self._backoff_base = float(backoff_base_seconds)
        self._backoff_max = float(backoff_max_seconds)
        self._max_retry_after = float(max_retry_after_seconds)
        self._cancel = cancel_event or threading.Event()
        self._random = random.Random()  # noqa: S311 -- jitter, not cryptography
        # The daemon counts answers for its metrics: (call, HTTP status or None),
        # and slows a whole destination down on a 429: (call, Retry-After seconds).
        self.on_answer: Callable[[str, int | None], None] | None = None
        self.on_throttle: Callable[[str, float], None] | None = None
        token = base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        self._auth_header = _Secret(f"Basic {token}")
        self._redactor = _Redactor(api_secret, token)
        self._user_agent = f"flowflexd/{__version__} {requests.utils.default_user_agent()}"
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=pool_maxsize)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            # requests re-reads proxy and CA settings from the environment on
            # every request; our own session reads them once per host instead.
            session.trust_env = False
        self._session = session
        self._transport = Transport(self._timeout)  # our own session's light path
        self._environment: dict[str, dict[str, Any]] = {}
        self._environment_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FlowFlex(base_url={self._base_url!r}, integration_code={self._integration_code!r})"

    def _settings_for(self, url: str) -> dict[str, Any]:
        """Proxies and CA bundle from the environment for ``url``'s host, read once."""
        if not self._own_session:
            return {}
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        with self._environment_lock:
            settings = self._environment.get(key)
            if settings is None:
                verify: str | bool = (
                    os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
                )
                settings = {
                    "proxies": requests.utils.get_environ_proxies(key) or {},
                    "verify": verify,
                }
                self._environment[key] = settings
        return settings

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def integration_code(self) -> str:
        return self._integration_code

    @property
    def max_file_bytes(self) -> int:
        return self._max_file_bytes

    def close(self) -> None:
        """Close the pooled connections (this thread's, for the light path)."""
        self._transport.close()
        self._session.close()

    def __enter__(self) -> FlowFlex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ files

    def file(
        self,
        source: FileSource,
        *,
        filename: str | None = None,
        mime: str | None = None,
        size: int | None = None,
    ) -> FileRef:
        """Same as the module-level ``file()``, so callers can write ``ff.file(...)``."""
        return file(source, filename=filename, mime=mime, size=size)

    def check_file(self, ref: FileRef) -> int:
        """Refuse a file FlowFlex would refuse, before any request; return its size."""
        name = ref.filename
        mime = ref.mime
        if mime not in ALLOWED_MIMES:
            raise FlowFlexUploadError(
                f'"{name}" has type {mime}, which FlowFlex does not accept; allowed: '
                "PDF, DOC(X), XLS(X), PPT(X), TXT, JPEG, PNG, MP4, 3GPP, AAC, AMR, MP3, OGG",
                code=Code.MIME_NOT_ALLOWED,
            )
        size = ref.measure()
        if size > self._max_file_bytes:
            raise FlowFlexUploadError(
                f'"{name}" is {size:,} bytes, over the {self._max_file_bytes:,}-byte limit',
                code=Code.FILE_TOO_LARGE,
            )
        return size

    # ------------------------------------------------------------------- http

    def _error_from_response(self, res: requests.Response, what: str) -> FlowFlexError:
        body = self._parse_body(res)
        message = None
        code = None
        if isinstance(body, dict):
            message = body.get("error") or body.get("message")
            code = body.get("code") or body.get("name")
        if res.is_redirect:
            location = redact_url(res.headers.get("Location") or "nowhere")
            message = (
                f"{what} was answered with a redirect ({res.status_code}) to {location}; "
                "redirects are not followed"
            )
        message = str(message or f"{what} failed with status {res.status_code}")
        retry_after = _parse_retry_after(res.headers.get("Retry-After"), time.time())
        return FlowFlexError(
            self._redactor.text(message),
            status=res.status_code,
            code=str(code) if code is not None else None,
            details=self._redactor.value(body),
            retryable=res.status_code in RETRYABLE_STATUSES,
            retry_after=retry_after,
        )

    @staticmethod
    def _parse_body(res: requests.Response) -> Any:
        if getattr(res, "cut_at", None) is not None:
            return AnswerExcerpt(res.content.decode("utf-8", "replace"))
        body: Any = res.text
        if body and "application/json" in (res.headers.get("content-type") or ""):
            with contextlib.suppress(ValueError):  # not JSON after all: keep the text
                body = res.json()
        return body

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and the capped exponential step."""
        ceiling = min(self._backoff_max, self._backoff_base * (2 ** (attempt - 1)))
        return self._random.uniform(0, ceiling)

    def _noted(
        self, call: str, send: Callable[[], requests.Response]
    ) -> Callable[[], requests.Response]:
        """``send``, telling ``on_answer`` each status (None: no answer: network, timeout, TLS)
        and ``on_throttle`` each 429's Retry-After."""
        on_answer, on_throttle = self.on_answer, self.on_throttle
        if on_answer is None and on_throttle is None:
            return send

        def noted() -> requests.Response:
            try:
                res = send()
            except requests.RequestException:
                if on_answer is not None:
                    on_answer(call, None)
                raise
            if on_answer is not None:
                on_answer(call, res.status_code)
            if res.status_code == 429 and on_throttle is not None:
                wait = _parse_retry_after(res.headers.get("Retry-After"), time.time())
                on_throttle(call, 1.0 if wait is None else wait)
            return res

        return noted

    def _with_retries(
        self,
        what: str,
        send: Callable[[], requests.Response],
        error_class: type[FlowFlexError] = FlowFlexError,
        *,
        call: str = "api",
    ) -> requests.Response:
        send = self._noted(call, send)
        attempt = 0
        while True:
            attempt += 1
            cause: BaseException | None = None
            try:
                res = send()
            except requests.exceptions.SSLError as err:
                raise error_class(self._redactor.text(f"{what}: TLS failure: {err}")) from err
            except requests.Timeout as err:
                message = (
                    f"{what}: no whole answer {err}"
                    if isinstance(err, DeadlinePassed)
                    else f"{what} timed out after {self._timeout:g}s"
                )
                error = error_class(message, retryable=True)
                cause = err
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                error = error_class(
                    self._redactor.text(f"Network error during {what}: {type(err).__name__}"),
                    retryable=True,
                )
                cause = err
            except requests.RequestException as err:
                # requests marks a malformed request (URL, header) as a
                # ValueError too: sending it again cannot help. Anything else,
                # such as an answer that cannot be decoded, may pass.
                error = error_class(
                    self._redactor.text(f"{what} failed: {type(err).__name__}: {err}"),
                    retryable=not isinstance(err, ValueError),
                )
                cause = err
            else:
                if 200 <= res.status_code < 300:
                    return res
                error = self._error_from_response(res, what)
                if error_class is not FlowFlexError:
                    error = error_class(
                        error.message,
                        status=error.status,
                        code=error.code,
                        details=error.details,
                        retryable=error.retryable,
                        retry_after=error.retry_after,
                    )
            if not error.retryable or attempt >= self._max_attempts:
                raise error from cause
            delay = self._backoff(attempt)
            if error.retry_after is not None:
                if error.retry_after > self._max_retry_after:
                    raise error from cause
                delay = max(delay, error.retry_after)
            log.info(
                "retrying %s after %s (attempt %d of %d, waiting %.2fs)",
                what,
                error.status or "network error",
                attempt,
                self._max_attempts,
                delay,
            )
            if self._cancel.wait(delay):
                raise error from cause

    def _api(self, method: str, path: str, what: str, *, call: str = "api", **kwargs: Any) -> Any:
        url = f"{self._base_url}{path}"
        headers = {
            "Authorization": self._auth_header.reveal(),
            "User-Agent": self._user_agent,
            **kwargs.pop("headers", {}),
        }

        settings = self._settings_for(url)

        payload = kwargs.pop("json", None)
        body = None
        if payload is not None:
            try:
                body = json.dumps(payload, allow_nan=False).encode()
            except ValueError as err:  # NaN or Infinity: no JSON for them
                raise FlowFlexError(
                    f"{what}: the payload cannot be sent as JSON ({err})", code=Code.INVALID_PAYLOAD
                ) from err
            headers["Content-Type"] = "application/json"

        def send() -> requests.Response:
            return self._exchange(method, url, headers, body, settings=settings)

        return self._parse_body(self._with_retries(what, send, call=call))

    def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any,
        *,
        settings: dict[str, Any],
    ) -> requests.Response:
        """One HTTP request and its whole answer.

        A caller's session gets the full ``Session.request``, so its auth,
        hooks, adapters and settings apply. Our own session's requests go over
        http.client (transport.py), or the pooled requests adapter for a proxy
        that path does not speak: requests' merging of settings, cookies and
        hooks cost more CPU than the calls. Redirects are then not followed: a
        3xx from the API or from storage is an error, never a silent resend of
        credentials or a body to another place.
        """
        if not self._own_session:
            return self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                timeout=self._timeout,
                auth=None if "Authorization" in headers else _StripAuthorization(),
                **settings,
            )
        sent = {**_DEFAULT_HEADERS, **headers}
        if body is not None:
            sent["Content-Length"] = str(len(body))  # a streamed _Body has one too
        proxies = settings.get("proxies") or {}
        proxy = proxies.get(urlsplit(url).scheme) or proxies.get("all")
        seconds = DEADLINE_TIMEOUTS * self._timeout + (len(body or b"") / SLOWEST_UPLOAD)
        armed = WATCHER.arm(seconds)
        try:
            if proxy_supported(proxy):
                return self._transport.send(
                    method,
                    url,
                    sent,
                    body,
                    proxy=proxy,
                    verify=settings.get("verify", True),
                    cap=MAX_ANSWER_BYTES,
                    note=armed.note,
                )
            return self._through_requests(method, url, sent, body, settings)
        except Exception as err:
            if armed.fired:
                raise DeadlinePassed(f"within {seconds:.0f} s; the connection was cut") from err
            raise
        finally:
            WATCHER.disarm(armed)

    def _through_requests(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any,
        settings: dict[str, Any],
    ) -> requests.Response:
        """The pooled requests adapter: for proxies the light path does not speak (socks ...)."""
        request = requests.PreparedRequest()
        request.method = method
        request.url = url
        request.headers = CaseInsensitiveDict(headers)
        request.body = body
        request.hooks = {"response": []}
        response = self._session.get_adapter(url).send(
            request, timeout=self._timeout, stream=True, **settings
        )
        _read_capped(response)
        return response

    # ----------------------------------------------------------------- assets

    def create_upload_url(self, *, filename: str, mime: str, size: int | None = None) -> Any:
        """Ask for a presigned upload URL: ``{"assetId", "uploadUrl", "token"}``."""
        if mime not in ALLOWED_MIMES:
            raise FlowFlexUploadError(
                f'"{filename}" has type {mime}, which FlowFlex does not accept',
                code=Code.MIME_NOT_ALLOWED,
            )
        if size is not None and size > self._max_file_bytes:
            raise FlowFlexUploadError(
                f'"{filename}" is {size:,} bytes, over the {self._max_file_bytes:,}-byte limit',
                code=Code.FILE_TOO_LARGE,
            )
        body: dict[str, Any] = {"filename": filename, "mime": mime}
        if size is not None:
            body["size"] = size
        return self._api(
            "POST", "/v1/assets/upload-url", "upload-url request", json=body, call="upload-url"
        )

    def upload_file(self, ref: FileRef) -> str:
        """Upload one file and return its assetId; checks type and size first."""
        size = self.check_file(ref)
        info = self.create_upload_url(filename=ref.filename, mime=ref.mime, size=size)
        if not (
            isinstance(info, dict)
            and isinstance(info.get("assetId"), str)
            and isinstance(info.get("uploadUrl"), str)
        ):
            # A 2xx without them is no refusal of the file: asked again, it may come right.
            raise FlowFlexUploadError(
                f'The upload-url answer for "{ref.filename}" has no assetId and uploadUrl',
                details=self._redactor.value(info),
                code=Code.UNEXPECTED_ANSWER,
                retryable=True,
            )
        asset_id: str = info["assetId"]
        self.put_file(ref, info["uploadUrl"])
        return asset_id

    def put_file(self, ref: FileRef, upload_url: str) -> None:
        """PUT a file's bytes to a presigned URL, streamed, retried when transient.

        The URL must be https (plain http only on loopback).
        """
        parts = urlsplit(upload_url)
        if parts.scheme != "https" and not (
            parts.scheme == "http" and is_loopback_host(parts.hostname)
        ):
            raise FlowFlexUploadError(
                f'Refusing to upload "{ref.filename}" to a non-https URL '
                f"({redact_url(upload_url)})",
                code=Code.INSECURE_UPLOAD_URL,
            )
        what = f'upload of "{ref.filename}" to {redact_url(upload_url)}'
        mime = ref.mime
        settings = self._settings_for(upload_url)

        def send() -> requests.Response:
            with ref.open() as (body, length):
                if length > self._max_file_bytes:
                    raise FlowFlexUploadError(
                        f'"{ref.filename}" grew to {length:,} bytes, over the '
                        f"{self._max_file_bytes:,}-byte limit",
                        code=Code.FILE_TOO_LARGE,
                    )
                return self._exchange(
                    "PUT",
                    upload_url,
                    {"Content-Type": mime, "User-Agent": self._user_agent},
                    body if length else b"",
                    settings=settings,
                )

        self._with_retries(what, send, FlowFlexUploadError, call="upload")

    # ----------------------------------------------------------------- events

    def _collect(self, value: Any, path: str, found: list[_FoundRef]) -> Any:
        """Deep-copy a payload, noting every FileRef with its container and path."""
        if isinstance(value, list):
            out_list: list[Any] = [None] * len(value)
            for i, item in enumerate(value):
                item_path = f"{path}[{i}]"
                if isinstance(item, FileRef):
                    found.append((out_list, i, item, item_path))
                else:
                    out_list[i] = self._collect(item, item_path, found)
            return out_list
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                item_path = f"{path}.{key}" if path else str(key)
                if isinstance(item, FileRef):
                    found.append((out, key, item, item_path))
                else:
                    out[key] = self._collect(item, item_path, found)
            return out
        return value

    def _resolve_files(self, payload: Any) -> tuple[Any, dict[str, str]]:
        found: list[_FoundRef] = []
        resolved = self._collect(payload, "", found)
        unique = list({id(ref): ref for _, _, ref, _ in found}.values())
        for ref in unique:  # every file is checked before the first request
            self.check_file(ref)
        asset_ids: dict[int, str] = {}
        if len(unique) == 1:
            asset_ids[id(unique[0])] = self.upload_file(unique[0])
        elif unique:
            with ThreadPoolExecutor(max_workers=min(8, len(unique))) as pool:
                futures = {pool.submit(self.upload_file, ref): ref for ref in unique}
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:
                    future.cancel()
                for future in done:
                    if future.exception() is not None:
                        raise cast(BaseException, future.exception())
                for future, ref in futures.items():
                    asset_ids[id(ref)] = future.result()
        uploaded: dict[str, str] = {}
        for container, key, ref, path in found:
            container[key] = asset_ids[id(ref)]
            uploaded[path] = asset_ids[id(ref)]
        return resolved, uploaded

    def send_event(
        self,
        event: str,
        *,
        payload: Any = None,
        idempotency_key: str | None = None,
    ) -> SendEventResult:
        """Upload every file in ``payload``, swap each for its assetId, fire the event.

        Every retry of this one call, of the event as of its uploads, sends
        the same idempotency key, so the backend acts once.
        """
        if not event:
            raise FlowFlexError("event name is required")
        _assert_safe_header_value("event", event)
        key = idempotency_key or str(uuid.uuid4())
        _assert_safe_header_value("idempotency_key", key)
        resolved, uploaded = self._resolve_files(payload if payload is not None else {})
        response = self.fire_event(event, resolved, key)
        return SendEventResult(response, uploaded, key)

    def verify(self) -> None:
        """Prove the credentials and the integration code with one request that fires nothing.

        It is an event request without an event name. FlowFlex checks the
        credentials (401, 403) and the integration (404) before it refuses the
        missing name (400), so that 400 is the proof; no event is fired, no
        flow starts and nothing is stored. Raises FlowFlexError otherwise.
        """
        try:
            self._api(
                "POST",
                f"/v1/events/{quote(self._integration_code, safe='')}",
                "checking the credentials and integration code",
                json={},
                call="verify",
            )
        except FlowFlexError as err:
            if err.status == 400:
                return
            raise
        raise FlowFlexError(
            "checking the credentials and integration code: FlowFlex accepted an event without "
            "a name, which it should refuse; is base_url really FlowFlex?",
            code=Code.UNEXPECTED_ANSWER,
        )

    def fire_event(self, event: str, payload: Any, idempotency_key: str) -> Any:
        """POST an event whose files are already assetIds; returns the answer body."""
        _assert_safe_header_value("event", event)
        _assert_safe_header_value("idempotency_key", idempotency_key)
        return self._api(
            "POST",
            f"/v1/events/{quote(self._integration_code, safe='')}",
            f'event "{event}"',
            headers={"x-event": event, "x-idempotency-key": idempotency_key},
            json=payload,
            call="event",
        )
