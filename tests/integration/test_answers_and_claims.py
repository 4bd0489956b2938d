"""What FlowFlex answers is bounded and classified by where it came from; each claim is
carried once, and a claim that loses its file or cannot be taken leaves nothing behind."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import unicodedata
from pathlib import Path

import pytest
import yaml
from support import (
    PDF_END,
    Folders,
    NotifySocket,
    RunningDaemon,
    claim_dirs,
    drop,
    files_below,
    files_in,
    folder_spec,
    read_report,
    sha256,
    wait_until,
    write_config,
)

from flowflexd.client import FlowFlex
from flowflexd.client.sdk import MAX_ANSWER_BYTES, AnswerExcerpt
from flowflexd.commands import views
from flowflexd.commands.replay import replay_one
from flowflexd.config.model import Config, load
from flowflexd.emulator import Emulator
from flowflexd.emulator.state import Answer
from flowflexd.engine import journal
from flowflexd.engine.notify import Notifier
from flowflexd.engine.snapshot import Pause
from flowflexd.inbox import retention

PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}
WITH_SIDECAR = {**PDF, "sidecar": "{stem}.json"}


@pytest.fixture
def layout(tmp_path: Path) -> Folders:
    return Folders(tmp_path)


def records(layout: Folders) -> list[dict[str, object]]:
    return list(journal.read(layout.root / "state"))


def test_an_event_answered_2xx_with_a_page_is_sent_again_under_its_key(
    layout: Folders, emulator: Emulator
) -> None:
    page = Answer(
        200, None, raw=b"<html><body>Welcome to the proxy</body></html>", content_type="text/html"
    )
    emulator.answer_next(1, page, after_processing=True, only="event")  # it took effect
    with RunningDaemon(layout.config(emulator, [PDF])):
        drop(layout.inbox, "a.pdf", b"%PDF a" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"a.pdf"}, timeout=30)

    [event] = emulator.events()  # one event: the resend was answered as a replay
    [record] = records(layout)
    assert record["outcome"] == "done"
    assert record["idempotency_key"] == event["idempotency_key"]
    assert isinstance(record["answer"], dict) and "excerpt" not in record["answer"]


def test_an_event_answered_2xx_with_broken_json_is_not_called_delivered(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [PDF])) as running:
        # Prefetching may take the scripted answer instead: script after the upload URL.
        emulator.answer_next(2, Answer(200, None, raw=b'{"ok": tru'), after_processing=True)
        drop(layout.inbox, "b.pdf", b"%PDF b" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"b.pdf"}, timeout=30)
        assert running.daemon.totals.failed == 0

    assert len(emulator.events()) == 1
    [record] = records(layout)
    assert isinstance(record["answer"], dict)  # FlowFlex's real answer, from the replay


def test_an_answer_over_a_mebibyte_is_cut_and_kept_as_an_excerpt(
    layout: Folders, emulator: Emulator
) -> None:
    huge = json.dumps({"note": "x" * (3 << 20)}).encode()
    with RunningDaemon(layout.config(emulator, [PDF])):
        emulator.answer_next(1, Answer(200, None, raw=huge), after_processing=True, only="event")
        drop(layout.inbox, "c.pdf", b"%PDF c" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"c.pdf"}, timeout=30)

    [record] = records(layout)
    answer = record["answer"]
    assert isinstance(answer, dict)
    assert answer["size"] == "over 1 MiB"
    assert len(answer["excerpt"]) <= 4096
    assert answer["excerpt"].startswith('"{\\"note\\": \\"xxx')
    assert (layout.root / "state" / "journal.jsonl").stat().st_size < 64 * 1024


def test_a_json_500_with_a_code_is_flowflex_failing_not_a_local_problem(
    layout: Folders, emulator: Emulator
) -> None:
    boom = Answer(500, {"error": "internal error", "code": "INTERNAL"})
    with RunningDaemon(layout.config(emulator, [PDF])) as running:
        emulator.answer_next(6, boom)
        drop(layout.inbox, "d.pdf", b"%PDF d" + PDF_END)
        wait_until(lambda: running.daemon.gate.kind is Pause.OUTAGE, timeout=15)
        assert running.daemon.totals.deferred == 0  # not counted as trouble on this machine
        wait_until(lambda: files_in(layout.done) == {"d.pdf"}, timeout=60)

    assert len(emulator.events()) == 1


def test_an_upload_url_answered_2xx_without_a_url_is_asked_again(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [PDF])) as running:
        emulator.answer_next(
            3, Answer(200, None, raw=b"OK", content_type="text/plain"), only="upload-url"
        )
        drop(layout.inbox, "e.pdf", b"%PDF e" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"e.pdf"}, timeout=60)
        assert running.daemon.totals.failed == 0


def test_a_claimed_file_removed_from_the_work_area_is_closed_as_file_gone(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [WITH_SIDECAR])) as running:
        emulator.fail_next(50)  # FlowFlex is down: the claim waits in the work area
        drop(layout.inbox, "f.json", b'{"n": 1}')
        drop(layout.inbox, "f.pdf", b"%PDF f" + PDF_END)
        work = layout.inbox / ".flowflexd" / "work"
        claimed = wait_until(lambda: list(work.glob("*/f.pdf")), timeout=15)
        claimed[0].unlink()  # someone tidies up
        emulator.state.faults.scripted.clear()  # FlowFlex is back
        wait_until(lambda: "f.pdf.error.json" in files_in(layout.failed), timeout=60)
        wait_until(lambda: claim_dirs(layout.inbox) == [])
        # The main loop counts an outcome after the worker has moved the file.
        wait_until(lambda: running.daemon.totals.failed == 1)
        assert running.daemon.totals.done == 0

    assert files_in(layout.failed) == {"f.json", "f.pdf.error.json"}
    report = read_report(layout.failed, "f.pdf")
    assert report["code"] == "FILE_GONE"
    [record] = records(layout)
    assert (record["outcome"], record["code"]) == ("failed", "FILE_GONE")
    assert emulator.events() == []


def chattr(flag: str, path: Path) -> bool:
    tool = shutil.which("chattr")
    if tool is None:
        return False
    done = subprocess.run([tool, flag, str(path)], capture_output=True, check=False)
    return done.returncode == 0


def test_a_claim_that_cannot_take_its_file_leaves_no_empty_work_folder(
    layout: Folders, emulator: Emulator
) -> None:
    path = layout.inbox / "g.pdf"
    path.write_bytes(b"%PDF g" + PDF_END)
    if not chattr("+i", path):
        pytest.skip("chattr +i is not available on this file system (needs root and ext4)")
    try:
        with RunningDaemon(layout.config(emulator, [PDF])) as running:
            wait_until(lambda: running.daemon.totals.deferred >= 2, timeout=30)
            work = layout.inbox / ".flowflexd" / "work"
            # Every failed try cleaned up after itself, and they do not spin.
            wait_until(lambda: list(work.iterdir()) == [], timeout=5)  # no spare either
            assert running.daemon.totals.deferred < 6
            chattr("-i", path)
            wait_until(lambda: files_in(layout.done) == {"g.pdf"}, timeout=60)
    finally:
        chattr("-i", path)


def test_a_new_copy_dropped_while_the_first_is_carried_goes_at_once(
    layout: Folders, emulator: Emulator
) -> None:
    emulator.set_faults(latency_ms=300)  # the first copy is in flight a while
    with RunningDaemon(layout.config(emulator, [PDF], rescan_seconds=600)):
        drop(layout.inbox, "h.pdf", b"%PDF first" + PDF_END)
        wait_until(lambda: "h.pdf" not in files_in(layout.inbox), timeout=15)  # claimed
        drop(layout.inbox, "h.pdf", b"%PDF second" + PDF_END)
        wait_until(lambda: len(files_in(layout.done)) == 2, timeout=20)

    sent = sorted(next(iter(e["assets"].values()))["sha256"] for e in emulator.events())
    assert sent == sorted([sha256(b"%PDF first" + PDF_END), sha256(b"%PDF second" + PDF_END)])


def test_folders_that_flap_while_files_are_in_flight_send_each_file_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Reloads that drop and add back a folder, and an inbox renamed away and back (a
    share remounted), while a slow API carries its files: one POST per key."""
    layout = Folders(tmp_path)
    full = layout.config(emulator, [PDF], rescan_seconds=0.5)
    other = tmp_path / "other"
    other.mkdir()
    spec = yaml.safe_load(full.read_text())
    without = tmp_path / "without.yaml"
    spec_without = {**spec, "folders": [{**spec["folders"][0], "path": str(other)}]}
    without.write_text(yaml.safe_dump(spec_without))
    without.chmod(0o600)
    configs = itertools.cycle([without, full])
    emulator.set_faults(latency_ms=250)
    # READY=1 on sd_notify is how systemd learns a reload has finished: once at
    # start and once per reload. Renaming the inbox before the last reload has
    # added it back would race the daemon creating a missing inbox afresh.
    notify = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path)})

    def reload_config() -> Config:
        return load(next(configs))

    with RunningDaemon(full, notifier=notifier, reload_config=reload_config) as running:
        for i in range(6):
            drop(layout.inbox, f"flap-{i}.pdf", f"%PDF flap {i}".encode() + PDF_END)
        wait_until(lambda: len(claim_dirs(layout.inbox)) >= 2)
        for _ in range(4):
            running.daemon.request_reload()  # without the folder, then with it again
        wait_until(lambda: notify.fields().count("READY=1") == 5, what="the 4 reloads done")
        assert running.daemon.config.source == full
        away = tmp_path / "away"
        layout.inbox.rename(away)
        wait_until(lambda: str(layout.inbox) in running.daemon.snapshot.offline, timeout=10)
        away.rename(layout.inbox)
        wait_until(lambda: len(files_in(layout.done)) == 6, timeout=60)
        wait_until(lambda: claim_dirs(layout.inbox) == [])

    stats = emulator.stats()
    posts = sum(
        n for path, n in stats["requests_by_path"].items() if path.startswith("/v1/events/")
    )
    assert len(emulator.events()) == 6
    assert (posts, stats["event_replays"]) == (6, 0)
    assert len(records(layout)) == 6  # one journal record per file, none repeated
    notify.close()


