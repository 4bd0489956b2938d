"""What our client does better than the SDK, each against a real server on loopback."""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import flowflex
import pytest
import requests
from support import RawServer, client_for, echo_auth_server, redirect_server, sha256_file

from flowflexd.client import FlowFlex, FlowFlexError, FlowFlexUploadError
from flowflexd.emulator import Emulator

MiB = 1024 * 1024


def write_random(path: Path, size: int) -> Path:
    block = os.urandom(MiB)
    with path.open("wb") as fh:
        for offset in range(0, size, MiB):
            fh.write(block[: min(MiB, size - offset)])
    return path


def peak_allocated_during(action: object) -> int:
    tracemalloc.start()
    try:
        action()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ streaming


def test_upload_streams_so_memory_does_not_grow_with_file_size(
    client: FlowFlex, emulator: Emulator, tmp_path: Path
) -> None:
    big = write_random(tmp_path / "big.pdf", 20 * MiB)

    peak = peak_allocated_during(
        lambda: client.send_event("big.sent", payload={"f": client.file(big)})
    )

    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB while uploading 20 MiB"
    [event] = emulator.events()
    assert next(iter(event["assets"].values()))["sha256"] == sha256_file(big)


def test_the_memory_probe_sees_a_whole_file_read(emulator: Emulator, tmp_path: Path) -> None:
    """The SDK reads the file whole; the probe above must be able to see that."""
    big = write_random(tmp_path / "big.pdf", 20 * MiB)
    sdk = flowflex.FlowFlex(
        api_key=emulator.api_key,
        api_secret=emulator.api_secret,
        integration_code=emulator.integration_code,
        base_url=emulator.url,
    )

    peak = peak_allocated_during(lambda: sdk.send_event("big.sent", payload={"f": sdk.file(big)}))

    assert peak > 20 * MiB


