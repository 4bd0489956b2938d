"""The emulator's checks, called with plain HTTP as any client would."""

from __future__ import annotations

import base64
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from support import client_for, sha256

from flowflexd.emulator import UPLOAD_URL_LIFETIME, Emulator


def auth(emulator: Emulator, secret: str | None = None) -> dict[str, str]:
    token = base64.b64encode(f"{emulator.api_key}:{secret or emulator.api_secret}".encode())
    return {"Authorization": f"Basic {token.decode()}"}


def upload_url(emulator: Emulator, **body: Any) -> dict[str, Any]:
    body = {"filename": "a.pdf", "mime": "application/pdf", **body}
    res = requests.post(
        f"{emulator.url}/v1/assets/upload-url", json=body, headers=auth(emulator), timeout=10
    )
    assert res.status_code == 200, res.text
    return dict(res.json())


def put(url: str, data: bytes, **headers: str) -> requests.Response:
    return requests.put(
        url, data=data, headers={"Content-Type": "application/pdf", **headers}, timeout=10
    )


def fire(
    emulator: Emulator, payload: Any, *, key: str = "k1", event: str = "e"
) -> requests.Response:
    return requests.post(
        f"{emulator.url}/v1/events/{emulator.integration_code}",
        json=payload,
        headers={**auth(emulator), "x-event": event, "x-idempotency-key": key},
        timeout=10,
    )


def test_api_calls_need_basic_auth(emulator: Emulator) -> None:
    res = requests.post(f"{emulator.url}/v1/assets/upload-url", json={}, timeout=10)

    assert res.status_code == 401
    assert res.json()["code"] == "UNAUTHORIZED"


def test_wrong_secret_is_refused(emulator: Emulator) -> None:
    res = requests.post(
        f"{emulator.url}/v1/assets/upload-url",
        json={"filename": "a.pdf", "mime": "application/pdf"},
        headers=auth(emulator, secret="nope-nope"),
        timeout=10,
    )

    assert res.status_code == 401


@pytest.mark.parametrize("mime", ["application/zip", "text/html", "image/gif"])
def test_types_outside_the_list_are_mime_not_allowed(emulator: Emulator, mime: str) -> None:
    res = requests.post(
        f"{emulator.url}/v1/assets/upload-url",
        json={"filename": "a.bin", "mime": mime},
        headers=auth(emulator),
        timeout=10,
    )

    assert res.status_code == 400
    assert res.json()["code"] == "MIME_NOT_ALLOWED"


def test_a_declared_size_over_25_mb_is_refused(emulator: Emulator) -> None:
    res = requests.post(
        f"{emulator.url}/v1/assets/upload-url",
        json={"filename": "a.pdf", "mime": "application/pdf", "size": 26_214_401},
        headers=auth(emulator),
        timeout=10,
    )

    assert res.status_code == 413


def test_a_body_over_25_mb_is_refused_by_storage(emulator: Emulator) -> None:
    info = upload_url(emulator)

    res = put(info["uploadUrl"], b"x" * 26_214_401)

    assert res.status_code == 413
    assert emulator.stats()["uploads"] == 0


def test_upload_then_event_stores_the_bytes(emulator: Emulator) -> None:
    info = upload_url(emulator, size=5)
    assert put(info["uploadUrl"], b"%PDF!").status_code == 200

    res = fire(emulator, {"assetId": info["assetId"]})

    assert res.status_code == 200
    assert emulator.data_dir.joinpath("assets", f"{info['assetId']}.bin").read_bytes() == b"%PDF!"
    [event] = emulator.events()
    assert event["assets"][info["assetId"]]["sha256"] == sha256(b"%PDF!")


def test_the_upload_url_is_served_by_the_emulator_itself(emulator: Emulator) -> None:
    info = upload_url(emulator)

    assert info["uploadUrl"].startswith(f"{emulator.url}/_storage/{info['assetId']}?token=")
    assert info["token"] in info["uploadUrl"]


def test_a_put_with_an_authorization_header_is_refused(emulator: Emulator) -> None:
    info = upload_url(emulator)

    res = put(info["uploadUrl"], b"%PDF", **auth(emulator))

    assert res.status_code == 400
    assert res.json()["code"] == "AUTH_NOT_ALLOWED"


