"""The daemon end to end: real observer, real folders, the emulator over loopback."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    PDF_END,
    PNG_END,
    Folders,
    RunningDaemon,
    claims_in,
    drop,
    files_in,
    nothing_sent,
    read_report,
    redirect_server,
    run_daemon,
    sha256,
    wait_until,
)

from flowflexd.commands.replay import replay_one
from flowflexd.config.model import load
from flowflexd.emulator import Emulator
from flowflexd.engine import journal
from flowflexd.engine.lifecycle import Stage
from flowflexd.engine.snapshot import Pause

Layout = Folders


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}


def assets_by_name(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        info["filename"]: {"id": asset_id, **info} for asset_id, info in event["assets"].items()
    }


# ------------------------------------------------------------- placeholders


def test_every_placeholder_kind(layout: Layout, emulator: Emulator) -> None:
    rules = [
        {
            "name": "invoice",
            "regex": r"^INV-(?P<number>\d+)\.pdf$",
            "event": "invoice.{sidecar.kind}",
            "sidecar": "{stem}.json",
            "attach": {"label": "{stem}.png"},
            "payload": {
                "assetId": "{file}",
                "label": "{attach.label}",
                "name": "{name}",
                "stem": "{stem}",
                "ext": "{ext}",
                "invoice_no": "{match.number}",
                "customer_id": "{sidecar.customer.id}",
                "first_sku": "{sidecar.items[0].sku}",
                "items": "{sidecar.items}",
                "everything": "{sidecar}",
                "text": "#{match.number} for {sidecar.customer.id}",
                "source": "scanner-3",
                "fixed": 7,
            },
        }
    ]
    sidecar = {"kind": "created", "customer": {"id": 42}, "items": [{"sku": "A-1"}, {"sku": "B"}]}
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "INV-1001.json", json.dumps(sidecar).encode())
        drop(layout.inbox, "INV-1001.png", b"\x89PNG label" + PNG_END)
        drop(layout.inbox, "INV-1001.pdf", b"%PDF invoice\n%%EOF")
        wait_until(
            lambda: files_in(layout.done) == {"INV-1001.pdf", "INV-1001.json", "INV-1001.png"}
        )

    [event] = emulator.events()
    assets = assets_by_name(event)
    assert event["event"] == "invoice.created"
    assert event["payload"] == {
        "assetId": assets["INV-1001.pdf"]["id"],
        "label": assets["INV-1001.png"]["id"],
        "name": "INV-1001.pdf",
        "stem": "INV-1001",
        "ext": "pdf",
        "invoice_no": "1001",
        "customer_id": 42,
        "first_sku": "A-1",
        "items": [{"sku": "A-1"}, {"sku": "B"}],
        "everything": sidecar,
        "text": "#1001 for 42",
        "source": "scanner-3",
        "fixed": 7,
    }
    assert assets["INV-1001.pdf"]["sha256"] == sha256(b"%PDF invoice\n%%EOF")
    assert assets["INV-1001.png"]["sha256"] == sha256(b"\x89PNG label" + PNG_END)
    assert files_in(layout.inbox) == set()


def test_without_a_payload_the_sidecar_and_asset_id_are_sent(
    layout: Layout, emulator: Emulator
) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json"}]
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "a.json", b'{"customer": "cust_1"}')
        drop(layout.inbox, "a.pdf", b"%PDF a\n%%EOF")
        wait_until(lambda: "a.pdf" in files_in(layout.done))

    [event] = emulator.events()
    assert event["payload"] == {"customer": "cust_1", "assetId": next(iter(event["assets"]))}


# ------------------------------------------------------------------ sidecars


def test_a_sidecar_that_arrives_first_waits_for_its_file(
    layout: Layout, emulator: Emulator
) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "sidecar_timeout": 30}]
    with RunningDaemon(layout.config(emulator, rules)) as running:
        drop(layout.inbox, "early.json", b'{"n": 1}')
        # Once settled, the daemon knows it as a companion and never sends it alone.
        wait_until(lambda: running.daemon.snapshot.companions == 1)
        assert emulator.events() == []
        drop(layout.inbox, "early.pdf", b"%PDF early\n%%EOF")
        wait_until(lambda: files_in(layout.done) == {"early.pdf", "early.json"})

    [event] = emulator.events()
    assert event["payload"]["n"] == 1


def test_a_sidecar_that_arrives_after_its_file(layout: Layout, emulator: Emulator) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "sidecar_timeout": 30}]
    with RunningDaemon(layout.config(emulator, rules)) as running:
        drop(layout.inbox, "late.pdf", b"%PDF late\n%%EOF")
        wait_until(lambda: running.daemon.ledger.count(Stage.WAITING) == 1)
        drop(layout.inbox, "late.json", b'{"n": 2}')
        wait_until(lambda: files_in(layout.done) == {"late.pdf", "late.json"})

    [event] = emulator.events()
    assert event["payload"]["n"] == 2


def test_a_missing_required_sidecar_fails_the_file_with_the_reason(
    layout: Layout, emulator: Emulator
) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "sidecar_timeout": 1}]
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "alone.pdf", b"%PDF alone\n%%EOF")
        wait_until(lambda: "alone.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "alone.pdf")
    assert report["code"] == "SIDECAR_MISSING"
    assert report["reason"] == "alone.json did not arrive within 1 s"
    assert report["rule"] == "pdf"
    assert report["file"] == "alone.pdf"
    assert report["attempts"] == 1
    assert set(report) >= {"reason", "code", "status", "rule", "event", "attempts", "time"}
    assert files_in(layout.failed) == {"alone.pdf", "alone.pdf.error.json"}
    nothing_sent(emulator)


def test_a_sidecar_later_than_its_timeout_stays_behind_unsent(
    layout: Layout, emulator: Emulator
) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "sidecar_timeout": 0.5}]
    with RunningDaemon(layout.config(emulator, rules)) as running:
        drop(layout.inbox, "slow.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "slow.pdf" in files_in(layout.failed))
        drop(layout.inbox, "slow.json", b"{}")
        wait_until(lambda: running.daemon.snapshot.companions == 1)

    assert files_in(layout.inbox) == {"slow.json"}
    assert emulator.events() == []


def test_an_optional_sidecar_that_never_comes(layout: Layout, emulator: Emulator) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "sidecar_required": False, "sidecar_timeout": 0.5}]
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "solo.pdf", b"%PDF solo\n%%EOF")
        wait_until(lambda: "solo.pdf" in files_in(layout.done))

    [event] = emulator.events()
    assert list(event["payload"]) == ["assetId"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"a": ', "is not valid JSON"),
        (b"[1, 2]", "holds list, not a JSON object"),
        (b'{"name": "M\xfcller"}', "is not UTF-8 text"),
    ],
)
def test_a_malformed_sidecar_fails_the_file(
    layout: Layout, emulator: Emulator, content: bytes, reason: str
) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json"}]
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "bad.json", content)
        drop(layout.inbox, "bad.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "bad.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "bad.pdf")
    assert report["code"] == "SIDECAR_INVALID"
    assert reason in report["reason"]
    assert "bad.json" in report["reason"]
    assert files_in(layout.failed) == {"bad.pdf", "bad.json", "bad.pdf.error.json"}
    nothing_sent(emulator)


def test_a_missing_sidecar_path_fails_naming_the_path(layout: Layout, emulator: Emulator) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "payload": {"c": "{sidecar.customer.id}"}}]
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "p.json", b'{"customer": {"name": "Ada"}}')
        drop(layout.inbox, "p.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "p.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "p.pdf")
    assert report["code"] == "SIDECAR_PATH_MISSING"
    assert "sidecar.customer.id" in report["reason"]
    assert emulator.events() == []


# ---------------------------------------------------------------- attachments


def test_attachments_travel_and_are_uploaded(layout: Layout, emulator: Emulator) -> None:
    rules = [{**PDF, "attach": {"label": "{stem}.png", "photo": "{stem}-photo.jpg"}}]
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "ship.pdf", b"%PDF ship\n%%EOF")
        drop(layout.inbox, "ship.png", b"\x89PNG" + PNG_END)
        drop(layout.inbox, "ship-photo.jpg", b"\xff\xd8 photo\xff\xd9")
        wait_until(lambda: files_in(layout.done) == {"ship.pdf", "ship.png", "ship-photo.jpg"})

    [event] = emulator.events()
    assets = assets_by_name(event)
    assert event["payload"] == {
        "assetId": assets["ship.pdf"]["id"],
        "label": assets["ship.png"]["id"],
        "photo": assets["ship-photo.jpg"]["id"],
    }
    assert assets["ship-photo.jpg"]["sha256"] == sha256(b"\xff\xd8 photo\xff\xd9")


# ------------------------------------------------------------ complete files


def test_a_file_written_slowly_is_taken_once_complete(layout: Layout, emulator: Emulator) -> None:
    chunks = [bytes([i]) * 1000 for i in range(12)] + [PDF_END]
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=1.0)):
        with (layout.inbox / "slow.pdf").open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                fh.flush()
                time.sleep(0.3)  # a slow writer, not synchronisation
        wait_until(lambda: "slow.pdf" in files_in(layout.done))

    [event] = emulator.events()
    assert next(iter(event["assets"].values()))["sha256"] == sha256(b"".join(chunks))


def test_a_preallocated_file_is_taken_only_once_filled(layout: Layout, emulator: Emulator) -> None:
    chunks = [bytes([65 + i]) * 4096 for i in range(10)] + [PDF_END]
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=1.0)):
        path = layout.inbox / "prealloc.pdf"
        with path.open("wb") as fh:
            fh.truncate(sum(map(len, chunks)))  # Samba reserves the full size first
            fh.flush()
            for chunk in chunks:
                time.sleep(0.3)  # a slow writer, not synchronisation
                fh.write(chunk)
                fh.flush()
        wait_until(lambda: "prealloc.pdf" in files_in(layout.done))

    [event] = emulator.events()
    assert next(iter(event["assets"].values()))["sha256"] == sha256(b"".join(chunks))


def test_a_zero_byte_placeholder_is_taken_once_filled(layout: Layout, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [PDF])) as running:
        drop(layout.inbox, "scan.pdf", b"")
        wait_until(lambda: running.daemon.snapshot.empty == 1)
        assert emulator.events() == []
        drop(layout.inbox, "scan.pdf", b"%PDF filled later\n%%EOF")
        wait_until(lambda: "scan.pdf" in files_in(layout.done))

    [event] = emulator.events()
    assert next(iter(event["assets"].values()))["sha256"] == sha256(b"%PDF filled later\n%%EOF")


def test_a_file_moved_in_from_another_folder(layout: Layout, emulator: Emulator) -> None:
    outside = layout.root / "outside"
    outside.mkdir()
    with RunningDaemon(layout.config(emulator, [PDF])):
        drop(outside, "moved.pdf", b"%PDF moved\n%%EOF")
        os.rename(outside / "moved.pdf", layout.inbox / "moved.pdf")
        wait_until(lambda: "moved.pdf" in files_in(layout.done))

    assert len(emulator.events()) == 1


def test_a_temporary_name_renamed_into_place_is_taken(layout: Layout, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [{**PDF, "pattern": "*"}])):
        drop(layout.inbox, "scan.pdf.tmp", b"%PDF via tmp\n%%EOF")
        drop(layout.inbox, "~$lock.docx", b"lock")
        drop(layout.inbox, ".hidden.pdf", b"%PDF\n%%EOF")
        os.rename(layout.inbox / "scan.pdf.tmp", layout.inbox / "scan.pdf")
        wait_until(lambda: "scan.pdf" in files_in(layout.done))

    assert [e["assets"][next(iter(e["assets"]))]["filename"] for e in emulator.events()] == [
        "scan.pdf"
    ]
    assert files_in(layout.inbox) == {"~$lock.docx", ".hidden.pdf"}


def test_a_file_the_events_missed_is_found_by_the_rescan(
    layout: Layout, emulator: Emulator
) -> None:
    # A polling observer that looks once an hour sees nothing in this test:
    # only the reconciling rescan can find the file.
    config = layout.config(emulator, [PDF], poll=True, poll_interval=3600, rescan_seconds=1)
    with RunningDaemon(config):
        drop(layout.inbox, "missed.pdf", b"%PDF missed\n%%EOF")
        wait_until(lambda: "missed.pdf" in files_in(layout.done), timeout=10)

    assert len(emulator.events()) == 1


def test_a_backlog_present_at_start_is_processed(layout: Layout, emulator: Emulator) -> None:
    for i in range(150):
        drop(layout.inbox, f"backlog-{i:03}.pdf", f"%PDF {i}\n%%EOF".encode())

    with RunningDaemon(layout.config(emulator, [PDF])):
        wait_until(lambda: len(files_in(layout.done)) == 150, timeout=60)

    events = emulator.events()
    assert len(events) == 150
    assert len({e["idempotency_key"] for e in events}) == 150
    assert files_in(layout.inbox) == set()


def test_files_dropped_in_a_burst_are_each_sent_once(layout: Layout, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [PDF])):
        for i in range(60):
            path = drop(layout.inbox, f"burst-{i}.pdf", b"%PDF\n%%EOF")
            os.utime(path)  # another event for the same file
        wait_until(lambda: len(files_in(layout.done)) == 60, timeout=60)

    names = sorted(next(iter(e["assets"].values()))["filename"] for e in emulator.events())
    assert names == sorted(f"burst-{i}.pdf" for i in range(60))


# ------------------------------------------------- upload URLs while settling

UPLOAD_URL = "/v1/assets/upload-url"


def requests_to(emulator: Emulator, path: str) -> int:
    return int(emulator.stats()["requests_by_path"].get(path, 0))


def test_a_settling_file_gets_its_upload_url_and_nothing_leaves_before_the_claim(
    layout: Layout, emulator: Emulator
) -> None:
    data = b"%PDF settling\n%%EOF"
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=4)):
        drop(layout.inbox, "s.pdf", data)
        wait_until(lambda: requests_to(emulator, UPLOAD_URL) == 1, timeout=3)
        # Still settling: asked for its URL, but neither claimed nor uploaded.
        assert "/_storage" not in emulator.stats()["requests_by_path"]
        assert files_in(layout.inbox) == {"s.pdf"}
        assert claims_in(layout.inbox) == []
        wait_until(lambda: "s.pdf" in files_in(layout.done), timeout=20)

    assert requests_to(emulator, UPLOAD_URL) == 1  # the URL asked for early was used
    [event] = emulator.events()
    assert next(iter(event["assets"].values()))["sha256"] == sha256(data)


def test_a_prefetched_url_that_storage_refuses_is_replaced(
    layout: Layout, emulator: Emulator
) -> None:
    data = b"%PDF expired\n%%EOF"
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=4)):
        drop(layout.inbox, "x.pdf", data)
        wait_until(lambda: requests_to(emulator, UPLOAD_URL) == 1, timeout=3)
        emulator.clock.advance(3 * 3600)  # past the URL's 2 hours at the storage
        wait_until(lambda: "x.pdf" in files_in(layout.done), timeout=20)

    assert requests_to(emulator, UPLOAD_URL) == 2
    assert files_in(layout.failed) == set()
    [event] = emulator.events()
    assert next(iter(event["assets"].values()))["sha256"] == sha256(data)


# ---------------------------------------------------------- outcomes, names


def claim_tag(state_dir: Path, name: str) -> str:
    """The suffix a taken name gets: the claim's short id, as the journal records it."""
    [record] = [r for r in journal.read(state_dir) if r["file"] == name]
    return str(record["claim"])[:8]


