"""An inbox served by a thread of its own (``own_thread: always``) does all the loop did.

On a share (the default for network file systems) the inbox's settling,
rescans, commits into done and retention run in its own thread, and the
tracker goes back and forth between it and the main loop. Here the same
flows run on local folders, where nothing hangs: what must hold is that
nothing is lost, late or sent twice by the hand-offs. (A share whose server
stops is in tests/field/test_share_hang.py.)
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import yaml
from support import (
    PDF_END,
    Folders,
    RunningDaemon,
    claim_dirs,
    claims_in,
    client_for,
    drop,
    files_in,
    wait_until,
)

from flowflexd.config.model import DEFAULT_DESTINATION, Folder, load
from flowflexd.emulator import Emulator
from flowflexd.engine.journal import Journal
from flowflexd.engine.lifecycle import Ledger, Stage
from flowflexd.engine.pipeline import Pipeline
from flowflexd.engine.scheduler import Scheduler
from flowflexd.engine.snapshot import Pause
from flowflexd.inbox.runtime import Inbox
from flowflexd.inbox.spool import Carried, try_lock

PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}
OWN = {"own_thread": "always"}


def _inbox_threads(path: Path) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == f"inbox {path}"]


def _inbox_by_hand(folder: Folder, ledger: Ledger) -> Inbox:
    """An inbox taken up and stepped by the test, as the daemon's loop would (no watch)."""
    inbox = Inbox(
        folder,
        ledger=ledger,
        settle_seconds=0.0,
        rescan_seconds=60,
        watch=False,
        hint=lambda _: lambda _name: None,
        carried=Carried(),
    )
    inbox.start(time.monotonic())
    return inbox


