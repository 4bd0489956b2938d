"""HTTP/1.1 on a kept-alive connection: a request's bytes out, an answer's parts in.

http.client parses every answer's header block with the email package,
which cost more CPU than everything else of a call; the three calls of a
file need the status, a dozen header lines and a body framed by
Content-Length or chunks. This reads exactly that, with http.client's
limits (line length, header count) and its exception types, so the
transport maps errors as before.
"""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

MAX_LINE = 65536  # http.client's _MAXLINE
MAX_HEADERS = 100  # http.client's _MAXHEADERS
INLINE_BODY = 64 * 1024  # a body up to this size goes out in the same send as its head
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")


@dataclass
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    cut: bool  # more than the cap was there (not read); the connection must go
    will_close: bool  # the server ends the connection after this answer


def request_head(method: str, target: str, host: str, headers: dict[str, str]) -> bytes:
    """The request line and header block; ValueError for a name or value that would split it."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if not _TOKEN.match(name) or _UNSAFE_VALUE.search(value):
            raise ValueError(f"header {name[:40]!r} has characters a header cannot carry")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def host_header(netloc: str) -> str:
    """The Host header of a URL: its netloc without credentials."""
    return netloc.rpartition("@")[2]


def read_answer(fp: BinaryIO, method: str, cap: int) -> Answer:
    """Read one answer (interim 1xx answers are passed over); at most ``cap`` body bytes."""
    while True:
        version, status, reason = _status_line(fp)
        headers = header_lines(fp)
        if not 100 <= status < 200 or status == 101:
            break
    fields = {name.lower(): value for name, value in headers}
    connection = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Answer(status, reason, headers, b"", False, will_close)
    coding = fields.get("transfer-encoding", "").lower()
    if coding:
        if coding.rsplit(",", 1)[-1].strip() != "chunked":
            body, cut = _until_closed(fp, cap)
            return Answer(status, reason, headers, body, cut, True)
        body, cut = _chunks(fp, cap)
        return Answer(status, reason, headers, body, cut, will_close or cut)
    length = fields.get("content-length")
    if length is None:
        body, cut = _until_closed(fp, cap)
        return Answer(status, reason, headers, body, cut, True)
    size = _length(length)
    if size > cap:
        return Answer(status, reason, headers, _exactly(fp, cap), True, True)
    return Answer(status, reason, headers, _exactly(fp, size), False, will_close)


def _line(fp: BinaryIO) -> bytes:
    line = fp.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong("header line")
    return line


def _status_line(fp: BinaryIO) -> tuple[str, int, str]:
    line = _line(fp)
    if not line:
        raise http.client.RemoteDisconnected("the server closed the connection without an answer")
    parts = line.decode("latin-1").rstrip("\r\n").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise http.client.BadStatusLine(line.decode("latin-1", "replace")[:80])
    status = int(parts[1])
    if not 100 <= status <= 999:
        raise http.client.BadStatusLine(line.decode("latin-1", "replace")[:80])
    return parts[0], status, parts[2] if len(parts) > 2 else ""


def header_lines(fp: BinaryIO) -> list[tuple[str, str]]:
    """The header block's (name, value) pairs in order, up to the blank line."""
    headers: list[tuple[str, str]] = []
    while True:
        line = _line(fp)
        if line in (b"\r\n", b"\n", b""):
            return headers
        if line[:1] in (b" ", b"\t") and headers:  # an obsolete folded continuation
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.decode('latin-1').strip()}")
            continue
        if len(headers) >= MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise http.client.HTTPException(f"a header line without a colon: {name.strip()[:80]!r}")
        headers.append((name.strip(), value.strip()))


def _length(value: str) -> int:
    sizes = {v.strip() for v in value.split(",")}  # a repeated, equal length is one length
    if len(sizes) != 1 or not next(iter(sizes)).isdigit():
        raise http.client.HTTPException(f"a bad Content-Length: {value[:40]!r}")
    return int(sizes.pop())


def _exactly(fp: BinaryIO, size: int) -> bytes:
    data = fp.read(size)
    if len(data) < size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data


def _until_closed(fp: BinaryIO, cap: int) -> tuple[bytes, bool]:
    data = fp.read(cap + 1)
    return (data[:cap], True) if len(data) > cap else (data, False)


def _chunks(fp: BinaryIO, cap: int) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    total = 0
    while True:
        line = _line(fp)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise http.client.IncompleteRead(b"".join(parts)) from None
        if size == 0:
            header_lines(fp)  # trailers, not used
            return b"".join(parts), False
        if total + size > cap:
            parts.append(_exactly(fp, cap - total))
            return b"".join(parts), True
        parts.append(_exactly(fp, size))
        total += size
        if _line(fp) not in (b"\r\n", b"\n"):
            raise http.client.IncompleteRead(b"".join(parts))


def body_blocks(body: Any, block: int) -> Any:
    """A streamed body's blocks (anything with ``read``), or the bytes as one block."""
    if isinstance(body, bytes | bytearray | memoryview):
        yield body
        return
    while True:
        data = body.read(block)
        if not data:
            return
        yield data