def test_names_taken_in_done_get_a_suffix_and_stay_paired(
    layout: Layout, emulator: Emulator
) -> None:
    layout.done.mkdir()
    (layout.done / "INV-1.pdf").write_bytes(b"old pdf")
    (layout.done / "INV-1.json").write_bytes(b"old json")
    rules = [{**PDF, "sidecar": "{stem}.json"}]
    with RunningDaemon(layout.config(emulator, rules)):
        drop(layout.inbox, "INV-1.json", b'{"new": true}')
        drop(layout.inbox, "INV-1.pdf", b"%PDF new\n%%EOF")
        wait_until(lambda: len(files_in(layout.done)) == 4)

    tag = claim_tag(layout.root / "state", "INV-1.pdf")
    assert (layout.done / "INV-1.pdf").read_bytes() == b"old pdf"
    assert (layout.done / "INV-1.json").read_bytes() == b"old json"
    assert (layout.done / f"INV-1 ({tag}).pdf").read_bytes() == b"%PDF new\n%%EOF"
    assert (layout.done / f"INV-1 ({tag}).json").read_bytes() == b'{"new": true}'


def test_a_fixed_name_sent_ten_thousand_times_still_finds_a_name_at_once(
    layout: Layout, emulator: Emulator
) -> None:
    """An ERP export with a fixed name: done keeps every earlier one for years."""
    layout.done.mkdir()
    for n in range(10_000):
        (layout.done / ("scan.pdf" if n == 0 else f"scan ({n}).pdf")).touch()
    with RunningDaemon(layout.config(emulator, [PDF])):
        drop(layout.inbox, "scan.pdf", b"%PDF the next one\n%%EOF")
        wait_until(lambda: len(files_in(layout.done)) == 10_001)

    tag = claim_tag(layout.root / "state", "scan.pdf")
    assert (layout.done / f"scan ({tag}).pdf").read_bytes() == b"%PDF the next one\n%%EOF"
    assert claims_in(layout.inbox) == []


