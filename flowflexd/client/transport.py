"""The daemon's HTTP path for its three calls: one kept-alive connection per thread.

requests and urllib3 spend more CPU per call than the calls themselves
(merging settings, hooks, pools, header objects), and http.client parses
each answer's headers with the email package. Here http.client only
connects (a proxy's CONNECT tunnel, TLS); the request goes out in one send
with its body when small (a file's first block when streamed), and the
answer is read by ``wire.py``. A caller's
own session keeps requests, whole. What stays the same:

- timeouts per connect and per read, and the overall deadline (the deadline
  watcher cuts this connection's socket);
- TLS verified against certifi's bundle, or ``REQUESTS_CA_BUNDLE`` /
  ``CURL_CA_BUNDLE`` when set;
- proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``),
  through an http:// proxy (a CONNECT tunnel for https); any other proxy
  scheme goes through requests, as before;
- redirects are never followed; answers are read up to a cap, past which the
  connection is dropped; a header that would split the request is refused;
- the answer comes back as a ``requests.Response``, so the rest of the
  client does not know which path carried it.

A kept-alive connection the server has closed meanwhile is noticed before it
is used (its socket reads as ready), as urllib3 does.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import os
import re
import select
import socket
import ssl
import threading
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import certifi
import requests
from requests.structures import CaseInsensitiveDict

from flowflexd.client import wire

BLOCK = 64 * 1024  # bytes per send of a streamed upload


_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
_NO_COOKIES = requests.cookies.RequestsCookieJar()  # never filled: no cookies are kept


def _response_fields() -> dict[str, Any]:
    """What requests.Response() sets, without a new cookie jar per answer."""
    return {
        "_content": False,
        "_content_consumed": True,
        "_next": None,
        "raw": None,
        "history": [],
        "cookies": _NO_COOKIES,
        "elapsed": datetime.timedelta(0),
        "request": None,
        "connection": None,
    }


class Kept:
    """One kept-alive connection: http.client connects it (proxy tunnel, TLS); wire.py speaks.

    ``sock`` is what the deadline watcher cuts.
    """

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self._reader: BinaryIO | None = None

    @property
    def sock(self) -> socket.socket | None:
        return self.conn.sock

    def ready(self) -> tuple[socket.socket, BinaryIO]:
        """The socket and its answer reader, connecting first when not connected."""
        if self.conn.sock is None:
            self.conn.connect()
        sock: socket.socket = self.conn.sock
        if self._reader is None:
            self._reader = sock.makefile("rb")
        return sock, self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.conn.close()


def proxy_supported(proxy: str | None) -> bool:
    """Proxies this path carries itself: none, or a plain http:// one."""
    return proxy is None or urlsplit(proxy).scheme == "http"