def test_files_sidecars_and_markers_go_as_they_do_from_the_loop(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    rules = [
        {**PDF, "name": "late", "pattern": "late*.pdf", "sidecar": "{stem}.json"},
        {**PDF, "name": "marked", "pattern": "INV-*.pdf", "marker": "{name}.ok"},
        PDF,
    ]
    with RunningDaemon(layout.config(emulator, rules, **OWN)) as running:
        assert _inbox_threads(layout.inbox)  # its calls are made there
        for n in range(20):
            drop(layout.inbox, f"plain-{n}.pdf", b"%PDF plain" + PDF_END)
        drop(layout.inbox, "late.pdf", b"%PDF late" + PDF_END)
        drop(layout.inbox, "INV-1.pdf", b"%PDF invoice" + PDF_END)
        wait_until(lambda: running.daemon.ledger.count(Stage.WAITING) == 2)
        # Each companion, noted while its file waits with a deadline an hour off,
        # is looked at now: a step is asked for, not left to that deadline.
        started = time.monotonic()
        drop(layout.inbox, "late.json", b'{"n": 1}')
        drop(layout.inbox, "INV-1.pdf.ok", b"")
        wanted = {f"plain-{n}.pdf" for n in range(20)} | {
            "late.pdf",
            "late.json",
            "INV-1.pdf",
            "INV-1.pdf.ok",
        }
        wait_until(lambda: files_in(layout.done) == wanted)
        assert time.monotonic() - started < 10
        # Names only: a claim folder being emptied for reuse has an empty claim file.
        wait_until(lambda: not claim_dirs(layout.inbox), what="every claim committed")

    assert len(emulator.events()) == 22
    assert not files_in(layout.failed)


def test_a_reload_changes_removes_and_adds_back_an_inbox_in_its_own_thread(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    first = layout.config(emulator, [PDF], **OWN)
    spec = yaml.safe_load(first.read_text())
    versions = {"now": first}
    with_txt, without = tmp_path / "with-txt.yaml", tmp_path / "without.yaml"
    txt = {"name": "txt", "pattern": "*.txt", "event": "doc.received"}
    spec["folders"][0]["rules"] = [PDF, txt]
    with_txt.write_text(yaml.safe_dump(spec))
    spec["folders"] = [{**spec["folders"][0], "path": str(tmp_path / "other")}]
    (tmp_path / "other").mkdir()
    without.write_text(yaml.safe_dump(spec))
    for path in (with_txt, without):
        path.chmod(0o600)

    with RunningDaemon(first, reload_config=lambda: load(versions["now"])) as running:
        drop(layout.inbox, "a.txt", b"not taken yet")
        drop(layout.inbox, "a.pdf", b"%PDF a" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"a.pdf"})

        versions["now"] = with_txt  # a rule added: applied in its thread, then taken
        running.daemon.request_reload()
        wait_until(lambda: files_in(layout.done) == {"a.pdf", "a.txt"})

        versions["now"] = without  # the folder removed: its thread ends, its lock goes
        running.daemon.request_reload()
        wait_until(lambda: not _inbox_threads(layout.inbox), what="its thread gone")
        fd = try_lock(layout.inbox)
        assert isinstance(fd, int)  # nobody holds it now
        os.close(fd)
        drop(layout.inbox, "b.pdf", b"%PDF b" + PDF_END)

        versions["now"] = with_txt  # added back: what waited there goes
        running.daemon.request_reload()
        wait_until(lambda: "b.pdf" in files_in(layout.done))

    assert len(emulator.events()) == 3


def test_a_stop_commits_every_claim_and_frees_the_inbox(tmp_path: Path, emulator: Emulator) -> None:
    layout = Folders(tmp_path)
    config = layout.config(emulator, [PDF], **OWN)
    with RunningDaemon(config) as running:
        for n in range(30):
            drop(layout.inbox, f"f{n}.pdf", b"%PDF f" + PDF_END)
        wait_until(lambda: running.daemon.totals.done == 30)
    # Committed in the inbox's own thread before its lock went: nothing left claimed.
    assert not claims_in(layout.inbox)
    assert len(files_in(layout.done)) == 30
    fd = try_lock(layout.inbox)
    assert isinstance(fd, int)
    os.close(fd)


def test_a_claim_found_unreadable_at_take_up_is_set_aside_from_its_own_thread(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A claim file an earlier run left zero-filled, no journal record: its file goes to failed."""
    layout = Folders(tmp_path)
    config = layout.config(emulator, [PDF], **OWN)
    with RunningDaemon(config):  # makes the work area as flowflexd keeps it
        pass
    claim = layout.inbox / ".flowflexd" / "work" / "0123456789abcdef0123456789abcdef"
    claim.mkdir(mode=0o700)
    drop(claim, "lost.pdf", b"%PDF lost" + PDF_END)
    (claim / "claim.jsonl").write_bytes(b"\0" * 64)

    with RunningDaemon(config):
        wait_until(lambda: "lost.pdf" in files_in(layout.failed))
    report = json.loads((layout.failed / "lost.pdf.error.json").read_text())
    assert report["code"] == "CLAIM_UNREADABLE"
    assert not claims_in(layout.inbox)
    assert emulator.events() == []  # never sent under a new key


def test_a_held_inbox_gives_back_its_files_and_the_destinations_probe(
    tmp_path: Path, emulator: Emulator
) -> None:
    """FlowFlex down and a share silent at once: the probe from that share must not block others.

    No worker threads run here, so what the scheduler hands the pool stays
    unstarted, as a job queued behind busy workers does.
    """
    layout = Folders(tmp_path)
    folder = load(layout.config(emulator, [PDF], **OWN)).folders[0]
    ledger = Ledger()
    pipeline = Pipeline({DEFAULT_DESTINATION: client_for(emulator)}, Journal(tmp_path / "state"))
    scheduler = Scheduler(pipeline, ledger, workers=1, settle_seconds=0.0, report=lambda *_: None)
    inbox = _inbox_by_hand(folder, ledger)
    for n in range(3):
        drop(layout.inbox, f"f{n}.pdf", b"%PDF f" + PDF_END)
    inbox.tracker.rescan()
    ready = wait_until(lambda: inbox.tracker.step(time.monotonic() + 1), what="files ready")
    scheduler.queue(inbox, ready)
    now = time.monotonic()
    scheduler.gate.trip(Pause.OUTAGE, "FlowFlex is down", now, probe=False)
    scheduler.dispatch(now + 3600, [inbox])  # the probe is due: one file goes to probe
    assert scheduler.gate.probing and scheduler.pool.busy == 1

    scheduler.hold(inbox)
    assert not scheduler.gate.probing  # a file of another inbox may probe now
    assert scheduler.pool.busy == 0 and not scheduler.lanes[DEFAULT_DESTINATION].busy()
    assert ledger.count(Stage.READY, folder=str(layout.inbox)) == 3  # none lost, none in flight

    scheduler.unhold(inbox)
    names = [r.name for _, r in scheduler.lanes[DEFAULT_DESTINATION].waiting]
    assert sorted(names) == ["f0.pdf", "f1.pdf", "f2.pdf"]
    inbox.close()


def test_a_file_finished_while_its_release_waits_for_the_inbox_is_left_to_the_daemon(
    tmp_path: Path, emulator: Emulator
) -> None:
    """The scheduler finishes a file's ticket at once; its inbox, lent to its own thread,
    hears of the release only with the step's answer. A reload's re-judging or a step
    in between must leave that file alone (it raised IllegalMove: seen once in 30 runs).
    """
    layout = Folders(tmp_path)
    folder = load(layout.config(emulator, [PDF], **OWN)).folders[0]
    ledger = Ledger()
    inbox = _inbox_by_hand(folder, ledger)
    drop(layout.inbox, "a.pdf", b"%PDF a" + PDF_END)
    inbox.tracker.rescan()
    [ready] = wait_until(lambda: inbox.tracker.step(time.monotonic() + 1), what="a.pdf ready")
    ledger.move(ready.ticket, Stage.IN_FLIGHT)  # handed to a worker, as the scheduler does
    inbox.out += 1  # a step is out in the inbox's own thread
    ledger.finish(ready.ticket)  # the worker's report: done
    inbox.release(ready)  # waits for the step's answer

    inbox.tracker.reconfigure(folder, settle_seconds=0.0)  # what a reload does there
    inbox.tracker.note("a.pdf")
    assert inbox.tracker.step(time.monotonic() + 1) == []  # still the daemon's

    inbox.answered()  # the release is told now: the name is looked at afresh
    [again] = inbox.tracker.step(time.monotonic() + 1)  # a.pdf is still here (never moved)
    assert again.name == "a.pdf" and again.ticket is not ready.ticket
    inbox.close()