def test_names_taken_in_failed_get_a_suffix(layout: Layout, emulator: Emulator) -> None:
    layout.failed.mkdir()
    (layout.failed / "x.exe").write_bytes(b"old")
    (layout.failed / "x.exe.error.json").write_text("{}")
    with RunningDaemon(layout.config(emulator, [{**PDF, "pattern": "*"}])):
        drop(layout.inbox, "x.exe", b"MZ")
        wait_until(lambda: len(files_in(layout.failed)) == 4)

    tag = claim_tag(layout.root / "state", "x.exe")
    assert (layout.failed / "x.exe").read_bytes() == b"old"
    assert (layout.failed / f"x ({tag}).exe").read_bytes() == b"MZ"
    report = read_report(layout.failed, f"x ({tag}).exe")
    assert report["code"] in ("MIME_NOT_ALLOWED", "UPLOAD_REFUSED")
    assert emulator.stats()["requests_by_path"] == {}


def test_unmatched_files_stay_by_default(layout: Layout, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [PDF])) as running:
        drop(layout.inbox, "notes.txt", b"hello")
        drop(layout.inbox, "a.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "a.pdf" in files_in(layout.done))
        wait_until(lambda: running.daemon.snapshot.ignored == 1)

    assert files_in(layout.inbox) == {"notes.txt"}
    assert files_in(layout.failed) == set()


def test_unmatched_files_fail_when_configured(layout: Layout, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [PDF], unmatched="fail")):
        drop(layout.inbox, "notes.txt", b"hello")
        wait_until(lambda: "notes.txt.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "notes.txt")
    assert report["code"] == "UNMATCHED"
    assert "*.pdf" in report["reason"]


def test_replay_puts_a_failed_file_back_and_it_goes_through(
    layout: Layout, emulator: Emulator
) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "sidecar_timeout": 0.5}]
    config_path = layout.config(emulator, rules)
    with RunningDaemon(config_path):
        drop(layout.inbox, "r.pdf", b"%PDF replay\n%%EOF")
        wait_until(lambda: "r.pdf.error.json" in files_in(layout.failed))
        drop(layout.inbox, "r.json", b'{"fixed": true}')
        moved = replay_one(load(config_path), layout.failed / "r.pdf")
        wait_until(lambda: files_in(layout.done) == {"r.pdf", "r.json"})

    assert len(moved) == 2
    assert files_in(layout.failed) == set()
    assert files_in(layout.failed / "replayed") == {"r.pdf.error.json"}
    [event] = emulator.events()
    assert event["payload"]["fixed"] is True


