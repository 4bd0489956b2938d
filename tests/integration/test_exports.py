"""What ERP and capture software export: a file is taken once its marker says it is complete."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import PDF_END, Folders, RunningDaemon, drop, files_in, read_report, wait_until

from flowflexd.emulator import Emulator
from flowflexd.engine.lifecycle import Stage

MARKED = {"name": "inv", "pattern": "INV-*.pdf", "event": "invoice", "marker": "{name}.ok"}


@pytest.fixture
def layout(tmp_path: Path) -> Folders:
    return Folders(tmp_path)


def test_a_file_waits_for_its_marker_and_the_marker_travels_with_it(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [MARKED])) as running:
        drop(layout.inbox, "INV-7.pdf", b"%PDF invoice 7" + PDF_END)
        wait_until(lambda: running.daemon.ledger.count(Stage.WAITING) == 1)  # settled, waits
        assert emulator.events() == []
        drop(layout.inbox, "INV-7.pdf.ok", b"")  # empty: the usual marker
        wait_until(lambda: files_in(layout.done) == {"INV-7.pdf", "INV-7.pdf.ok"})

    [event] = emulator.events()
    assert [a["filename"] for a in event["assets"].values()] == ["INV-7.pdf"]  # not the marker


def test_a_marker_that_comes_first_waits_for_its_file(layout: Folders, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [MARKED])):
        drop(layout.inbox, "INV-8.pdf.ok", b"done at 12:00\n")  # any content counts
        drop(layout.inbox, "INV-8.pdf", b"%PDF invoice 8" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"INV-8.pdf", "INV-8.pdf.ok"})

    assert len(emulator.events()) == 1


def test_a_marker_that_never_comes_fails_the_file_unsent(
    layout: Folders, emulator: Emulator
) -> None:
    rule = {**MARKED, "marker_timeout": 0.5}
    with RunningDaemon(layout.config(emulator, [rule])):
        drop(layout.inbox, "INV-9.pdf", b"%PDF invoice 9" + PDF_END)
        wait_until(lambda: "INV-9.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "INV-9.pdf")
    assert report["code"] == "MARKER_MISSING"
    assert "INV-9.pdf.ok did not arrive within 0.5 s" in report["reason"]
    assert emulator.events() == []
