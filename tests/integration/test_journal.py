"""The journal on real files: records, rotation, and reading across rotated files."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from support import folder_spec, status_json, write_config

from flowflexd.emulator import Emulator
from flowflexd.engine import journal
from flowflexd.engine.journal import Journal


def entry(i: int) -> dict[str, object]:
    return {"claim": f"c{i:04}", "folder": "/in", "file": f"f{i}.pdf", "outcome": "done"}


def line_bytes(i: int) -> int:
    return len(json.dumps(entry(i)).encode()) + 1


def test_records_are_lines_read_back_in_order(tmp_path: Path) -> None:
    book = Journal(tmp_path)
    for i in range(5):
        book.record(entry(i))
    book.close()

    assert [e["claim"] for e in journal.read(tmp_path)] == [f"c{i:04}" for i in range(5)]


def test_the_journal_rotates_and_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    per_file = 10
    book = Journal(tmp_path, rotate_bytes=per_file * line_bytes(0), keep=3)
    for i in range(95):
        book.record(entry(i))
    book.close()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2", "journal.jsonl.3"]
    # Nine rotations of ten records each: the oldest six files are gone, and
    # what is left reads back whole and in order, ending with the newest.
    kept = [e["claim"] for e in journal.read(tmp_path)]
    assert kept == [f"c{i:04}" for i in range(60, 95)]
    assert sum(1 for _ in (tmp_path / "journal.jsonl").open()) == 5


def test_a_journal_reopened_after_a_restart_rotates_on_its_real_size(tmp_path: Path) -> None:
    limit = 10 * line_bytes(0)
    book = Journal(tmp_path, rotate_bytes=limit, keep=2)
    for i in range(8):
        book.record(entry(i))
    book.close()

    book = Journal(tmp_path, rotate_bytes=limit, keep=2)
    for i in range(8, 12):
        book.record(entry(i))
    book.close()

    assert [e["claim"] for e in journal.read(tmp_path)][-1] == "c0011"
    first_file = [json.loads(x)["claim"] for x in (tmp_path / "journal.jsonl.1").open()]
    assert first_file == [f"c{i:04}" for i in range(10)]


def test_recovery_finds_a_record_written_just_before_a_rotation(tmp_path: Path) -> None:
    book = Journal(tmp_path, rotate_bytes=3 * line_bytes(0), keep=2)
    for i in range(3):  # the third record fills the file and rotates it away
        book.record(entry(i))
    book.close()

    assert (tmp_path / "journal.jsonl").stat().st_size == 0
    found = journal.outcomes_in_tail(tmp_path, {"c0002", "c0000", "nobody"})
    assert set(found) == {"c0000", "c0002"}
    assert found["c0002"]["file"] == "f2.pdf"


def test_recovery_reads_only_the_tail(tmp_path: Path) -> None:
    book = Journal(tmp_path)
    for i in range(100):
        book.record(entry(i))
    book.close()

    found = journal.outcomes_in_tail(tmp_path, {"c0000", "c0099"}, tail_bytes=5 * line_bytes(0))
    assert set(found) == {"c0099"}


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    book = Journal(tmp_path)
    book.record(entry(1))
    book.close()
    with (tmp_path / "journal.jsonl").open("ab") as fh:
        fh.write(b'{"claim": "c9999", "fi')  # what a power cut can leave

    assert [e["claim"] for e in journal.read(tmp_path)] == ["c0001"]
    assert journal.outcomes_in_tail(tmp_path, {"c9999", "c0001"}).keys() == {"c0001"}


def test_status_counts_outcomes_across_rotated_files(tmp_path: Path, emulator: Emulator) -> None:
    spec = folder_spec(tmp_path, [{"name": "pdf", "pattern": "*.pdf", "event": "e"}])
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])
    Path(spec["path"]).mkdir()
    book = Journal(tmp_path / "state", rotate_bytes=4 * line_bytes(0), keep=5)
    for i in range(10):
        book.record({**entry(i), "folder": spec["path"], "outcome": "failed" if i < 3 else "done"})
    book.close()
    assert (tmp_path / "state" / "journal.jsonl.2").exists()

    [row] = status_json(config)

    assert (row["done"], row["failed"]) == (7, 3)


def test_a_gap_left_by_a_rotation_cut_short_hides_nothing(tmp_path: Path) -> None:
    book = Journal(tmp_path, rotate_bytes=2 * line_bytes(0), keep=4)
    for i in range(6):
        book.record(entry(i))
    book.close()
    # As if killed between shifting .1 to .2 and renaming the current file.
    (tmp_path / "journal.jsonl.3").rename(tmp_path / "journal.jsonl.4")
    (tmp_path / "journal.jsonl.2").rename(tmp_path / "journal.jsonl.3")
    (tmp_path / "journal.jsonl.1").rename(tmp_path / "journal.jsonl.2")

    assert [e["claim"] for e in journal.read(tmp_path)] == [f"c{i:04}" for i in range(6)]


def test_a_torn_last_line_is_cut_at_start_so_the_next_record_stands_on_its_own(
    tmp_path: Path,
) -> None:
    book = Journal(tmp_path)
    book.record(entry(1))
    book.close()
    with (tmp_path / "journal.jsonl").open("ab") as fh:
        fh.write(b'{"claim": "c9999", "fi')  # what a power cut can leave

    book = Journal(tmp_path)  # the next start
    book.record(entry(2))
    book.close()

    assert [e["claim"] for e in journal.read(tmp_path)] == ["c0001", "c0002"]
    assert (tmp_path / "journal.jsonl").read_bytes().endswith(b"}\n")


def test_a_journal_that_is_one_torn_line_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_bytes(b"\0" * 300)  # zero-filled by a power cut
    book = Journal(tmp_path)
    book.record(entry(3))
    book.close()

    assert [e["claim"] for e in journal.read(tmp_path)] == ["c0003"]


FULL_DISK = r"""
import json, resource, signal, sys
from pathlib import Path
from flowflexd.engine.journal import Journal

