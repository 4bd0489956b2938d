"""The client's own HTTP path over real TLS and through a real forward proxy on loopback."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import client_for, need, wait_until

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Debian's tinyproxy on loopback, logging each connection it makes."""
    need("tinyproxy")
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(
        f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log}"\nLogLevel Connect\n'
        "Allow 127.0.0.1\nMaxClients 20\n"  # no ConnectPort line: CONNECT to any port
    )
    proc = subprocess.Popen(
        ["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: listening(port))
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