def test_a_pipe_is_streamed_through_a_spool(
    client: FlowFlex, emulator: Emulator, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as out:
            out.write(data)

    feeder = threading.Thread(target=feed)
    feeder.start()
    with os.fdopen(read_end, "rb") as stream:
        result = client.send_event(
            "piped", payload={"f": client.file(stream, filename="piped.pdf")}
        )
    feeder.join()

    [event] = emulator.events()
    stored = event["assets"][result.uploaded_assets["f"]]
    assert stored["size"] == len(data)


def test_the_storage_put_uses_the_pooled_session(
    client: FlowFlex, emulator: Emulator, tmp_path: Path
) -> None:
    pdf = tmp_path / "one.pdf"
    pdf.write_bytes(b"%PDF one")

    client.send_event("one", payload={"f": client.file(pdf)})

    # upload-url, PUT and event all rode one kept-alive connection.
    assert emulator.stats()["connections"] == 1
    assert emulator.stats()["requests_by_path"]["/_storage"] == 1


def test_the_sdk_opens_a_second_connection_for_the_put(emulator: Emulator, tmp_path: Path) -> None:
    pdf = tmp_path / "one.pdf"
    pdf.write_bytes(b"%PDF one")
    sdk = flowflex.FlowFlex(
        api_key=emulator.api_key,
        api_secret=emulator.api_secret,
        integration_code=emulator.integration_code,
        base_url=emulator.url,
    )

    sdk.send_event("one", payload={"f": sdk.file(pdf)})

    assert emulator.stats()["connections"] >= 2


# -------------------------------------------------------- refused before sending


@pytest.fixture
def insecure_emulator(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(data_dir=tmp_path / "e", upload_base_url="http://storage.example.test") as emu:
        yield emu


def test_an_upload_url_that_is_not_https_is_refused(
    insecure_emulator: Emulator, tmp_path: Path
) -> None:
    pdf = tmp_path / "x.pdf"
    pdf.write_bytes(b"%PDF")
    client = client_for(insecure_emulator)

    with pytest.raises(FlowFlexUploadError, match="non-https") as caught:
        client.send_event("x", payload={"f": client.file(pdf)})

    assert caught.value.code == "INSECURE_UPLOAD_URL"
    assert "token" not in caught.value.message
    assert "/_storage" not in insecure_emulator.stats()["requests_by_path"]


def test_a_disallowed_type_fails_before_any_request(
    client: FlowFlex, emulator: Emulator, tmp_path: Path
) -> None:
    exe = tmp_path / "setup.exe"
    exe.write_bytes(b"MZ")

    with pytest.raises(FlowFlexUploadError) as caught:
        client.send_event("x", payload={"f": client.file(exe, mime="application/x-msdownload")})

    assert "setup.exe" in caught.value.message
    assert "application/x-msdownload" in caught.value.message
    assert "PDF" in caught.value.message  # says what would be accepted
    assert emulator.stats()["requests_by_path"] == {}


def test_an_unknown_extension_fails_before_any_request(
    client: FlowFlex, emulator: Emulator, tmp_path: Path
) -> None:
    odd = tmp_path / "notes.xyz"
    odd.write_bytes(b"?")

    with pytest.raises(FlowFlexUploadError, match=r'"notes\.xyz"'):
        client.send_event("x", payload={"f": client.file(odd)})

    assert emulator.stats()["requests_by_path"] == {}


def test_an_oversized_file_fails_before_any_request_even_beside_a_good_one(
    client: FlowFlex, emulator: Emulator, tmp_path: Path
) -> None:
    good = tmp_path / "good.pdf"
    good.write_bytes(b"%PDF good")
    huge = tmp_path / "huge.pdf"
    with huge.open("wb") as fh:  # sparse: no need to write 25 MB
        fh.truncate(26_214_401)

    with pytest.raises(FlowFlexUploadError) as caught:
        client.send_event("x", payload={"a": client.file(good), "b": client.file(huge)})

    assert caught.value.message == '"huge.pdf" is 26,214,401 bytes, over the 26,214,400-byte limit'
    assert caught.value.code == "FILE_TOO_LARGE"
    assert emulator.stats()["requests_by_path"] == {}


def test_the_size_cap_is_configurable(emulator: Emulator, tmp_path: Path) -> None:
    small_cap = client_for(emulator, max_file_bytes=10)
    pdf = tmp_path / "eleven.pdf"
    pdf.write_bytes(b"x" * 11)

    with pytest.raises(FlowFlexUploadError, match="11 bytes, over the 10-byte limit"):
        small_cap.upload_file(small_cap.file(pdf))


# --------------------------------------------------------------------- retries


def test_a_send_under_a_30_percent_fail_rate_fires_exactly_once_per_call(tmp_path: Path) -> None:
    # Retry-After: 0 keeps this fast; honouring a real wait is tested on its own.
    with Emulator(
        data_dir=tmp_path / "e", fail_rate=0.3, seed=11, retry_after_seconds=0
    ) as emulator:
        client = client_for(emulator, max_attempts=20)
        pdf = tmp_path / "doc.pdf"
        pdf.write_bytes(b"%PDF chaos")
        results = [
            client.send_event("chaos", payload={"i": i, "f": client.file(pdf)}) for i in range(30)
        ]

        events = emulator.events()
        stats = emulator.stats()
    assert sorted(event["payload"]["i"] for event in events) == list(range(30))
    assert {r.response["eventId"] for r in results} == {event["id"] for event in events}
    # The run really met failures, including answers lost after the event fired.
    assert stats["injected_503"] + stats["injected_429"] >= 10
    assert stats["injected_after_processing"] >= 1
    assert stats["event_replays"] >= 1


def test_a_lost_answer_is_retried_with_the_same_key(client: FlowFlex, emulator: Emulator) -> None:
    emulator.fail_next(1, status=503, after_processing=True)

    result = client.send_event("order.placed", payload={"n": 1})

    [event] = emulator.events()
    assert result.response["eventId"] == event["id"]
    assert event["idempotency_key"] == result.idempotency_key
    assert emulator.stats()["event_replays"] == 1


def test_retry_after_is_honoured(client: FlowFlex, emulator: Emulator) -> None:
    emulator.fail_next(1, status=429)  # Retry-After: 1

    started = time.monotonic()
    client.send_event("order.placed", payload={})
    elapsed = time.monotonic() - started

    assert elapsed >= 1.0
    assert len(emulator.events()) == 1


def test_a_retry_after_beyond_the_limit_is_raised_at_once(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path / "e", retry_after_seconds=600) as emulator:
        client = client_for(emulator, max_retry_after_seconds=30)
        emulator.fail_next(1, status=429)

        started = time.monotonic()
        with pytest.raises(FlowFlexError) as caught:
            client.send_event("x", payload={})

    assert time.monotonic() - started < 5
    assert caught.value.status == 429
    assert caught.value.retryable
    assert caught.value.retry_after == 600


def test_attempts_stop_at_the_configured_count(emulator: Emulator) -> None:
    client = client_for(emulator, max_attempts=3)
    emulator.fail_next(5)

    with pytest.raises(FlowFlexError) as caught:
        client.send_event("x", payload={})

    assert caught.value.status == 503
    assert emulator.stats()["requests_by_path"]["/v1/events/ic_emulator"] == 3


def test_permanent_errors_are_raised_without_retrying(emulator: Emulator) -> None:
    client = FlowFlex(
        api_key=emulator.api_key,
        api_secret="not-the-secret",
        integration_code=emulator.integration_code,
        base_url=emulator.url,
    )

    with pytest.raises(FlowFlexError) as caught:
        client.send_event("x", payload={})

    assert caught.value.status == 401
    assert not caught.value.retryable
    assert emulator.stats()["auth_failures"] == 1


def test_connection_failures_are_retried_then_raised() -> None:
    server = RawServer("close")
    try:
        client = server.client(max_attempts=3)
        with pytest.raises(FlowFlexError, match="Network error") as caught:
            client.send_event("x", payload={})
    finally:
        server.close()

    assert caught.value.retryable
    assert server.accepted == 3


def test_timeouts_are_retried_then_raised() -> None:
    server = RawServer("silent")
    try:
        client = server.client(timeout_seconds=0.3)
        with pytest.raises(FlowFlexError, match=r"timed out after 0\.3s") as caught:
            client.send_event("x", payload={})
    finally:
        server.close()

    assert caught.value.retryable
    assert server.accepted == 2


def test_a_cancel_event_cuts_a_backoff_short(emulator: Emulator) -> None:
    cancel = threading.Event()
    client = client_for(
        emulator, backoff_base_seconds=30, backoff_max_seconds=30, cancel_event=cancel
    )
    emulator.fail_next(1)
    threading.Timer(0.2, cancel.set).start()

    started = time.monotonic()
    with pytest.raises(FlowFlexError):
        client.send_event("x", payload={})

    assert time.monotonic() - started < 5
    assert emulator.events() == []


# --------------------------------------------------------------------- secrets

SECRET = "s3cr3t-value-that-must-not-leak"


def test_no_credential_in_reprs() -> None:
    client = FlowFlex(
        api_key="cik_abc", api_secret=SECRET, integration_code="ic", base_url="https://x.test"
    )

    assert SECRET not in repr(client)
    assert SECRET not in repr(vars(client))
    assert "Basic" not in repr(vars(client))


def test_an_api_that_echoes_the_header_cannot_leak_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with echo_auth_server() as url:
        client = FlowFlex(api_key="cik_abc", api_secret=SECRET, integration_code="ic", base_url=url)
        with pytest.raises(FlowFlexError) as caught:
            client.send_event("x", payload={})

    error = caught.value
    token = client._auth_header.reveal().removeprefix("Basic ")
    shown = "\n".join(
        [
            str(error),
            repr(error),
            str(error.details),
            "".join(traceback.format_exception(error)),
            caplog.text,
        ]
    )
    assert "***" in error.message
    assert SECRET not in shown
    assert token not in shown


def test_retry_logs_carry_no_credential(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(emulator)
    emulator.fail_next(2)

    client.send_event("x", payload={})

    assert "retrying" in caplog.text
    assert emulator.api_secret not in caplog.text
    assert client._auth_header.reveal() not in caplog.text


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_each_transient_status_is_retried(emulator: Emulator, status: int) -> None:
    client = client_for(emulator, max_retry_after_seconds=0)
    emulator.state.faults.retry_after_seconds = 0
    emulator.fail_next(2, status=status)

    client.send_event("x", payload={})

    assert len(emulator.events()) == 1
    assert emulator.stats()["requests_by_path"]["/v1/events/ic_emulator"] == 3


@pytest.mark.parametrize("status", [400, 403, 409, 422])
def test_other_client_errors_are_raised_at_once(emulator: Emulator, status: int) -> None:
    client = client_for(emulator)
    emulator.fail_next(1, status=status)

    with pytest.raises(FlowFlexError) as caught:
        client.send_event("x", payload={})

    assert caught.value.status == status
    assert not caught.value.retryable
    assert emulator.stats()["requests_by_path"]["/v1/events/ic_emulator"] == 1


def test_failed_storage_puts_are_retried(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path / "e", storage_fail_rate=0.5, seed=5) as emulator:
        client = client_for(emulator, max_attempts=20)
        files = []
        for i in range(10):
            files.append(tmp_path / f"f{i}.pdf")
            files[-1].write_bytes(f"%PDF {i}".encode())
        for path in files:
            client.send_event("x", payload={"f": client.file(path)})
        stats = emulator.stats()

    assert stats["uploads"] == 10
    assert stats["events_fired"] == 10
    assert stats["requests_by_path"]["/_storage"] > 10


# ------------------------------------------------------------ http semantics


def test_an_api_redirect_is_an_error_and_is_not_followed() -> None:
    with redirect_server() as (url, seen):
        client = FlowFlex(api_key="cik_abc", api_secret=SECRET, integration_code="ic", base_url=url)
        with pytest.raises(FlowFlexError) as caught:
            client.send_event("x", payload={"n": 1})

    assert caught.value.status == 307
    assert seen == ["/v1/events/ic"]  # once, and nothing sent on to /elsewhere


def test_a_storage_redirect_fails_the_upload_and_is_not_followed(
    client: FlowFlex, tmp_path: Path
) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(b"%PDF-1.4 redirected")
    with redirect_server() as (url, seen), pytest.raises(FlowFlexUploadError) as caught:
        client.put_file(client.file(path), f"{url}/upload/1?sig=abc")

    assert caught.value.status == 307
    assert seen == ["/upload/1?sig=abc"]


def test_a_callers_session_is_used_with_its_own_settings(
    emulator: Emulator, tmp_path: Path
) -> None:
    answered: list[str] = []
    session = requests.Session()
    session.hooks["response"].append(lambda res, *args, **kwargs: answered.append(res.url))
    # A default Authorization (a proxy's, say) must not reach presigned storage.
    session.headers["Authorization"] = "Basic c29tZW9uZTplbHNl"
    client = client_for(emulator, session=session)
    path = tmp_path / "a.pdf"
    path.write_bytes(b"%PDF-1.4 through the caller's session")

    result = client.send_event("x", payload={"f": client.file(path)})

    assert len(answered) == 3  # upload-url, storage PUT, event: all through the session
    assert emulator.events()[-1]["payload"] == {"f": result.uploaded_assets["f"]}


def test_a_payload_with_nan_is_refused_before_any_request(emulator: Emulator) -> None:
    client = client_for(emulator)

    with pytest.raises(FlowFlexError) as caught:
        client.send_event("x", payload={"amount": float("nan")})

    assert caught.value.code == "INVALID_PAYLOAD"
    assert "JSON" in caught.value.message
    assert "/v1/events/ic_emulator" not in emulator.stats()["requests_by_path"]


def test_an_answer_that_cannot_be_decoded_is_a_flowflex_error() -> None:
    server = RawServer("bad-gzip")
    try:
        client = server.client(api_secret=SECRET)
        with pytest.raises(FlowFlexError) as caught:
            client.send_event("x", payload={})
    finally:
        server.close()

    assert "ContentDecodingError" in caught.value.message
    assert caught.value.retryable
    assert server.accepted == 2  # retried once, as for any transient failure


def test_an_upload_url_without_a_host_is_refused_clearly(client: FlowFlex, tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(b"%PDF-1.4")

    with pytest.raises(FlowFlexUploadError) as caught:
        client.put_file(client.file(path), "https:///no-host?sig=1")

    assert "InvalidURL" in caught.value.message
    assert not caught.value.retryable