state = Path(sys.argv[1])
book = Journal(state)
book.record({"claim": "c0001", "outcome": "done", "file": "a.pdf", "folder": "/in"})
# A file-size limit makes the kernel take only part of the next write, as a
# full disk does; the write after that one fails.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = (state / "journal.jsonl").stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
try:
    book.record({"claim": "c0002", "outcome": "done", "file": "b" * 200, "folder": "/in"})
except OSError as err:
    print("refused:", err.strerror)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
book.record({"claim": "c0003", "outcome": "done", "file": "c.pdf", "folder": "/in"})
book.close()
"""


def test_a_write_the_disk_took_only_part_of_leaves_no_glued_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "refused: File too large" in done.stdout

    lines = (tmp_path / "journal.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["claim"] for line in lines] == ["c0001", "c0003"]


def test_records_with_fields_of_the_wrong_type_are_passed_over(tmp_path: Path) -> None:
    book = Journal(tmp_path)
    book.record(entry(1))
    book.record({"claim": ["x"], "outcome": "done", "folder": "/in", "file": "x.pdf"})
    book.record({"claim": "c0002", "outcome": 7, "folder": "/in", "file": "y.pdf"})
    book.record({"claim": "c0003", "outcome": "done", "folder": {"a": 1}, "file": "z.pdf"})
    book.record(entry(4))
    book.close()

    assert [e["claim"] for e in journal.read(tmp_path)] == ["c0001", "c0004"]
    found = journal.outcomes_in_tail(tmp_path, {"c0001", "c0002", "c0003", "c0004"})
    assert found.keys() == {"c0001", "c0004"}


def test_workers_recording_at_once_share_fsyncs_and_every_line_stands_whole(
    tmp_path: Path,
) -> None:
    """Group commit: 8 threads, 250 records each, a small rotation size on the way."""
    kept = Journal(tmp_path / "state", rotate_bytes=64 * 1024, keep=50)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(250):
                kept.record({"worker": worker, "n": n, "pad": "x" * 100})
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept.close()

    assert errors == []
    records = list(journal.read(tmp_path / "state"))
    assert len(records) == 2000
    for worker in range(8):  # each worker's records in its own order, none lost
        assert [r["n"] for r in records if r["worker"] == worker] == list(range(250))
    assert len(journal.files(tmp_path / "state")) > 1  # it rotated meanwhile