def test_a_sidecar_spelled_in_the_other_unicode_form_still_pairs(
    layout: Folders, emulator: Emulator
) -> None:
    rule = {**WITH_SIDECAR, "payload": {"assetId": "{file}", "who": "{sidecar.who}"}}
    stem = "Caf\u00e9-7"  # é as one code point (NFC), as Windows writes it
    decomposed = unicodedata.normalize("NFD", stem)  # é as e + accent, as a Mac writes it
    with RunningDaemon(layout.config(emulator, [rule])):
        drop(layout.inbox, f"{stem}.json", b'{"who": "ana"}')
        drop(layout.inbox, f"{decomposed}.pdf", b"%PDF cafe" + PDF_END)
        wait_until(lambda: len(files_in(layout.done)) == 2, timeout=15)

    assert files_in(layout.done) == {f"{stem}.json", f"{decomposed}.pdf"}
    [event] = emulator.events()
    assert event["payload"]["who"] == "ana"


def test_status_ages_a_waiting_file_from_its_arrival_not_its_mtime(
    layout: Folders, emulator: Emulator
) -> None:
    config = load(layout.config(emulator, [PDF]))
    old = layout.inbox / "kept-from-1999.pdf"
    old.write_bytes(b"%PDF old" + PDF_END)
    os.utime(old, (915148800, 915148800))  # a copy that kept its source's mtime

    [row] = views.status(config)

    assert row.waiting == 1
    assert row.oldest_waiting_s is not None and row.oldest_waiting_s < 60


