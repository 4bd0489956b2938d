"""The HTTP/1.1 framing the client's own path reads and writes (wire.py), on bytes."""

from __future__ import annotations

import io

import pytest

from flowflexd.client import wire


def answer(raw: bytes, *, method: str = "POST", cap: int = 1024) -> wire.Answer:
    return wire.read_answer(io.BytesIO(raw), method, cap)


def test_a_request_head_is_the_request_line_host_and_headers() -> None:
    head = wire.request_head("POST", "/v1/x?a=1", "api.example:8443", {"X-A": "1"})

    assert head == b"POST /v1/x?a=1 HTTP/1.1\r\nHost: api.example:8443\r\nX-A: 1\r\n\r\n"


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "1\r\nX-Injected: 2"}, {"X-A": "1\n"}, {"X-A": "\x00"}, {"Bad Name": "1"}, {"": "1"}],
)
def test_a_header_that_would_split_the_head_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        wire.request_head("GET", "/", "h", headers)


def test_the_host_header_carries_no_credentials() -> None:
    assert wire.host_header("user:pass@proxy.example:3128") == "proxy.example:3128"


def test_a_body_over_the_cap_is_cut_and_the_connection_given_up() -> None:
    sized = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, cap=10)
    chunked = answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
        cap=10,
    )

    assert (sized.body, sized.cut, sized.will_close) == (b"x" * 10, True, True)
    assert (chunked.body, chunked.cut, chunked.will_close) == (b"1234567812", True, True)


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", "POST"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD"),
    ],
)
def test_answers_without_a_body_read_none(raw: bytes, method: str) -> None:
    read = answer(raw, method=method)

    assert (read.body, read.cut, read.will_close) == (b"", False, False)


def test_connection_close_and_http_1_0_end_the_connection() -> None:
    closing = answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    old = answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    kept = answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")

    assert closing.will_close and old.will_close and not kept.will_close


def test_differing_content_lengths_are_refused() -> None:
    with pytest.raises(Exception, match="bad Content-Length"):
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok")


def test_headers_keep_their_order_and_repeats() -> None:
    read = answer(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nA: 3\r\nContent-Length: 0\r\n\r\n")

    assert read.headers == [("A", "1"), ("B", "2"), ("A", "3"), ("Content-Length", "0")]
