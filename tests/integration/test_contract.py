"""One set of scenarios, two implementations: the official SDK and ours.

Both talk HTTP to the real emulator on loopback. Where the two are meant to
differ (ours refuses a bad type before any request), the test says so.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import flowflex
import pytest
from support import sha256, sha256_file

import flowflexd.client
from flowflexd.emulator import ASSET_LIFETIME, Emulator

IMPLEMENTATIONS: dict[str, ModuleType] = {"sdk": flowflex, "flowflexd": flowflexd.client}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLEMENTATIONS[str(request.param)]


def make(impl: ModuleType, emulator: Emulator, **overrides: Any) -> Any:
    options = {
        "api_key": emulator.api_key,
        "api_secret": emulator.api_secret,
        "integration_code": emulator.integration_code,
        "base_url": emulator.url,
        **overrides,
    }
    return impl.FlowFlex(**options)


@pytest.fixture
def ff(impl: ModuleType, emulator: Emulator) -> Any:
    return make(impl, emulator)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_plain_event_arrives_with_its_payload(ff: Any, emulator: Emulator) -> None:
    result = ff.send_event("order.placed", payload={"name": "Ada", "order_id": "ord_42"})

    [event] = emulator.events()
    assert event["event"] == "order.placed"
    assert event["payload"] == {"name": "Ada", "order_id": "ord_42"}
    assert result.response["eventId"] == event["id"]
    assert result.uploaded_assets == {}


def test_event_without_payload_sends_an_empty_object(ff: Any, emulator: Emulator) -> None:
    ff.send_event("ping")

    [event] = emulator.events()
    assert event["payload"] == {}


def test_nested_files_are_uploaded_and_swapped_for_asset_ids(
    ff: Any, emulator: Emulator, tmp_path: Path
) -> None:
    files = {
        "invoice": write(tmp_path / "invoice.pdf", b"%PDF-1.4 invoice"),
        "label": write(tmp_path / "label.png", b"\x89PNG label"),
        "a": write(tmp_path / "a.jpg", b"\xff\xd8 a"),
        "b": write(tmp_path / "b.jpg", b"\xff\xd8 b"),
        "receipt": write(tmp_path / "receipt.pdf", b"%PDF-1.4 receipt"),
    }
    result = ff.send_event(
        "order.shipped",
        payload={
            "invoice": ff.file(files["invoice"]),
            "label": ff.file(str(files["label"])),
            "gallery": [ff.file(files["a"]), ff.file(files["b"])],
            "order": {"receipt": ff.file(files["receipt"]), "id": 7},
            "note": "non-file values pass through",
        },
    )

    assert set(result.uploaded_assets) == {
        "invoice",
        "label",
        "gallery[0]",
        "gallery[1]",
        "order.receipt",
    }
    [event] = emulator.events()
    payload = event["payload"]
    assert payload["invoice"] == result.uploaded_assets["invoice"]
    assert payload["gallery"] == [
        result.uploaded_assets["gallery[0]"],
        result.uploaded_assets["gallery[1]"],
    ]
    assert payload["order"] == {"receipt": result.uploaded_assets["order.receipt"], "id": 7}
    assert payload["note"] == "non-file values pass through"
    sources = {
        "invoice": files["invoice"],
        "label": files["label"],
        "gallery[0]": files["a"],
        "gallery[1]": files["b"],
        "order.receipt": files["receipt"],
    }
    for path, asset_id in result.uploaded_assets.items():
        stored = event["assets"][asset_id]
        assert stored["sha256"] == sha256_file(sources[path])
        assert stored["filename"] == sources[path].name
    assert event["assets"][payload["label"]]["mime"] == "image/png"


def test_one_file_used_twice_is_uploaded_once(ff: Any, emulator: Emulator, tmp_path: Path) -> None:
    banner = ff.file(write(tmp_path / "banner.png", b"\x89PNG banner"))

    result = ff.send_event("promo.sent", payload={"header": banner, "footer": banner})

    assert emulator.stats()["uploads"] == 1
    assert result.uploaded_assets["header"] == result.uploaded_assets["footer"]
    [event] = emulator.events()
    assert event["payload"]["header"] == event["payload"]["footer"]


def test_bytes_and_file_object_sources(ff: Any, emulator: Emulator, tmp_path: Path) -> None:
    path = write(tmp_path / "invoice.pdf", b"%PDF-1.4 from a file object")
    with path.open("rb") as fh:
        result = ff.send_event(
            "invoice.created",
            payload={
                "raw": ff.file(b"%PDF-1.4 raw bytes", filename="raw.pdf", mime="application/pdf"),
                "fh": ff.file(fh),
                "renamed": ff.file(path, filename="Invoice-2026.pdf"),
            },
        )

    [event] = emulator.events()
    assets = event["assets"]
    assert assets[result.uploaded_assets["raw"]]["sha256"] == sha256(b"%PDF-1.4 raw bytes")
    assert assets[result.uploaded_assets["fh"]]["sha256"] == sha256_file(path)
    assert assets[result.uploaded_assets["fh"]]["filename"] == "invoice.pdf"
    assert assets[result.uploaded_assets["renamed"]]["filename"] == "Invoice-2026.pdf"


def test_lower_level_helpers(ff: Any, emulator: Emulator, tmp_path: Path) -> None:
    info = ff.create_upload_url(filename="x.pdf", mime="application/pdf")
    assert set(info) == {"assetId", "uploadUrl", "token"}
    assert info["assetId"].startswith("asset_")

    asset_id = ff.upload_file(ff.file(write(tmp_path / "x.pdf", b"%PDF x")))
    ff.send_event("x.sent", payload={"assetId": asset_id})
    [event] = emulator.events()
    assert event["assets"][asset_id]["sha256"] == sha256(b"%PDF x")


def test_disallowed_type_is_refused_as_mime_not_allowed(
    impl: ModuleType, ff: Any, emulator: Emulator
) -> None:
    zipped = ff.file(b"PK\x03\x04", filename="archive.zip", mime="application/zip")

    with pytest.raises(impl.FlowFlexError) as caught:
        ff.send_event("doc.sent", payload={"file": zipped})

    assert caught.value.code == "MIME_NOT_ALLOWED"
    assert emulator.events() == []
    if impl is flowflexd.client:
        # Ours refuses before any request; the SDK learns it from the API.
        assert isinstance(caught.value, flowflexd.client.FlowFlexUploadError)
        assert emulator.stats()["requests_by_path"] == {}
    else:
        assert caught.value.status == 400


def test_bad_credentials_are_a_401(impl: ModuleType, emulator: Emulator) -> None:
    ff = make(impl, emulator, api_secret="wrong-secret-value")

    with pytest.raises(impl.FlowFlexError) as caught:
        ff.send_event("order.placed", payload={})

    assert caught.value.status == 401
    assert caught.value.code == "UNAUTHORIZED"
    assert caught.value.message == "Invalid API key or secret"
    assert emulator.events() == []


def test_unknown_integration_is_a_404(impl: ModuleType, emulator: Emulator) -> None:
    ff = make(impl, emulator, integration_code="ic_nobody")

    with pytest.raises(impl.FlowFlexError) as caught:
        ff.send_event("order.placed", payload={})

    assert caught.value.status == 404
    assert caught.value.code == "INTEGRATION_NOT_FOUND"


def test_asset_file_missing_after_48_hours(
    impl: ModuleType, ff: Any, emulator: Emulator, tmp_path: Path
) -> None:
    asset_id = ff.upload_file(ff.file(write(tmp_path / "late.pdf", b"%PDF late")))
    emulator.clock.advance(ASSET_LIFETIME + 1)

    with pytest.raises(impl.FlowFlexError) as caught:
        ff.send_event("invoice.created", payload={"assetId": asset_id})

    assert caught.value.code == "ASSET_FILE_MISSING"
    assert caught.value.status == 422
    assert emulator.events() == []


def test_asset_still_there_just_under_48_hours(ff: Any, emulator: Emulator, tmp_path: Path) -> None:
    asset_id = ff.upload_file(ff.file(write(tmp_path / "ok.pdf", b"%PDF ok")))
    emulator.clock.advance(ASSET_LIFETIME - 60)

    ff.send_event("invoice.created", payload={"assetId": asset_id})

    assert len(emulator.events()) == 1


def test_same_idempotency_key_fires_once(ff: Any, emulator: Emulator) -> None:
    first = ff.send_event("order.placed", payload={"n": 1}, idempotency_key="order-42")
    second = ff.send_event("order.placed", payload={"n": 1}, idempotency_key="order-42")

    assert len(emulator.events()) == 1
    assert first.response == second.response
    assert emulator.stats()["event_replays"] == 1


def test_generated_idempotency_keys_are_fresh_uuids(ff: Any, emulator: Emulator) -> None:
    ff.send_event("a", payload={})
    ff.send_event("a", payload={})

    keys = [event["idempotency_key"] for event in emulator.events()]
    assert len(set(keys)) == 2
    for key in keys:
        uuid.UUID(key)


@pytest.mark.parametrize(
    ("event", "key"), [("a\r\nX-Evil: 1", None), ("ok", "key\nX-Evil: 1"), ("nul\x00", None)]
)
def test_control_characters_never_reach_a_header(
    impl: ModuleType, ff: Any, emulator: Emulator, event: str, key: str | None
) -> None:
    with pytest.raises(impl.FlowFlexConfigError):
        ff.send_event(event, payload={}, idempotency_key=key)

    assert emulator.stats()["requests_by_path"] == {}


def test_missing_options_are_config_errors(impl: ModuleType) -> None:
    with pytest.raises(impl.FlowFlexConfigError, match="api_secret is required"):
        impl.FlowFlex(api_key="k", api_secret="", integration_code="c", base_url="https://x.test")


def test_plain_http_is_refused_off_loopback(impl: ModuleType) -> None:
    with pytest.raises(impl.FlowFlexConfigError, match="https"):
        impl.FlowFlex(
            api_key="k", api_secret="s", integration_code="c", base_url="http://api.flowflex.ai"
        )


def test_trailing_api_and_slashes_are_stripped(impl: ModuleType, emulator: Emulator) -> None:
    ff = make(impl, emulator, base_url=emulator.url + "/api/")

    ff.send_event("ping", payload={})

    assert len(emulator.events()) == 1


SDK_SCRIPT = """
import sys
from flowflex import FlowFlex, FlowFlexError, file