class Transport:
    """Kept-alive http.client connections, one per thread and destination."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._local = threading.local()
        self._contexts: dict[str | bool, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- public

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any,
        *,
        proxy: str | None,
        verify: str | bool,
        cap: int,
        note: Callable[[Any], None],
    ) -> requests.Response:
        """One request and its answer (at most ``cap`` bytes read: ``cut_at`` marks more).

        ``note`` is told the connection before anything is sent, for the deadline
        watcher. Errors come as requests' exceptions, as the requests path raises them.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise requests.exceptions.InvalidSchema(f"no connection for {parts.scheme!r} URLs")
        if not parts.hostname:
            raise requests.exceptions.InvalidURL("the URL names no host")
        conn = self._connection(parts, proxy, verify)
        note(conn)
        target = _target(parts)
        if proxy and parts.scheme == "http":
            # Through a plain proxy: the whole URL as the target, its credentials beside.
            target, headers = url, {**headers, **_proxy_auth(proxy)}
        if _UNSAFE_TARGET.search(target):
            raise requests.exceptions.InvalidURL("the URL has spaces or control characters")
        try:
            head = wire.request_head(method, target, wire.host_header(parts.netloc), headers)
        except ValueError as err:
            raise requests.exceptions.InvalidHeader(str(err)) from err
        try:
            sock, reader = conn.ready()
            blocks = iter(()) if body is None else wire.body_blocks(body, BLOCK)
            first = next(blocks, b"")
            # A small body, or a streamed one's first block, rides in the head's send.
            if len(first) <= wire.INLINE_BODY:
                sock.sendall(head + first)
            else:
                sock.sendall(head)
                sock.sendall(first)
            for block in blocks:
                sock.sendall(block)
            answer = wire.read_answer(reader, method, cap)
        except BaseException as err:
            self._drop(conn)
            raise _as_requests_error(err) from err
        if answer.cut or answer.will_close:
            self._drop(conn)
        # Built field by field: Response() makes a cookie jar (a lock, a policy) per answer.
        response = requests.Response.__new__(requests.Response)
        response.__dict__.update(_response_fields())
        response.status_code = answer.status
        response.reason = answer.reason
        response.headers = CaseInsensitiveDict(answer.headers)
        response.url = url
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response._content = _decoded(answer.body, response.headers)
        if answer.cut:
            response.cut_at = cap  # type: ignore[attr-defined]
        return response

    def close(self) -> None:
        """Close this thread's connections (others close when their threads end)."""
        for conn in self._connections().values():
            conn.close()
        self._connections().clear()

    # ------------------------------------------------------------- internals

    def _connections(self) -> dict[tuple[Any, ...], Kept]:
        found: dict[tuple[Any, ...], Kept] | None = getattr(self._local, "connections", None)
        if found is None:
            found = self._local.connections = {}
        return found

    def _connection(self, parts: Any, proxy: str | None, verify: str | bool) -> Kept:
        # By netloc as written: the same host and port spelled two ways gets a
        # second connection, and no request pays for parsing the netloc again.
        key = (parts.scheme, parts.netloc, proxy, verify)
        connections = self._connections()
        conn = connections.get(key)
        if conn is not None and _dropped(conn):
            conn.close()
            conn = None
        if conn is None:
            conn = connections[key] = self._open(parts, proxy, verify)
        return conn

    def _open(self, parts: Any, proxy: str | None, verify: str | bool) -> Kept:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if proxy is None:
            host, at = parts.hostname, port
        else:
            via = urlsplit(proxy)
            host, at = via.hostname, via.port or 80
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, at, timeout=self._timeout, context=self._context(verify), blocksize=BLOCK
            )
            if proxy is not None:
                conn.set_tunnel(parts.hostname, port, headers=_proxy_auth(proxy))
        else:
            conn = http.client.HTTPConnection(host, at, timeout=self._timeout, blocksize=BLOCK)
        return Kept(conn)

    def _context(self, verify: str | bool) -> ssl.SSLContext:
        with self._lock:
            context = self._contexts.get(verify)
            if context is None:
                if verify is False:
                    context = ssl._create_unverified_context()  # noqa: S323 -- asked for
                elif verify is True:
                    context = ssl.create_default_context(cafile=certifi.where())
                else:
                    context = ssl.create_default_context(
                        capath=verify if _is_dir(verify) else None,
                        cafile=None if _is_dir(verify) else verify,
                    )
                self._contexts[verify] = context
        return context

    def _drop(self, conn: Kept) -> None:
        conn.close()
        connections = self._connections()
        for key, kept in list(connections.items()):
            if kept is conn:
                del connections[key]


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _target(parts: Any) -> str:
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _proxy_auth(proxy: str | None) -> dict[str, str]:
    if not proxy:
        return {}
    via = urlsplit(proxy)
    if via.username is None:
        return {}
    token = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(token).decode()}


def _dropped(conn: Kept) -> bool:
    """A kept-alive connection whose socket reads as ready: the server closed it (or spoke)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _decoded(content: bytes, headers: CaseInsensitiveDict[str]) -> bytes:
    encoding = (headers.get("Content-Encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return content
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(content, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompress(content)
    except zlib.error as err:
        raise requests.exceptions.ContentDecodingError(
            f"the answer says it is {encoding}-encoded and is not: {err}"
        ) from err
    return content


def _as_requests_error(err: BaseException) -> BaseException:
    """http.client's and the socket's errors, as the requests path raises them."""
    if isinstance(err, requests.RequestException):
        return err
    if isinstance(err, ssl.SSLError):
        return requests.exceptions.SSLError(err)
    if isinstance(err, (socket.timeout, TimeoutError)):
        return requests.exceptions.ReadTimeout(err)
    if isinstance(err, http.client.IncompleteRead):
        return requests.exceptions.ChunkedEncodingError(err)
    if isinstance(err, (OSError, http.client.HTTPException)):
        return requests.ConnectionError(err)
    return err