def test_a_put_with_another_content_type_is_refused(emulator: Emulator) -> None:
    info = upload_url(emulator)

    res = requests.put(
        info["uploadUrl"], data=b"%PDF", headers={"Content-Type": "image/png"}, timeout=10
    )

    assert res.status_code == 403
    assert res.json()["code"] == "CONTENT_TYPE_MISMATCH"


def test_a_put_with_a_wrong_token_is_refused(emulator: Emulator) -> None:
    info = upload_url(emulator)

    res = put(info["uploadUrl"].replace(info["token"], "forged"), b"%PDF")

    assert res.status_code == 403


def test_a_put_of_another_size_than_declared_is_refused(emulator: Emulator) -> None:
    info = upload_url(emulator, size=10)

    res = put(info["uploadUrl"], b"%PDF")

    assert res.status_code == 400
    assert res.json()["code"] == "SIZE_MISMATCH"


def test_the_upload_token_expires_after_two_hours(emulator: Emulator) -> None:
    info = upload_url(emulator)
    emulator.clock.advance(UPLOAD_URL_LIFETIME + 1)

    res = put(info["uploadUrl"], b"%PDF")

    assert res.status_code == 403
    assert res.json()["code"] == "URL_EXPIRED"


def test_the_upload_token_still_works_just_under_two_hours(emulator: Emulator) -> None:
    info = upload_url(emulator)
    emulator.clock.advance(UPLOAD_URL_LIFETIME - 60)

    assert put(info["uploadUrl"], b"%PDF").status_code == 200


def test_an_event_naming_an_asset_never_uploaded_is_asset_file_missing(emulator: Emulator) -> None:
    info = upload_url(emulator)  # URL asked for, bytes never sent

    res = fire(emulator, {"doc": {"id": info["assetId"]}})

    assert res.status_code == 422
    assert res.json()["code"] == "ASSET_FILE_MISSING"
    assert emulator.events() == []


def test_an_expired_asset_is_deleted_with_its_record(emulator: Emulator) -> None:
    info = upload_url(emulator)
    put(info["uploadUrl"], b"%PDF")
    emulator.clock.advance(48 * 3600 + 1)

    assert fire(emulator, {"a": info["assetId"]}).status_code == 422
    assert not emulator.data_dir.joinpath("assets", f"{info['assetId']}.bin").exists()


def test_the_same_key_answers_the_first_answer_and_fires_nothing_new(emulator: Emulator) -> None:
    first = fire(emulator, {"n": 1}, key="same")
    again = fire(emulator, {"n": 2}, key="same")

    assert again.json() == first.json()
    assert [e["payload"] for e in emulator.events()] == [{"n": 1}]


def test_a_failed_event_does_not_burn_its_key(emulator: Emulator) -> None:
    info = upload_url(emulator)
    assert fire(emulator, {"a": info["assetId"]}, key="retry-me").status_code == 422
    put(info["uploadUrl"], b"%PDF")

    assert fire(emulator, {"a": info["assetId"]}, key="retry-me").status_code == 200
    assert len(emulator.events()) == 1


def test_unknown_integration_code_is_a_404(emulator: Emulator) -> None:
    res = requests.post(
        f"{emulator.url}/v1/events/ic_other",
        json={},
        headers={**auth(emulator), "x-event": "e"},
        timeout=10,
    )

    assert res.status_code == 404
    assert res.json()["code"] == "INTEGRATION_NOT_FOUND"


def test_a_payload_must_be_a_json_object(emulator: Emulator) -> None:
    assert fire(emulator, [1, 2]).status_code == 400


def test_events_are_listed_as_json(emulator: Emulator) -> None:
    fire(emulator, {"n": 1}, key="a", event="first")
    fire(emulator, {"n": 2}, key="b", event="second")

    listed = requests.get(f"{emulator.url}/_emulator/events", timeout=10).json()
    later = requests.get(f"{emulator.url}/_emulator/events?since=1", timeout=10).json()

    assert [(e["event"], e["idempotency_key"], e["payload"]) for e in listed] == [
        ("first", "a", {"n": 1}),
        ("second", "b", {"n": 2}),
    ]
    assert [e["event"] for e in later] == ["second"]


def test_the_clock_can_be_advanced_over_http(emulator: Emulator) -> None:
    info = upload_url(emulator)
    requests.post(
        f"{emulator.url}/_emulator/clock",
        json={"advance_seconds": UPLOAD_URL_LIFETIME + 1},
        timeout=10,
    )

    assert put(info["uploadUrl"], b"%PDF").status_code == 403


