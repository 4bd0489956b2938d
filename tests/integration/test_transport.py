"""The client's own HTTP path over real TLS and through a real forward proxy on loopback."""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RawServer, client_for, need, start_listener

from flowflexd.client import FlowFlex
from flowflexd.emulator import Emulator
from flowflexd.errors import FlowFlexError

PDF = b"%PDF-1.4 transport\n%%EOF\n"


def certificate(where: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made now with openssl."""
    need("openssl")
    cert, key = where / f"{name}.pem", where / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_emulator(tmp_path: Path) -> Iterator[tuple[Emulator, Path]]:
    cert, key = certificate(tmp_path)
    with Emulator(data_dir=tmp_path / "emulator-data", tls=(cert, key)) as emulator:
        yield emulator, cert


def send_one(client: FlowFlex, tmp_path: Path) -> dict[str, object]:
    """One file and its event, as the SDK sends them: FlowFlex's answer."""
    path = tmp_path / "doc.pdf"
    path.write_bytes(PDF)
    answer = client.send_event("doc.sent", payload={"assetId": client.file(path)}).response
    assert isinstance(answer, dict)
    return answer


def test_tls_verified_against_the_ca_bundle_given(
    tls_emulator: tuple[Emulator, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, cert = tls_emulator
    assert emulator.url.startswith("https://")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with client_for(emulator) as client:
        answer = send_one(client, tmp_path)

    assert answer["ok"] is True
    [event] = emulator.events()
    [asset] = event["assets"].values()
    assert asset["size"] == len(PDF)  # the upload went over TLS too


def test_a_certificate_no_bundle_vouches_for_is_refused_and_nothing_is_sent(
    tls_emulator: tuple[Emulator, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, _ = tls_emulator
    other, _ = certificate(tmp_path, "other")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    with client_for(emulator, max_attempts=1) as client, pytest.raises(FlowFlexError) as caught:
        send_one(client, tmp_path)

    assert "TLS failure" in caught.value.message
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    assert emulator.api_secret not in caught.value.message
    assert emulator.events() == []


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Debian's tinyproxy on loopback, logging each connection it makes."""
    need("tinyproxy")
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"

    def launch(port: int) -> subprocess.Popen[bytes]:
        conf.write_text(
            f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log}"\nLogLevel Connect\n'
            "Allow 127.0.0.1\nMaxClients 20\n"  # no ConnectPort line: CONNECT to any port
        )
        return subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    proc, port = start_listener(launch, "tinyproxy")
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_https_through_a_forward_proxy_from_the_environment(
    tls_emulator: tuple[Emulator, Path],
    proxy: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator, cert = tls_emulator
    proxy_url, log = proxy
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "")
    with client_for(emulator) as client:
        answer = send_one(client, tmp_path)

    assert answer["ok"] is True
    port = emulator.url.rsplit(":", 1)[1]
    assert f"CONNECT 127.0.0.1:{port}" in log.read_text()  # the tunnel carried it


def test_no_proxy_goes_around_the_proxy(
    emulator: Emulator, proxy: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_url, log = proxy
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with client_for(emulator) as client:
        send_one(client, tmp_path)

    assert "127.0.0.1:" + emulator.url.rsplit(":", 1)[1] not in log.read_text()


def test_plain_http_through_a_proxy(
    emulator: Emulator, proxy: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_url, log = proxy
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "")
    with client_for(emulator) as client:
        send_one(client, tmp_path)

    assert f"{emulator.url}/v1/events/" in log.read_text()


# ------------------------------------------------------- answers as they come on the wire

OK_JSON = b'{"ok": true, "n": 1}'
GZIPPED = gzip.compress(OK_JSON)


ANSWERS = {
    "chunked, with an extension and trailers": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\n" + OK_JSON[:5] + b"\r\n" + f"{len(OK_JSON) - 5:x}".encode() + b"\r\n"
        + OK_JSON[5:] + b"\r\n0\r\nX-Trailer: yes\r\n\r\n"
    ),
    "gzip in chunks": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{len(GZIPPED):x}".encode() + b"\r\n" + GZIPPED + b"\r\n0\r\n\r\n"
    ),
    "after a 100 Continue": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(OK_JSON)).encode() + b"\r\n\r\n" + OK_JSON
    ),
    "a folded header line": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Long: one\r\n two\r\n"
        b"Content-Length: " + str(len(OK_JSON)).encode() + b"\r\n\r\n" + OK_JSON
    ),
    "HTTP/1.0, ended by the close": (
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_JSON
    ),
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(ANSWERS))
def test_each_way_an_answer_can_be_framed_is_read(shape: str) -> None:
    server = RawServer("script", ANSWERS[shape])
    try:
        with server.client() as client:
            first = client.fire_event("x", {}, "key-1")
            second = client.fire_event("x", {}, "key-2")
    finally:
        server.close()

    assert first == second == {"ok": True, "n": 1}
    kept_alive = not ANSWERS[shape].startswith(b"HTTP/1.0")
    assert server.accepted == (1 if kept_alive else 2)  # one connection, unless it was closed


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 101 + b"\r\n", "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 70_000 + b"\r\n\r\n", "LineTooLong"),
        (b"ICY 200 OK\r\n\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\nshort", "Incomplete"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "Incomplete"),
    ],
    ids=["101 headers", "a 70 kB header line", "not HTTP", "a short body", "a bad chunk"],
)
def test_a_malformed_answer_is_a_retryable_network_error(answer: bytes, said: str) -> None:
    server = RawServer("script", answer)
    try:
        with server.client() as client, pytest.raises(FlowFlexError) as caught:
            client.fire_event("x", {}, "key-1")
    finally:
        server.close()

    assert caught.value.retryable
    assert server.requests == 2  # asked again once, on a new connection
    assert "Network error" in caught.value.message or "failed" in caught.value.message
    assert said in repr(caught.value.__cause__.__cause__)  # type: ignore[union-attr]


def test_a_header_that_would_split_the_request_is_never_sent(emulator: Emulator) -> None:
    with client_for(emulator) as client, pytest.raises(FlowFlexError) as caught:
        client.fire_event("x", {}, "key\r\nX-Injected: 1")

    assert not caught.value.retryable
    assert "/v1/events/ic_emulator" not in emulator.stats()["requests_by_path"]