def test_an_answer_dripped_byte_by_byte_meets_an_overall_deadline(
    layout: Folders, emulator: Emulator
) -> None:
    """One byte every 0.4 s never trips the 1 s read timeout; the deadline (4 timeouts)
    cuts it, the worker is free again, and the file goes once FlowFlex answers properly."""
    drip = Answer(200, {"ok": True}, drip=0.4)
    config = layout.config(emulator, [PDF])
    spec = yaml.safe_load(config.read_text())
    spec["flowflex"]["timeout_seconds"] = 1
    config.write_text(yaml.safe_dump(spec))
    with RunningDaemon(config) as running:
        emulator.answer_next(1, drip, after_processing=True, only="event")
        started = time.monotonic()
        drop(layout.inbox, "slow.pdf", b"%PDF slow" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"slow.pdf"}, timeout=30)
        took = time.monotonic() - started
        assert running.daemon.totals.failed == 0

    assert 4 <= took < 20  # cut at the deadline, not after the 60 s the drip would take
    assert len(emulator.events()) == 1  # the resend under the same key was a replay


def test_the_client_reads_at_most_a_mebibyte_of_an_answer(emulator: Emulator) -> None:
    huge = json.dumps({"note": "y" * (5 << 20)}).encode()
    emulator.answer_next(1, Answer(200, None, raw=huge), after_processing=True, only="event")
    client = FlowFlex(
        api_key=emulator.api_key,
        api_secret=emulator.api_secret,
        integration_code=emulator.integration_code,
        base_url=emulator.url,
    )
    answer = client.fire_event("x", {"a": 1}, "key-huge")

    assert isinstance(answer, AnswerExcerpt)
    assert len(answer.encode()) == MAX_ANSWER_BYTES
    assert answer.startswith('{"note": "yyy')
    again = client.fire_event("x", {"a": 2}, "key-next")  # the pool still works
    assert isinstance(again, dict)