# ------------------------------------------------------- FlowFlex in trouble


def test_an_api_outage_makes_files_wait_then_go_through(layout: Layout, tmp_path: Path) -> None:
    data_dir = tmp_path / "emulator-data"
    emulator = Emulator(data_dir=data_dir).start()
    port = emulator.port
    config = layout.config(emulator, [PDF])
    with RunningDaemon(config) as running:
        emulator.stop()
        for i in range(5):
            drop(layout.inbox, f"outage-{i}.pdf", f"%PDF {i}\n%%EOF".encode())
        wait_until(lambda: running.daemon.gate.kind is Pause.OUTAGE, timeout=15)
        assert files_in(layout.failed) == set()
        assert files_in(layout.done) == set()
        emulator = Emulator(data_dir=data_dir, port=port).start()
        try:
            wait_until(lambda: len(files_in(layout.done)) == 5, timeout=30)
        finally:
            events = emulator.events()
            emulator.stop()

    assert sorted(next(iter(e["assets"].values()))["filename"] for e in events) == [
        f"outage-{i}.pdf" for i in range(5)
    ]


def test_bad_credentials_pause_without_failing_files(layout: Layout, emulator: Emulator) -> None:
    bad = layout.config(emulator, [PDF], secret="not-the-secret-at-all")
    with RunningDaemon(bad) as running:
        for i in range(3):
            drop(layout.inbox, f"cred-{i}.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: running.daemon.gate.kind is Pause.CONFIG, timeout=15)
        claimed = claims_in(layout.inbox)

    assert files_in(layout.failed) == set()
    assert emulator.events() == []
    # Nothing was lost: every file is still in the inbox or claimed.
    in_claims = {c["members"]["file"] for c in claimed}
    assert files_in(layout.inbox) | in_claims == {f"cred-{i}.pdf" for i in range(3)}

    # With the right secret, the claimed file resumes with the key minted at claim time.
    with RunningDaemon(layout.config(emulator, [PDF])):
        wait_until(lambda: len(files_in(layout.done)) == 3, timeout=30)
    keys = {e["idempotency_key"] for e in emulator.events()}
    assert {c["key"] for c in claimed} <= keys
    assert len(emulator.events()) == 3


def test_unknown_integration_pauses_without_failing_files(
    layout: Layout, emulator: Emulator
) -> None:
    config = layout.config(emulator, [PDF])
    text = config.read_text().replace(emulator.integration_code, "ic_nobody")
    config.write_text(text)
    with RunningDaemon(config) as running:
        drop(layout.inbox, "u.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: running.daemon.gate.kind is Pause.CONFIG, timeout=15)
        assert (
            "INTEGRATION" in running.daemon.gate.reason or "ic_nobody" in running.daemon.gate.reason
        )

    assert files_in(layout.failed) == set()
    assert emulator.events() == []


def test_an_api_that_redirects_pauses_without_failing_files(
    layout: Layout, emulator: Emulator
) -> None:
    config = layout.config(emulator, [PDF])
    with redirect_server() as (url, seen):
        config.write_text(config.read_text().replace(emulator.url, url))
        with RunningDaemon(config) as running:
            drop(layout.inbox, "r.pdf", b"%PDF\n%%EOF")
            wait_until(lambda: running.daemon.gate.kind is Pause.CONFIG, timeout=15)
            reason = running.daemon.gate.reason

    assert "redirect (307) to /elsewhere" in reason
    assert "/elsewhere" not in seen  # asked once per call, never followed
    assert files_in(layout.failed) == set()
    in_claims = {c["members"]["file"] for c in claims_in(layout.inbox)}
    assert files_in(layout.inbox) | in_claims == {"r.pdf"}


def test_an_oversized_file_fails_without_any_request(layout: Layout, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [PDF])):
        with (layout.inbox / "huge.pdf").open("wb") as fh:
            fh.truncate(26_214_401)  # sparse: 25 MB + 1 byte without writing them
        wait_until(lambda: "huge.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "huge.pdf")
    assert report["code"] == "FILE_TOO_LARGE"
    assert "26,214,401 bytes, over the 26,214,400-byte limit" in report["reason"]
    assert emulator.stats()["requests_by_path"] == {}


def bytes_read(pid: int) -> int:
    """What a process has read from files so far (rchar in /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def test_a_file_is_read_once_for_its_hash_and_its_upload(
    layout: Layout, emulator: Emulator, tmp_path: Path
) -> None:
    size = 8 * 1024 * 1024
    data = os.urandom(size - len(PDF_END)) + PDF_END
    staging = tmp_path / "staging.pdf"
    staging.write_bytes(data)
    proc = run_daemon(layout.config(emulator, [PDF]))
    try:
        proc.wait_for_log("flowflexd ready")
        before = bytes_read(proc.proc.pid)
        staging.rename(layout.inbox / "big.pdf")
        wait_until(lambda: "big.pdf" in files_in(layout.done), timeout=30)
        read = bytes_read(proc.proc.pid) - before
    finally:
        proc.stop()

    assert size <= read < 1.25 * size  # once, not once to hash and again to send
    [event] = emulator.events()
    assert next(iter(event["assets"].values()))["sha256"] == sha256(data)
    [record] = journal.read(tmp_path / "state")
    assert record["sha256"] == sha256(data)


def test_the_journal_records_every_outcome(layout: Layout, emulator: Emulator) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "sidecar_timeout": 0.3}]
    with RunningDaemon(layout.config(emulator, rules)) as running:
        drop(layout.inbox, "j.json", b'{"k": 1}')
        drop(layout.inbox, "j.pdf", b"%PDF journal\n%%EOF")
        drop(layout.inbox, "nope.pdf", b"%PDF\n%%EOF")
        wait_until(
            lambda: "j.pdf" in files_in(layout.done) and "nope.pdf" in files_in(layout.failed)
        )
        journal_path = running.config.state_dir / "journal.jsonl"

    entries = {e["file"]: e for e in map(json.loads, journal_path.read_text().splitlines())}
    [event] = emulator.events()
    done = entries["j.pdf"]
    assert done["outcome"] == "done"
    assert done["sha256"] == sha256(b"%PDF journal\n%%EOF")
    assert done["rule"] == "pdf"
    assert done["event"] == "doc.received"
    assert done["idempotency_key"] == event["idempotency_key"]
    assert done["asset_ids"] == {"file": next(iter(event["assets"]))}
    assert done["answer"] == {"ok": True, "eventId": event["id"], "event": "doc.received"}
    failed = entries["nope.pdf"]
    assert failed["outcome"] == "failed"
    assert failed["code"] == "SIDECAR_MISSING"
    assert "nope.json" in failed["reason"]


def test_a_failure_report_is_as_readable_as_the_file_it_explains(
    layout: Layout, emulator: Emulator
) -> None:
    """The scanner users whose file failed can read why, and no one else can write it."""
    with RunningDaemon(layout.config(emulator, [{**PDF, "pattern": "*"}])):
        staged = layout.root / "shared.exe"
        staged.write_bytes(b"MZ")
        os.chown(staged, -1, 65534)  # the scanners' group, say
        staged.chmod(0o640)
        staged.rename(layout.inbox / "shared.exe")
        wait_until(lambda: "shared.exe.error.json" in files_in(layout.failed))

    report = os.lstat(layout.failed / "shared.exe.error.json")
    assert oct(stat.S_IMODE(report.st_mode)) == oct(0o640)
    assert report.st_gid == 65534
