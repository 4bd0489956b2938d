"""The group commit: a delivered file shows in done at once, its claim goes with the commit.

Real spools, journals and folders, a pipeline carrying claims to the emulator;
the commit is driven by hand where the daemon's loop would drive it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support import PDF_END, SpoolRun, claim_dirs, drop, files_in

from flowflexd.emulator import Emulator
from flowflexd.engine import groupcommit
from flowflexd.engine.groupcommit import RETRY_AFTER
from flowflexd.inbox.spool import Claim


def whole(claim: Claim) -> bool:
    """The claim is still in the work area with its file: a restart would carry it on."""
    return claim.path("file").is_file() and (claim.dir / "claim.jsonl").is_file()


def test_a_file_is_in_done_at_once_and_its_claim_goes_with_the_commit(
    tmp_path: Path, emulator: Emulator
) -> None:
    run = SpoolRun(tmp_path, emulator)
    claims = [run.deliver(f"a-{i}.pdf") for i in range(3)]

    assert files_in(run.layout.done) == {"a-0.pdf", "a-1.pdf", "a-2.pdf"}
    assert run.records() == ["a-0.pdf", "a-1.pdf", "a-2.pdf"]  # written, one each
    for claim in claims:
        assert whole(claim)  # until the commit, the claim is what a crash resumes from
        assert os.path.samefile(claim.path("file"), run.layout.done / claim.name)
        assert claim.id in run.spool.carried
    due = run.pipeline.commits.due()
    assert due is not None and due <= time.monotonic() + groupcommit.COMMIT_AFTER

    run.pipeline.commits.commit()

    assert claim_dirs(run.layout.inbox) == []
    assert not any(c.id in run.spool.carried for c in claims)
    assert (run.layout.done / "a-1.pdf").read_bytes() == b"%PDF a-1.pdf" + PDF_END
    assert run.pipeline.commits.due() is None
    assert len(emulator.events()) == 3


def test_a_full_batch_commits_at_once_in_the_worker_that_filled_it(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(groupcommit, "COMMIT_MAX", 3)
    run = SpoolRun(tmp_path, emulator)
    first = [run.deliver(f"b-{i}.pdf") for i in range(2)]
    assert all(whole(c) for c in first)

    third = run.deliver("b-2.pdf")  # the third fills the batch

    assert not any(c.dir.exists() for c in [*first, third])
    assert len(run.pipeline.commits) == 0


def test_a_done_folder_away_at_the_commit_keeps_the_claims_until_it_is_back(
    tmp_path: Path, emulator: Emulator
) -> None:
    run = SpoolRun(tmp_path, emulator)
    claim = run.deliver("c.pdf")
    away = tmp_path / "done-away"
    run.layout.done.rename(away)  # a share that went away: its fsync fails

    run.pipeline.commits.commit()

    assert whole(claim)
    assert claim.id in run.spool.carried
    assert len(run.pipeline.commits) == 1
    away.rename(run.layout.done)
    now = time.monotonic()
    run.pipeline.commits.commit_due(now)  # held: not tried again at once
    assert whole(claim)
    run.pipeline.commits.commit_due(now + RETRY_AFTER + 1)

    assert not claim.dir.exists()
    assert files_in(run.layout.done) == {"c.pdf"}
    assert run.records() == ["c.pdf"]


def test_an_inbox_away_at_the_commit_does_not_hand_its_claims_out_again(
    tmp_path: Path, emulator: Emulator
) -> None:
    run = SpoolRun(tmp_path, emulator)
    claim = run.deliver("d.pdf")
    later = run.deliver("e.pdf")
    away = tmp_path / "inbox-away"
    run.layout.inbox.rename(away)  # remounted: the work area went with it

    run.pipeline.commits.commit()

    assert claim.id in run.spool.carried and later.id in run.spool.carried
    away.rename(run.layout.inbox)
    # The inbox back: what an earlier run left is resumed, what this one carries is not.
    assert list(run.spool.pending()) == []
    run.pipeline.commits.commit()  # stuck claims are tried on every full commit

    assert claim_dirs(run.layout.inbox) == []
    assert run.records() == ["d.pdf", "e.pdf"]  # none finished twice
    assert len(emulator.events()) == 2


def test_a_claim_whose_folder_someone_removed_is_not_held_forever(
    tmp_path: Path, emulator: Emulator
) -> None:
    run = SpoolRun(tmp_path, emulator)
    claim = run.deliver("f.pdf")
    for entry in claim.dir.iterdir():  # someone tidies the work area
        entry.unlink()
    claim.dir.rmdir()

    run.pipeline.commits.commit()

    assert len(run.pipeline.commits) == 0
    assert claim.id not in run.spool.carried
    assert files_in(run.layout.done) == {"f.pdf"}


def test_a_claim_whose_inbox_is_away_is_not_placed_as_if_moved_already(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Found by the reload-and-remount test: with the inbox away, a claim's folder
    shows no files, which a crash part-way through a move also leaves. Placing
    nothing then called the file done while it waited in the claim folder."""
    run = SpoolRun(tmp_path, emulator)
    drop(run.layout.inbox, "g.pdf", b"%PDF g" + PDF_END)
    claim = run.spool.claim({"file": "g.pdf"}, rule="pdf")
    assert claim is not None
    away = tmp_path / "inbox-away"
    run.layout.inbox.rename(away)

    with pytest.raises(FileNotFoundError):
        run.spool.place(claim)

    away.rename(run.layout.inbox)
    placed = run.spool.place(claim)
    assert placed.linked == (claim.path("file"),)
    assert files_in(run.layout.done) == {"g.pdf"}


def test_a_claim_that_cannot_be_removed_is_said_once_and_removed_when_it_can(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    run = SpoolRun(tmp_path, emulator)
    claim = run.deliver("h.pdf")
    stray = claim.dir / "notes.txt"
    stray.write_text("someone's file, not ours to delete")

    run.pipeline.commits.commit()
    run.pipeline.commits.commit()

    said = [line for line in capsys.readouterr().out.splitlines() if "cannot remove" in line]
    assert len(said) == 2  # tried twice
    assert ["[warning" in line for line in said] == [True, False]  # said at warning once
    assert "Directory not empty" in said[0]
    assert claim.dir.is_dir() and stray.read_text().startswith("someone's")
    assert claim.id in run.spool.carried
    stray.rename(tmp_path / "notes.txt")  # its owner takes it back
    run.pipeline.commits.commit()

    assert not claim.dir.exists()
    assert files_in(run.layout.done) == {"h.pdf"}
    assert claim.id not in run.spool.carried
