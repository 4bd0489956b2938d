"""The daemon's HTTP path for its three calls: http.client, one kept-alive connection per thread.

requests and urllib3 spend more CPU per call than the calls themselves
(merging settings, hooks, pools, header objects): a file's three calls cost
about 2.3 ms over a requests session and 0.5 ms over http.client on the same
machine. The client's own session sends through here; a session a caller
passes in keeps requests, whole. What stays the same:

- timeouts per connect and per read, and the overall deadline (the deadline
  watcher cuts this connection's socket);
- TLS verified against certifi's bundle, or ``REQUESTS_CA_BUNDLE`` /
  ``CURL_CA_BUNDLE`` when set;
- proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``),
  through an http:// proxy (a CONNECT tunnel for https); any other proxy
  scheme goes through requests, as before;
- redirects are never followed; answers are read up to a cap, past which the
  connection is dropped;
- the answer comes back as a ``requests.Response``, so the rest of the
  client does not know which path carried it.

A kept-alive connection the server has closed meanwhile is noticed before it
is used (its socket reads as ready), as urllib3 does.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import socket
import ssl
import threading
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import certifi
import requests
from requests.structures import CaseInsensitiveDict

BLOCK = 64 * 1024  # bytes per send of a streamed upload


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
        try:
            conn.request(method, target, body=body, headers=headers)
            answer = conn.getresponse()
            content, cut = _read(answer, cap)
        except BaseException as err:
            self._drop(conn)
            raise _as_requests_error(err) from err
        if cut or answer.will_close:
            self._drop(conn)
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response.headers = CaseInsensitiveDict(answer.getheaders())
        response.url = url
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response._content = _decoded(content, response.headers)
        response._content_consumed = True  # type: ignore[attr-defined]
        if cut:
            response.cut_at = cap  # type: ignore[attr-defined]
        return response

    def close(self) -> None:
        """Close this thread's connections (others close when their threads end)."""
        for conn in self._connections().values():
            conn.close()
        self._connections().clear()

    # ------------------------------------------------------------- internals

    def _connections(self) -> dict[tuple[Any, ...], http.client.HTTPConnection]:
        found: dict[tuple[Any, ...], http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None
        )
        if found is None:
            found = self._local.connections = {}
        return found

    def _connection(
        self, parts: Any, proxy: str | None, verify: str | bool
    ) -> http.client.HTTPConnection:
        key = (parts.scheme, parts.hostname, parts.port, proxy, verify)
        connections = self._connections()
        conn = connections.get(key)
        if conn is not None and _dropped(conn):
            conn.close()
            conn = None
        if conn is None:
            conn = connections[key] = self._open(parts, proxy, verify)
        return conn

    def _open(
        self, parts: Any, proxy: str | None, verify: str | bool
    ) -> http.client.HTTPConnection:
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
        return conn

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

    def _drop(self, conn: http.client.HTTPConnection) -> None:
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


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """A kept-alive connection whose socket reads as ready: the server closed it (or spoke)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _read(answer: http.client.HTTPResponse, cap: int) -> tuple[bytes, bool]:
    """The answer's body, at most ``cap`` bytes; True when there was more (not read)."""
    data = answer.read(cap + 1) if answer.length is None or answer.length > cap else answer.read()
    if len(data) > cap:
        return data[:cap], True
    return data, False


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
