"""Crashes: SIGKILL at each step of a file's journey, and at random under failing FlowFlex."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from support import (
    Folders,
    claim_dirs,
    claims_in,
    drop,
    files_in,
    read_claim,
    read_report,
    run_daemon,
    sha256,
    wait_until,
    write_config,
)

from flowflexd.emulator import Emulator
from flowflexd.inbox.spool import SPARE_PREFIX
from flowflexd.support.crashpoints import POINTS, SPARE_TAKEN

ROOT = Path(__file__).resolve().parents[2]


def layout(tmp_path: Path, emulator: Emulator, **rule: object) -> Path:
    (tmp_path / "inbox").mkdir()
    rules = [{"name": "inv", "pattern": "*.pdf", "event": "inv", "sidecar": "{stem}.json", **rule}]
    return write_config(
        tmp_path / "config.yaml",
        emulator,
        folders=[
            {
                "path": str(tmp_path / "inbox"),
                "done": str(tmp_path / "done"),
                "failed": str(tmp_path / "failed"),
                "rules": rules,
            }
        ],
    )


def claims(tmp_path: Path) -> list[dict[str, object]]:
    return claims_in(tmp_path / "inbox")


def run_until_killed(config: Path, point: str) -> None:
    proc = run_daemon(config, FLOWFLEXD_CRASH_AT=point)
    try:
        assert proc.wait_exit(timeout=30) == -9, proc.output()
    finally:
        proc.stop()


def run_until(config: Path, condition: object) -> str:
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        wait_until(condition, timeout=30)  # type: ignore[arg-type]
        proc.proc.terminate()
        assert proc.wait_exit() == 0
    finally:
        proc.stop()
    return proc.output()


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_step_loses_nothing_and_sends_once(
    tmp_path: Path, emulator: Emulator, point: str
) -> None:
    config = layout(tmp_path, emulator)
    inbox = tmp_path / "inbox"
    drop(inbox, "INV-1.json", b'{"n": 1}')
    drop(inbox, "INV-1.pdf", b"%PDF crash test\n%%EOF")

    run_until_killed(config, point)
    [claim] = claims(tmp_path)  # the file is claimed, with its key, whatever the step
    # Killed before the commit, the files are in done already: the journey is over
    # once the claim has left the work area too (a stop before a worker took the
    # resumed claim would rightly leave it for the next start). Claim folders are
    # counted, not read: the daemon empties a finished claim's file just before
    # it renames the folder into a spare, and a read between the two finds no claim.
    every = {"INV-1.pdf", "INV-1.json"}
    run_until(config, lambda: files_in(tmp_path / "done") == every and not claim_dirs(inbox))

    assert (tmp_path / "done" / "INV-1.pdf").read_bytes() == b"%PDF crash test\n%%EOF"
    assert (tmp_path / "done" / "INV-1.json").read_bytes() == b'{"n": 1}'
    assert files_in(inbox) == set()
    assert files_in(tmp_path / "failed") == set()
    assert claims(tmp_path) == []
    [event] = emulator.events()
    assert event["idempotency_key"] == claim["key"]
    assert next(iter(event["assets"].values()))["sha256"] == sha256(b"%PDF crash test\n%%EOF")
    assert emulator.stats()["asset_missing"] == 0


def test_a_kill_while_moving_to_failed_keeps_the_reason(tmp_path: Path, emulator: Emulator) -> None:
    config = layout(tmp_path, emulator)
    inbox = tmp_path / "inbox"
    drop(inbox, "INV-2.json", b"{not json")  # found out only once claimed
    drop(inbox, "INV-2.pdf", b"%PDF\n%%EOF")

    run_until_killed(config, "during_move")
    run_until(config, lambda: "INV-2.pdf.error.json" in files_in(tmp_path / "failed"))

    report = read_report(tmp_path / "failed", "INV-2.pdf")
    assert report["code"] == "SIDECAR_INVALID"
    assert files_in(tmp_path / "failed") == {"INV-2.pdf", "INV-2.json", "INV-2.pdf.error.json"}
    assert emulator.events() == []


def test_a_power_cut_before_the_group_commit_loses_nothing_and_sends_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    """What a power cut may leave of a file delivered but not yet committed: the claim
    (durable before the event), without the journal record or the links into done,
    which were not fsynced yet. The claim alone carries the file on under its key."""
    config = layout(tmp_path, emulator)
    drop(tmp_path / "inbox", "INV-3.json", b'{"n": 3}')
    drop(tmp_path / "inbox", "INV-3.pdf", b"%PDF power cut\n%%EOF")
    run_until_killed(config, "before_commit")
    [claim] = claims(tmp_path)
    assert files_in(tmp_path / "done") == {"INV-3.pdf", "INV-3.json"}
    # The page cache lost with the power: the record and the new names.
    journal = tmp_path / "state" / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["claim"] == claim["id"]
    journal.write_bytes(b"".join(lines[:-1]))
    for name in ("INV-3.pdf", "INV-3.json"):
        (tmp_path / "done" / name).unlink()

    run_until(config, lambda: files_in(tmp_path / "done") == {"INV-3.pdf", "INV-3.json"})

    assert (tmp_path / "done" / "INV-3.pdf").read_bytes() == b"%PDF power cut\n%%EOF"
    assert claims(tmp_path) == []
    [event] = emulator.events()  # FlowFlex acted once; the resend was answered as a replay
    assert event["idempotency_key"] == claim["key"]
    assert emulator.stats()["event_replays"] == 1
    records = [json.loads(line) for line in journal.read_bytes().splitlines()]
    assert [(r["claim"], r["outcome"]) for r in records] == [(claim["id"], "done")]


def test_an_upload_older_than_the_margin_is_redone_before_the_event(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = layout(tmp_path, emulator)
    drop(tmp_path / "inbox", "OLD.json", b"{}")
    drop(tmp_path / "inbox", "OLD.pdf", b"%PDF old\n%%EOF")
    run_until_killed(config, "after_upload")
    # Two days pass: FlowFlex deleted the asset; the claim says when it went up.
    emulator.clock.advance(49 * 3600)
    [claim_dir] = claim_dirs(tmp_path / "inbox")
    claim = read_claim(claim_dir)
    for upload in claim["uploads"].values():
        upload["uploaded_at"] -= 49 * 3600
    with (claim_dir / "claim.jsonl").open("a") as fh:  # as if uploaded two days ago
        fh.write(json.dumps(claim) + "\n")
    old_asset = claim["uploads"]["file"]["asset_id"]

    run_until(config, lambda: "OLD.pdf" in files_in(tmp_path / "done"))

    [event] = emulator.events()
    assert event["payload"]["assetId"] != old_asset
    assert event["idempotency_key"] == claim["key"]
    assert emulator.stats()["asset_missing"] == 0


def test_a_kill_after_a_spare_folder_was_taken_leaves_nothing_behind(
    tmp_path: Path, emulator: Emulator
) -> None:
    """The second file's claim takes the first one's emptied folder and is killed before
    its record is written: the start removes that folder, and the file goes once."""
    config = layout(tmp_path, emulator)
    inbox = tmp_path / "inbox"
    work = inbox / ".flowflexd" / "work"
    proc = run_daemon(config, FLOWFLEXD_CRASH_AT=SPARE_TAKEN)
    try:
        proc.wait_for_log("flowflexd ready")
        drop(inbox, "INV-1.json", b'{"n": 1}')
        drop(inbox, "INV-1.pdf", b"%PDF one\n%%EOF")
        wait_until(lambda: any(p.name.startswith(SPARE_PREFIX) for p in work.iterdir()))
        drop(inbox, "INV-2.json", b'{"n": 2}')
        drop(inbox, "INV-2.pdf", b"%PDF two\n%%EOF")
        assert proc.wait_exit(timeout=30) == -9, proc.output()
    finally:
        proc.stop()
    [left] = claim_dirs(inbox)  # the spare, renamed into place, its claim file empty
    assert os.listdir(left) == ["claim.jsonl"] and (left / "claim.jsonl").stat().st_size == 0
    assert files_in(inbox) == {"INV-2.pdf", "INV-2.json"}

    every = {"INV-1.pdf", "INV-1.json", "INV-2.pdf", "INV-2.json"}
    output = run_until(config, lambda: files_in(tmp_path / "done") == every)

    assert claim_dirs(inbox) == []
    assert files_in(tmp_path / "failed") == set()
    assert not (inbox / ".flowflexd" / "aside").exists()
    assert "could not be read" not in output
    keys = [e["idempotency_key"] for e in emulator.events()]
    assert len(keys) == len(set(keys)) == 2  # each file once


def test_an_asset_lost_by_flowflex_is_uploaded_again(tmp_path: Path, emulator: Emulator) -> None:
    config = layout(tmp_path, emulator)
    drop(tmp_path / "inbox", "GONE.json", b"{}")
    drop(tmp_path / "inbox", "GONE.pdf", b"%PDF\n%%EOF")
    run_until_killed(config, "after_upload")
    emulator.clock.advance(49 * 3600)  # the claim still thinks its upload is fresh

    run_until(config, lambda: "GONE.pdf" in files_in(tmp_path / "done"))

    assert len(emulator.events()) == 1
    assert emulator.stats()["asset_missing"] == 1  # answered once, then re-uploaded


def test_chaos_500_files_20_kills_under_a_20_percent_fail_rate(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            "--files",
            "500",
            "--kills",
            "20",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    result = json.loads(out.read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["files"] == 500
    assert result["kills"] == 20
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["unsent"] == 0
    assert result["events"] == 500
    assert result["asset_missing"] == 0
    assert result["left_in_inbox"] == result["left_in_failed"] == result["left_claimed"] == 0
    assert result["daemon_exited"] is None  # it stopped only when killed or told to
    assert result["injected_failures"] > 100  # the run met real trouble
    assert result["lost_answers"] > 0


# ------------------------------------------------------- corrupted state


# How a power cut, a full disk or a person can leave the state behind.
def zero_fill(path: Path) -> None:
    path.write_bytes(b"\0" * max(path.stat().st_size, 1))


def tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, len(data) - 7)])


def mistype(path: Path) -> None:
    claim = json.loads(path.read_text().splitlines()[-1])
    claim["members"] = {"file": ["not", "a", "name"]}
    path.write_text(json.dumps(claim) + "\n")


def drop_field(path: Path) -> None:
    claim = json.loads(path.read_text().splitlines()[-1])
    del claim["key"]
    path.write_text(json.dumps(claim) + "\n")


def make_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def remove(path: Path) -> None:
    path.unlink()


CLAIM_DAMAGE = [zero_fill, tear, mistype, drop_field, make_folder, remove]


def damage_journal(state: Path, rng: random.Random) -> str:
    journal = state / "journal.jsonl"
    kind = rng.choice(["torn", "mistyped", "none"])
    if kind == "torn" and journal.exists():
        with journal.open("ab") as fh:
            fh.write(b'{"claim": "c-torn", "outco')
    elif kind == "mistyped":
        with journal.open("ab") as fh:
            fh.write(b'{"claim": ["x"], "outcome": "done", "folder": 1}\n')
    return kind


@pytest.mark.parametrize("seed", range(8))
def test_corrupted_state_never_stops_a_start_and_nothing_is_sent_twice(
    tmp_path: Path, emulator: Emulator, seed: int
) -> None:
    rng = random.Random(seed)
    config = layout(tmp_path, emulator)
    inbox = tmp_path / "inbox"
    bodies = {}
    for i in range(3):
        body = f"%PDF round {seed} file {i}\n%%EOF".encode()
        bodies[f"INV-{i}.pdf"] = body
        drop(inbox, f"INV-{i}.json", b'{"n": %d}' % i)
        drop(inbox, f"INV-{i}.pdf", body)
    point = rng.choice(POINTS)
    run_until_killed(config, point)
    damaged = []
    # Emptied folders kept for reuse hold no claim file: nothing there to damage.
    for claim_dir in claim_dirs(inbox):
        claim_file = claim_dir / "claim.jsonl"
        if not claim_file.is_file() or claim_file.stat().st_size == 0:
            # Another worker was making its claim when the kill came (its folder
            # made, its first line not yet written): a state of its own, left as is.
            damaged.append("none: claim not yet written")
            continue
        harm = rng.choice(CLAIM_DAMAGE)
        harm(claim_file)
        damaged.append(harm.__name__)
    journal_damage = damage_journal(tmp_path / "state", rng)
    what = f"killed {point}, claims {damaged}, journal {journal_damage}"

    def settled() -> bool:
        if claim_dirs(inbox):
            return False
        failed = files_in(tmp_path / "failed")
        ended = files_in(tmp_path / "done") | failed
        if len({n.split(" (")[0] for n in ended if n.endswith(".pdf")}) < len(bodies):
            return False
        # A claim killed after taking its document and before its sidecar, then
        # found unreadable, cannot say what its sidecar was: that sidecar waits in
        # the inbox for the document's replay. Nothing else may stay there.
        return all(
            name.endswith(".json") and f"{name.removesuffix('.json')}.pdf" in failed
            for name in files_in(inbox)
        )

    output = run_until(config, settled)

    assert "Traceback" not in output, what
    ended = sorted(
        name
        for folder in (tmp_path / "done", tmp_path / "failed")
        for name in files_in(folder)
        if name.endswith(".pdf")
    )
    # Every file ended once, in done or in failed (a name may carry a claim's short id).
    assert sorted(n.split(" (")[0].removesuffix(".pdf") + ".pdf" for n in ended) == sorted(
        bodies
    ), what
    sent = [next(iter(e["assets"].values()))["sha256"] for e in emulator.events()]
    for name, body in bodies.items():
        assert sent.count(sha256(body)) <= 1, f"{name} was sent twice; {what}"
        in_done = any(n.startswith(name.removesuffix(".pdf")) for n in files_in(tmp_path / "done"))
        if in_done:
            assert sent.count(sha256(body)) == 1, f"{name} is in done but was never sent; {what}"


@pytest.mark.parametrize("point", ["after_claim", "after_send"])
def test_a_claim_from_a_subfolder_resumes_after_a_kill(
    tmp_path: Path, emulator: Emulator, point: str
) -> None:
    (tmp_path / "inbox" / "scanner-3").mkdir(parents=True)
    rule = {"name": "inv", "pattern": "*.pdf", "event": "inv", "sidecar": "{stem}.json"}
    spec = {
        "path": str(tmp_path / "inbox"),
        "done": str(tmp_path / "done" / "{dir}"),
        "failed": str(tmp_path / "failed"),
        "recursive": True,
        "rules": [rule],
    }
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])
    drop(tmp_path / "inbox" / "scanner-3", "INV-9.json", b'{"n": 9}')
    drop(tmp_path / "inbox" / "scanner-3", "INV-9.pdf", b"%PDF nested\n%%EOF")

    run_until_killed(config, point)
    [claim] = claims(tmp_path)
    assert claim["below"] == "scanner-3"
    done = tmp_path / "done" / "scanner-3"
    run_until(config, lambda: files_in(done) == {"INV-9.pdf", "INV-9.json"})

    [event] = emulator.events()
    assert event["idempotency_key"] == claim["key"]
    assert files_in(tmp_path / "inbox" / "scanner-3") == set()


def test_a_kill_in_the_middle_of_a_200_row_manifest_sends_each_row_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    rule = {
        "name": "batch",
        "manifest": "*.idx.csv",
        "file_column": "{row.File}",
        "event": "document.indexed",
        "payload": {"assetId": "{file}", "row": "{manifest.row}"},
    }
    folders = Folders(tmp_path)
    inbox = folders.inbox
    config = folders.config(emulator, [rule])
    names = [f"doc-{i:03}.pdf" for i in range(200)]
    for name in names:
        drop(inbox, name, b"%PDF " + name.encode() + b"\n%%EOF")
    drop(inbox, "B.idx.csv", ("File\n" + "\n".join(names) + "\n").encode())
    emulator.set_faults(latency_ms=5)  # slow enough to be killed part-way

    proc = run_daemon(config)
    try:
        wait_until(lambda: len(emulator.events()) >= 60, timeout=60)
        proc.proc.kill()  # SIGKILL, in the middle of the batch
        assert proc.wait_exit() == -9
    finally:
        proc.stop()
    sent_before_kill = len(emulator.events())
    assert 60 <= sent_before_kill < 200
    [claim] = claims(tmp_path)

    emulator.set_faults(latency_ms=0)
    run_until(config, lambda: len(files_in(tmp_path / "done")) == 201)

    events = emulator.events()
    assert sorted(e["payload"]["row"] for e in events) == list(range(1, 201))  # once each
    assert len({e["idempotency_key"] for e in events}) == 200
    assert all(e["idempotency_key"] != claim["key"] for e in events)  # each row its own key
    assert files_in(inbox) == set()
    assert claims(tmp_path) == []