def test_connections_are_kept_alive(emulator: Emulator) -> None:
    with requests.Session() as session:
        for _ in range(5):
            session.get(f"{emulator.url}/_emulator/health", timeout=10)

    assert emulator.stats()["connections"] == 1


def test_latency_delays_every_answer(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path / "e", latency_ms=200) as emulator:
        started = time.monotonic()
        requests.get(f"{emulator.url}/_emulator/health", timeout=10)

        assert time.monotonic() - started >= 0.2


def test_latency_is_concurrent_not_serial(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path / "e", latency_ms=300) as emulator:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda _: requests.get(f"{emulator.url}/_emulator/health", timeout=10), range(8)
                )
            )

        assert time.monotonic() - started < 8 * 0.3 / 2


def test_a_fail_rate_answers_that_share_with_503_and_some_429(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path / "e", fail_rate=0.3, seed=3) as emulator:
        statuses = [fire(emulator, {"i": i}, key=f"k{i}").status_code for i in range(400)]
        retry_after = [
            fire(emulator, {}, key=f"r{i}").headers.get("Retry-After") for i in range(200)
        ]

    failed = [s for s in statuses if s != 200]
    assert 0.2 < len(failed) / len(statuses) < 0.4
    assert set(failed) == {503, 429}
    assert "1" in retry_after


def test_state_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "e"
    with Emulator(data_dir=data_dir) as emulator:
        first = fire(emulator, {"n": 1}, key="persist").json()
        port = emulator.port
    with Emulator(data_dir=data_dir, port=port) as emulator:
        again = fire(emulator, {"n": 1}, key="persist").json()
        events = emulator.events()

    assert again == first
    assert len(events) == 1


def test_our_client_round_trips_through_a_restarted_emulator(tmp_path: Path) -> None:
    data_dir = tmp_path / "e"
    with Emulator(data_dir=data_dir) as emulator:
        client = client_for(emulator)
        client.send_event("x", payload={}, idempotency_key="k")
        port = emulator.port
    with Emulator(data_dir=data_dir, port=port) as emulator:
        client.send_event("x", payload={}, idempotency_key="k")
        assert len(emulator.events()) == 1


def test_events_file_is_json_lines(emulator: Emulator) -> None:
    fire(emulator, {"n": 1})

    lines = emulator.data_dir.joinpath("events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"]["payload"] for line in lines] == [{"n": 1}]


def raw_exchange(emulator: Emulator, request: bytes) -> bytes:
    """Bytes in, the answer's bytes out, over one connection the emulator ends."""
    host, port = emulator.url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_request_headers_are_read_whatever_their_case(emulator: Emulator) -> None:
    token = auth(emulator)["Authorization"]
    body = b'{"filename": "a.pdf", "mime": "application/pdf"}'
    answer = raw_exchange(
        emulator,
        b"POST /v1/assets/upload-url HTTP/1.1\r\nHost: x\r\nauthorization: "
        + token.encode()
        + b"\r\nCONTENT-LENGTH: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body,
    )

    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b'"assetId"' in answer


def test_expect_100_continue_is_answered_before_the_body(emulator: Emulator) -> None:
    host, port = emulator.url.rsplit("//", 1)[1].rsplit(":", 1)
    body = b'{"filename": "a.pdf", "mime": "application/pdf"}'
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/assets/upload-url HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + auth(emulator)["Authorization"].encode()
            + b"\r\nExpect: 100-continue\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        interim = b""
        while b"\r\n\r\n" not in interim:  # the interim answer, however the bytes arrive
            chunk = sock.recv(1)
            assert chunk, "the connection closed before the interim answer"
            interim += chunk
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk

    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
    assert b"HTTP/1.1 200 " in rest


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /_emulator/events HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /_emulator/events HTTP/1.1\r\n" + b"X-H: v\r\n" * 101 + b"\r\n", b"431"),
        (b"GET /_emulator/events HTTP/1.0\r\n\r\n", b"200"),  # the standard parser's path
    ],
    ids=["a line without a colon", "101 headers", "HTTP/1.0"],
)
def test_unusual_requests_get_a_clear_status(
    emulator: Emulator, request_bytes: bytes, status: bytes
) -> None:
    answer = raw_exchange(emulator, request_bytes)

    assert answer.split(b" ", 2)[1] == status, answer[:200]