key, secret, code, base, pdf = sys.argv[1:6]
ff = FlowFlex(api_key=key, api_secret=secret, integration_code=code, base_url=base)
result = ff.send_event("invoice.created", payload={
    "assetId": ff.file(pdf),
    "label": file(b"\\x89PNG", filename="label.png"),
    "customer_id": "cust_123",
})
print(sorted(result.uploaded_assets))
try:
    ff.send_event("x", payload={"f": ff.file(b"zz", filename="a.zip", mime="application/zip")})
except FlowFlexError as err:
    print(err.code)
"""


def test_an_sdk_script_runs_unchanged_after_swapping_the_import(
    emulator: Emulator, tmp_path: Path
) -> None:
    pdf = write(tmp_path / "invoice.pdf", b"%PDF-1.4 script")
    outputs = []
    for source in (SDK_SCRIPT, SDK_SCRIPT.replace("from flowflex ", "from flowflexd.client ")):
        script = tmp_path / "script.py"
        script.write_text(source)
        args = [emulator.api_key, emulator.api_secret, emulator.integration_code, emulator.url]
        done = subprocess.run(
            [sys.executable, str(script), *args, str(pdf)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)

    assert outputs[0] == outputs[1] == "['assetId', 'label']\nMIME_NOT_ALLOWED\n"
    assert len(emulator.events()) == 2
