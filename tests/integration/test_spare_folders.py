"""Spare claim folders: a finished claim's folder, emptied, is the next claim's folder.

Real spools, journals and folders, files carried to the emulator. What must
hold: a spare is never mistaken for a claim, a claim never inherits anything
from the claim before it, and a start cleans up what a kill left mid-claim.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from support import PDF_END, SpoolRun, claim_dirs, files_in, read_claim

from flowflexd.emulator import Emulator
from flowflexd.engine.outcomes import Verdict
from flowflexd.inbox import spool as spool_module
from flowflexd.inbox.spool import SPARE_PREFIX, Spool, Unreadable


def spares(run: SpoolRun) -> list[Path]:
    return sorted(p for p in run.spool.work.iterdir() if p.name.startswith(SPARE_PREFIX))


def test_a_finished_claims_folder_is_kept_empty_and_the_next_claim_takes_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    run = SpoolRun(tmp_path, emulator)
    first = run.deliver("a.pdf")
    run.pipeline.commits.commit()

    [spare] = spares(run)
    assert claim_dirs(run.layout.inbox) == []
    assert run.spool.claimed_count() == 0  # status counts claims, not spares
    assert os.listdir(spare) == ["claim.jsonl"]
    assert (spare / "claim.jsonl").stat().st_size == 0  # nothing of the first claim
    folder = spare.stat().st_ino

    second = run.claim("b.pdf")

    assert spares(run) == []
    assert second.dir.stat().st_ino == folder  # renamed into place, not made anew
    assert read_claim(second.dir)["id"] == second.id != first.id
    assert (second.dir / "claim.jsonl").read_bytes().count(b"\n") == 1  # its record alone
    assert run.pipeline.carry(run.spool, second).verdict is Verdict.DONE
    run.pipeline.commits.commit()
    assert files_in(run.layout.done) == {"a.pdf", "b.pdf"}
    assert len(emulator.events()) == 2


def test_spares_are_kept_up_to_a_limit_and_a_start_removes_the_rest(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SPARES_KEPT", 2)
    run = SpoolRun(tmp_path, emulator)
    for i in range(4):
        run.deliver(f"f-{i}.pdf")
    run.pipeline.commits.commit()
    assert len(spares(run)) == 2  # the other two folders were removed
    assert claim_dirs(run.layout.inbox) == []

    monkeypatch.setattr(spool_module, "SPARES_KEPT", 1)
    again = Spool(run.folder)

    assert list(again.pending()) == []  # spares are not claims left by a run
    assert len(spares(run)) == 1


def test_a_start_removes_a_claim_folder_killed_before_its_record_was_written(
    tmp_path: Path, emulator: Emulator
) -> None:
    run = SpoolRun(tmp_path, emulator)
    # A kill after a spare was renamed into place, or a folder made, before the record.
    renamed = run.spool.work / uuid.uuid4().hex
    renamed.mkdir()
    (renamed / "claim.jsonl").write_bytes(b"")
    made = run.spool.work / uuid.uuid4().hex
    made.mkdir()

    assert list(Spool(run.folder).pending()) == []
    assert list(run.spool.work.iterdir()) == []
    assert not (run.layout.inbox / ".flowflexd" / "aside").exists()


def test_a_spare_that_holds_something_is_not_reused_but_set_aside(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Only flowflexd writes there; a spare with content was changed by someone else."""
    run = SpoolRun(tmp_path, emulator)
    run.deliver("a.pdf")
    run.pipeline.commits.commit()
    [spare] = spares(run)
    (spare / "claim.jsonl").write_bytes(b"not a claim\n")
    (spare / "stray.pdf").write_bytes(b"%PDF stray" + PDF_END)

    again = Spool(run.folder)
    [found] = list(again.pending())

    assert isinstance(found, Unreadable) and found.dir == spare
    assert found.files() == ["stray.pdf"]  # kept for the daemon to set aside, never removed
    later = run.claim("b.pdf", again)  # a new claim does not take it
    assert later.dir != spare and spare.is_dir()
    assert (spare / "stray.pdf").exists()


def test_spares_taken_while_the_work_area_is_listed_hide_no_claim_left_by_a_run(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inbox taken up again while workers claim: a spare one of them takes between the
    listing and the look at its folder is gone, and the listing goes on without it."""
    run = SpoolRun(tmp_path, emulator)
    for i in range(3):
        run.deliver(f"before-{i}.pdf")
    run.pipeline.commits.commit()
    left = run.claim("left.pdf")  # took one of the three spares
    assert len(spares(run)) == 2
    taken = tmp_path / "taken"
    taken.mkdir()
    real = spool_module._age

    def age(entry: os.DirEntry[str]) -> float | None:
        if not any(taken.iterdir()):  # at the first look: the other spares are taken
            for spare in spares(run):
                if spare.name != entry.name:
                    spare.rename(taken / spare.name)
        return real(entry)

    monkeypatch.setattr(spool_module, "_age", age)
    again = Spool(run.folder)  # a spool that does not carry ``left``: the earlier run's

    [found] = list(again.pending())

    assert any(taken.iterdir())
    assert not isinstance(found, Unreadable) and found.id == left.id