def test_an_event_and_payload_name_the_files_place_and_its_claim_date(
    layout: Folders, emulator: Emulator
) -> None:
    rule = {
        **PDF,
        "event": "scan.{date:%Y}",
        "payload": {"assetId": "{file}", "path": "{path}", "dir": "{dir}", "day": "{date:%F}"},
    }
    with RunningDaemon(layout.config(emulator, [rule])):
        before = time.time()
        drop(layout.inbox, "scan-1.pdf", b"%PDF scan" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"scan-1.pdf"})
        after = time.time()

    [event] = emulator.events()
    days = {time.strftime("%F", time.localtime(t)) for t in (before, after)}
    assert event["event"] in {f"scan.{day[:4]}" for day in days}
    assert event["payload"]["path"] == "scan-1.pdf"
    assert event["payload"]["dir"] == ""  # at the top of the inbox
    assert event["payload"]["day"] in days


@pytest.mark.parametrize("order", ["oldest", "name"])
def test_a_backlog_drains_in_the_order_the_folder_asks_for(
    layout: Folders, emulator: Emulator, order: str
) -> None:
    by_age = [f"{letter}.pdf" for letter in "dbeac"]  # oldest first, not by name
    for hours, name in enumerate(by_age):
        path = layout.inbox / name
        path.write_bytes(f"%PDF {name}".encode() + PDF_END)
        os.utime(path, (1_700_000_000 + hours * 3600,) * 2)
    # Settled before the start (by ctime), so the whole backlog is judged in one look.
    wait_until(lambda: time.time() - (layout.inbox / "c.pdf").stat().st_ctime > 0.5)
    with RunningDaemon(layout.config(emulator, [PDF], workers=1, order=order)):
        wait_until(lambda: len(files_in(layout.done)) == 5)

    sent = [next(iter(e["assets"].values()))["filename"] for e in emulator.events()]
    assert sent == (sorted(by_age) if order == "name" else by_age)


def test_dated_done_and_failed_folders_are_made_counted_and_replayed_from(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    rules = [PDF, {"name": "any", "pattern": "*", "event": "other"}]
    spec = folder_spec(tmp_path, rules)
    spec["done"] = str(tmp_path / "done" / "{date:%Y}" / "{date:%m}")
    spec["failed"] = str(tmp_path / "failed" / "{date:%Y}")
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])
    with RunningDaemon(config):
        year_month = time.strftime("%Y/%m")
        drop(layout.inbox, "good.pdf", b"%PDF good" + PDF_END)
        drop(layout.inbox, "bad.exe", b"MZ not for FlowFlex")
        dated_done = tmp_path / "done" / year_month
        dated_failed = tmp_path / "failed" / year_month[:4]
        wait_until(lambda: files_in(dated_done) == {"good.pdf"})
        wait_until(lambda: files_in(dated_failed) == {"bad.exe", "bad.exe.error.json"})

    assert files_in(tmp_path / "done") == set()  # only in its dated folder
    assert read_report(dated_failed, "bad.exe")["code"] == "UPLOAD_REFUSED"  # no type for .exe
    [row] = views.status(load(config))
    assert (row.failed_now, [r["file"] for r in row.latest_failures]) == (1, ["bad.exe"])

    moved = replay_one(load(config), dated_failed / "bad.exe")

    assert files_in(layout.inbox) == {"bad.exe"}
    assert files_in(tmp_path / "failed" / "replayed") == {"bad.exe.error.json"}
    assert len(moved) == 2


