"""A file is sent only when whole: writers that pause, copies that set the size first,
clients that die mid-file, and files that change under the daemon. Real daemon, real
emulator over HTTP, real writer processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import (
    Folders,
    RunningDaemon,
    claims_in,
    drop,
    files_in,
    nothing_sent,
    pdf,
    read_report,
    sha256,
    wait_until,
)

from flowflexd.emulator import Emulator
from flowflexd.engine import journal

PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}

# A writer in its own process, as a transfer server is: it opens the file,
# writes what it reads from stdin (one hex-encoded chunk per line), flushes,
# and says "wrote" after each chunk; the file stays open until stdin closes.
WRITER = """
import sys
mode, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, mode) as fh:
    if size:
        fh.truncate(size)
    for line in sys.stdin:
        fh.write(bytes.fromhex(line.strip()))
        fh.flush()
        print("wrote", flush=True)
"""


class Writer:
    def __init__(self, path: Path, *, mode: str = "wb", size: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, mode, str(path), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(data.hex() + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "wrote\n"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@contextmanager
def writer(path: Path, **options: object) -> Iterator[Writer]:
    w = Writer(path, **options)  # type: ignore[arg-type]
    try:
        yield w
    finally:
        if w.proc.poll() is None:
            w.kill()


@pytest.fixture
def layout(tmp_path: Path) -> Folders:
    return Folders(tmp_path)


def incomplete(running: RunningDaemon) -> bool:
    return bool(running.daemon.snapshot.incomplete)


def event_sha(emulator: Emulator) -> str:
    [event] = emulator.events()
    [asset] = event["assets"].values()
    return str(asset["sha256"])


def test_a_writer_paused_longer_than_settle_is_not_sent_until_it_closes(
    layout: Folders, emulator: Emulator
) -> None:
    first, second = b"%PDF-1.7\n" + os.urandom(200_000), os.urandom(200_000) + b"\n%%EOF\n"
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=0.3)) as running:
        with writer(layout.inbox / "x.pdf") as w:
            w.write(first)
            # Settled for the tracker, yet still open: it waits, unsent.
            wait_until(lambda: incomplete(running), what="the file judged open for writing")
            nothing_sent(emulator)
            assert files_in(layout.inbox) == {"x.pdf"}
            w.write(second)
            w.close()
        wait_until(lambda: "x.pdf" in files_in(layout.done))

    assert event_sha(emulator) == sha256(first + second)
    assert (layout.done / "x.pdf").read_bytes() == first + second


def test_a_copy_that_set_the_full_size_first_waits_for_its_end(
    layout: Folders, emulator: Emulator
) -> None:
    """A Windows copy over SMB: size first, then the fill; the writer may close in between."""
    data = pdf(os.urandom(300_000))
    path = layout.inbox / "win.pdf"
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=0.3)) as running:
        with writer(path, size=len(data)) as w:
            w.write(data[:100_000])
            w.close()  # nobody writes now, but the end was never written
        wait_until(lambda: incomplete(running), what="the unwritten end seen")
        nothing_sent(emulator)
        with writer(path, mode="r+b") as w:
            w.write(data)  # the rest, from the start as a re-copy does
            w.close()
        wait_until(lambda: "win.pdf" in files_in(layout.done))

    assert event_sha(emulator) == sha256(data)


def test_a_dead_clients_partial_pdf_is_never_sent(layout: Folders, emulator: Emulator) -> None:
    rules = [{**PDF, "incomplete_timeout": 1}]
    with RunningDaemon(layout.config(emulator, rules, settle_seconds=0.3)):
        with writer(layout.inbox / "dead.pdf") as w:
            w.write(b"%PDF-1.7\n" + os.urandom(100_000))
            w.kill()  # the client died: a prefix under the final name
        wait_until(lambda: "dead.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "dead.pdf")
    assert report["code"] == "INCOMPLETE_FILE"
    assert "%%EOF" in report["reason"]
    assert "never sent" in report["reason"]
    nothing_sent(emulator)


def test_a_partial_file_completed_before_the_timeout_is_sent(
    layout: Folders, emulator: Emulator
) -> None:
    data = pdf(os.urandom(50_000))
    path = layout.inbox / "late.pdf"
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=0.3)) as running:
        drop(layout.inbox, "late.pdf", data[:20_000])
        wait_until(lambda: incomplete(running), what="the missing trailer seen")
        with path.open("ab") as fh:
            fh.write(data[20_000:])
        wait_until(lambda: "late.pdf" in files_in(layout.done))

    assert event_sha(emulator) == sha256(data)


def test_verify_format_false_sends_a_file_without_its_trailer(
    layout: Folders, emulator: Emulator
) -> None:
    rules = [{**PDF, "verify_format": False}]
    with RunningDaemon(layout.config(emulator, rules, settle_seconds=0.3)):
        drop(layout.inbox, "raw.pdf", b"not really a pdf")
        wait_until(lambda: "raw.pdf" in files_in(layout.done))
    assert event_sha(emulator) == sha256(b"not really a pdf")


def test_an_attachment_cut_short_holds_its_file_back(layout: Folders, emulator: Emulator) -> None:
    rules = [{**PDF, "attach": {"photo": "{stem}.jpg"}, "incomplete_timeout": 1}]
    with RunningDaemon(layout.config(emulator, rules, settle_seconds=0.3)):
        drop(layout.inbox, "a.jpg", b"\xff\xd8 half a photo")
        drop(layout.inbox, "a.pdf", pdf())
        wait_until(lambda: "a.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "a.pdf")
    assert report["code"] == "INCOMPLETE_FILE"
    assert report["reason"].startswith("a.jpg is cut short")
    assert files_in(layout.failed) == {"a.pdf", "a.jpg", "a.pdf.error.json"}
    nothing_sent(emulator)


# ------------------------------------------------- changes after the claim


def claimed_path(inbox: Path, role: str = "file") -> Path:
    [claim] = claims_in(inbox)
    return inbox / ".flowflexd" / "work" / str(claim["id"]) / str(claim["members"][role])


def stored_assets(emulator: Emulator) -> int:
    return len(list((emulator.data_dir / "assets").glob("*.bin")))


def test_a_file_changed_during_its_upload_is_uploaded_again_under_the_same_key(
    layout: Folders, emulator: Emulator
) -> None:
    first = pdf(os.urandom(10_000))
    emulator.set_faults(latency_ms=700)  # each answer comes late: room to write meanwhile
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=0.3)):
        drop(layout.inbox, "grow.pdf", first)
        wait_until(lambda: stored_assets(emulator) == 1, what="the first upload stored")
        with claimed_path(layout.inbox).open("ab") as fh:
            fh.write(b"% appended by a writer that came back\n%%EOF\n")
        wait_until(lambda: "grow.pdf" in files_in(layout.done), timeout=30)

    final = (layout.done / "grow.pdf").read_bytes()
    assert final != first
    assert event_sha(emulator) == sha256(final)
    assert stored_assets(emulator) == 2  # uploaded again, fired once
    [record] = journal.read(layout.root / "state")
    assert record["sha256"] == sha256(final)


def test_a_writer_that_opens_a_claimed_file_holds_its_event_until_it_closes(
    layout: Folders, emulator: Emulator
) -> None:
    # The claim trusts a writer probe the tracker made just before; one that
    # comes after it is caught by the probe before the event.
    emulator.set_faults(latency_ms=700)
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=0.3)):
        drop(layout.inbox, "held.pdf", pdf(os.urandom(10_000)))
        wait_until(lambda: stored_assets(emulator) == 1, what="the first upload stored")
        with claimed_path(layout.inbox).open("ab") as writer:
            # Open, nothing written yet: only the probe can tell.
            quiet_until = time.monotonic() + 2.5  # three answer delays: no event meanwhile
            while time.monotonic() < quiet_until:
                assert emulator.events() == [], "an event fired while the file was open"
                time.sleep(0.1)
            writer.write(b"% a writer came back\n%%EOF\n")
        wait_until(lambda: "held.pdf" in files_in(layout.done), timeout=30)

    final = (layout.done / "held.pdf").read_bytes()
    assert final.endswith(b"% a writer came back\n%%EOF\n")
    assert event_sha(emulator) == sha256(final)  # one event, with what the writer left


def test_a_sidecar_rewritten_after_the_claim_is_read_again(
    layout: Folders, emulator: Emulator
) -> None:
    rules = [{**PDF, "sidecar": "{stem}.json", "payload": {"f": "{file}", "n": "{sidecar.n}"}}]
    emulator.set_faults(latency_ms=700)
    with RunningDaemon(layout.config(emulator, rules, settle_seconds=0.3)):
        drop(layout.inbox, "s.json", json.dumps({"n": 1}).encode())
        drop(layout.inbox, "s.pdf", pdf())
        wait_until(lambda: stored_assets(emulator) == 1, what="the first upload stored")
        sidecar = claimed_path(layout.inbox, "sidecar")
        sidecar.write_bytes(json.dumps({"n": 2}).encode())  # rewritten in place
        wait_until(lambda: "s.pdf" in files_in(layout.done), timeout=30)

    [event] = emulator.events()
    assert event["payload"]["n"] == 2
    assert json.loads((layout.done / "s.json").read_bytes()) == {"n": 2}


def test_a_file_changed_after_its_event_is_set_aside_with_the_reason(
    layout: Folders, emulator: Emulator
) -> None:
    data = pdf(os.urandom(10_000))
    emulator.set_faults(latency_ms=700)
    with RunningDaemon(layout.config(emulator, [PDF], settle_seconds=0.3)):
        drop(layout.inbox, "after.pdf", data)
        wait_until(emulator.events, what="the event received, its answer delayed")
        with claimed_path(layout.inbox).open("ab") as fh:
            fh.write(b"more\n%%EOF\n")
        wait_until(lambda: "after.pdf.error.json" in files_in(layout.failed), timeout=30)

    report = read_report(layout.failed, "after.pdf")
    assert report["code"] == "CHANGED_AFTER_EVENT"
    assert f"FlowFlex has the earlier content (sha256 {sha256(data)})" in report["reason"]
    assert event_sha(emulator) == sha256(data)
    assert files_in(layout.done) == set()
    [record] = journal.read(layout.root / "state")
    assert record["outcome"] == "done"
    assert "changed after its event" in record["changed_after_event"]