def test_a_done_folder_that_cannot_place_a_file_fails_it_before_anything_is_sent(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    spec = folder_spec(tmp_path, [PDF])
    spec["done"] = str(tmp_path / "done" / "{dir[0]}")  # a file at the top has no folder
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])
    with RunningDaemon(config):
        drop(layout.inbox, "top.pdf", b"%PDF top" + PDF_END)
        wait_until(lambda: "top.pdf.error.json" in files_in(layout.failed))

    assert read_report(layout.failed, "top.pdf")["code"] == "PATH_SEGMENT_MISSING"
    assert emulator.events() == []


# ------------------------------------------------------------------ retention


def run_until_done(config: Path, layout: Folders, names: set[str]) -> None:
    """Drop ``names`` and wait until each is in done or failed (below any dated folder)."""
    with RunningDaemon(config):
        for name in names:
            body = b"%PDF " + name.encode() + PDF_END if name.endswith(".pdf") else b"MZ"
            drop(layout.inbox, name, body)

        def ended() -> set[str]:
            return {Path(p).name for p in files_below(layout.done) | files_below(layout.failed)}

        wait_until(lambda: names <= ended())


def test_retention_deletes_only_what_flowflexd_put_there_and_only_once_old(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    spec = folder_spec(tmp_path, [PDF, {"name": "any", "pattern": "*", "event": "x"}])
    spec.update(done=str(tmp_path / "done" / "{date:%Y}"), keep_done_days=1, keep_failed_days=1)
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])
    run_until_done(config, layout, {"a.pdf", "b.pdf", "bad.exe"})
    year = time.strftime("%Y")
    done_year = tmp_path / "done" / year
    # What people put there themselves, and a sent file replaced by other bytes.
    (tmp_path / "done" / "notes.txt").write_text("mine")
    (done_year / "b.pdf").write_bytes(b"%PDF replaced by someone, not what was sent")
    folder = load(config).folders[0]
    book = journal.Journal(tmp_path / "state")
    records = list(journal.read(tmp_path / "state"))

    assert (
        retention.sweep_done(folder, records, now=time.time() + 0.5 * 86400, record=book.record)
        == []
    )
    assert retention.sweep_failed(folder, now=time.time() + 0.5 * 86400, record=book.record) == []

    later = time.time() + 2 * 86400
    gone = retention.sweep_done(folder, records, now=later, record=book.record)
    gone += retention.sweep_failed(folder, now=later, record=book.record)
    book.close()

    assert sorted(Path(p).name for p in gone) == ["a.pdf", "bad.exe", "bad.exe.error.json"]
    assert files_below(tmp_path / "done") == {"notes.txt", f"{year}/b.pdf"}
    assert files_below(tmp_path / "failed") == set()
    deletions = [r for r in journal.read(tmp_path / "state") if r["outcome"] == "deleted"]
    assert sorted(r["file"] for r in deletions) == ["a.pdf", "bad.exe"]
    [row] = views.status(load(config))
    assert (row.done, row.failed) == (2, 1)  # deletions are no outcomes


def test_retention_removes_dated_folders_it_emptied_and_runs_in_the_daemon(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    spec = folder_spec(tmp_path, [PDF])
    spec.update(done=str(tmp_path / "done" / "{date:%Y}" / "{date:%m}"), keep_done_days=0.00002)
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])
    run_until_done(config, layout, {"old.pdf"})
    (tmp_path / "done" / "kept-empty").mkdir()  # a folder of someone's: never removed
    wait_until(lambda: time.time() - (tmp_path / "state" / "journal.jsonl").stat().st_mtime > 2)

    with RunningDaemon(config):  # its first look sweeps
        wait_until(lambda: files_below(tmp_path / "done") == set())
        wait_until(lambda: sorted(p.name for p in (tmp_path / "done").iterdir()) == ["kept-empty"])
