"""The watcher on real folders with the kernel's inotify: which names it hints, and when.

A flat inbox takes its events from watchdog's inotify reader directly, a
tree through watchdog's observer; both must hint the same names.
"""

from __future__ import annotations

import os
import queue
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_until

from flowflexd.config.model import Folder
from flowflexd.inbox.watcher import FolderWatcher

Hints = queue.SimpleQueue[str | None]


def folder(path: Path, *, recursive: bool = False, poll: bool = False) -> Folder:
    path.mkdir(exist_ok=True)
    done, failed = path.parent / "done", path.parent / "failed"
    return Folder(
        path=path,
        done=done,
        failed=failed,
        rules=(),
        recursive=recursive,
        poll=poll,
        poll_interval=0.1,
    )


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[tuple[FolderWatcher, Hints]]:
    watcher = FolderWatcher(folder(tmp_path / "inbox"))
    hints: Hints = queue.SimpleQueue()
    assert watcher.start(hints.put) == "inotify"
    yield watcher, hints
    watcher.stop()


def hinted(hints: Hints, *expected: str | None, timeout: float = 10.0) -> set[str | None]:
    """Collect hints until every expected one came; return all that came."""
    return set(take(hints, lambda got: set(expected) <= set(got), timeout=timeout))


def take(
    hints: Hints, enough: Callable[[list[str | None]], bool], timeout: float = 10.0
) -> list[str | None]:
    """Hints in the order they came, until ``enough`` says so; fail after ``timeout``."""
    got: list[str | None] = []
    deadline = time.monotonic() + timeout
    while not enough(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout}s; hints so far: {got}")
        try:
            got.append(hints.get(timeout=left))
        except queue.Empty:
            continue
    return got


def test_a_flat_inbox_hints_every_name_that_appears_changes_or_leaves(
    watch: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    _, hints = watch
    inbox = tmp_path / "inbox"
    (inbox / "scan.tmp").write_bytes(b"%PDF-1.4 half")
    assert hinted(hints, "scan.tmp") == {"scan.tmp"}
    # A rename whose old name no rule matches still hints the new name.
    (inbox / "scan.tmp").rename(inbox / "scan.pdf")
    hinted(hints, "scan.tmp", "scan.pdf")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (inbox / "scan.pdf").rename(elsewhere / "scan.pdf")
    hinted(hints, "scan.pdf")
    (elsewhere / "late.pdf").write_bytes(b"%PDF")
    (elsewhere / "late.pdf").rename(inbox / "late.pdf")
    hinted(hints, "late.pdf")
    (inbox / "late.pdf").unlink()
    hinted(hints, "late.pdf")
    (inbox / "batch-7").mkdir()
    hinted(hints, "batch-7")


def test_a_file_written_in_pieces_is_hinted_when_it_appears_and_when_it_is_closed(
    watch: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    _, hints = watch
    with (tmp_path / "inbox" / "big.pdf").open("wb") as out:
        out.write(b"%PDF-1.4\n")
        out.flush()
        assert hinted(hints, "big.pdf") == {"big.pdf"}
        for _ in range(50):
            out.write(b"x" * 4096)
            out.flush()
    # Writes are not hinted one by one; the tracker watches a changing file itself.
    assert hinted(hints, "big.pdf") == {"big.pdf"}
    with pytest.raises(queue.Empty):
        hints.get(timeout=0.3)


def test_a_removed_flat_inbox_asks_for_a_look_at_the_folder_and_stops_being_alive(
    watch: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    watcher, hints = watch
    assert watcher.alive()
    shutil.rmtree(tmp_path / "inbox")
    hinted(hints, None)
    wait_until(lambda: not watcher.alive(), timeout=10, what="the watcher to say it is not alive")


def test_a_stopped_watcher_hints_nothing_and_can_start_again_on_the_same_folder(
    watch: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    watcher, hints = watch
    inbox = tmp_path / "inbox"
    watcher.stop()
    assert not watcher.alive()
    (inbox / "quiet.pdf").write_bytes(b"%PDF")
    with pytest.raises(queue.Empty):
        hints.get(timeout=0.5)
    # Started again (a reload), it hints once per event: no watch of the first start is left.
    assert watcher.start(hints.put) == "inotify"
    (inbox / "again.pdf").write_bytes(b"%PDF")
    (inbox / "again.pdf").unlink()
    got = take(hints, lambda got: len(got) >= 3)
    with pytest.raises(queue.Empty):
        got.append(hints.get(timeout=0.5))
    assert got == ["again.pdf"] * 3


def test_two_flat_inboxes_on_one_inotify_reader_each_hear_only_their_own(tmp_path: Path) -> None:
    first, second = FolderWatcher(folder(tmp_path / "a")), FolderWatcher(folder(tmp_path / "b"))
    heard_a: Hints = queue.SimpleQueue()
    heard_b: Hints = queue.SimpleQueue()
    first.start(heard_a.put)
    second.start(heard_b.put)
    try:
        (tmp_path / "a" / "for-a.pdf").write_bytes(b"%PDF")
        (tmp_path / "b" / "for-b.pdf").write_bytes(b"%PDF")
        heard_by_a = hinted(heard_a, "for-a.pdf")
        heard_by_b = hinted(heard_b, "for-b.pdf")
        first.stop()
        (tmp_path / "b" / "still-b.pdf").write_bytes(b"%PDF")
        heard_by_b |= hinted(heard_b, "still-b.pdf")
        assert second.alive()
        while not heard_a.empty():
            heard_by_a.add(heard_a.get())
        assert heard_by_a == {"for-a.pdf"}
        assert heard_by_b == {"for-b.pdf", "still-b.pdf"}
    finally:
        first.stop()
        second.stop()


def test_a_tree_hints_paths_below_the_inbox_through_the_observer(tmp_path: Path) -> None:
    watcher = FolderWatcher(folder(tmp_path / "tree", recursive=True))
    hints: Hints = queue.SimpleQueue()
    assert watcher.start(hints.put) == "inotify"
    try:
        sub = tmp_path / "tree" / "alice" / "2026"
        sub.mkdir(parents=True)
        hinted(hints, "alice")
        (sub / "scan.pdf").write_bytes(b"%PDF")
        hinted(hints, os.path.join("alice", "2026", "scan.pdf"))
        assert watcher.alive()
    finally:
        watcher.stop()
    assert not watcher.alive()


def test_a_polled_inbox_hints_the_same_names(tmp_path: Path) -> None:
    watcher = FolderWatcher(folder(tmp_path / "share", poll=True))
    hints: Hints = queue.SimpleQueue()
    assert watcher.start(hints.put) == "polling"
    try:
        (tmp_path / "share" / "scan.pdf").write_bytes(b"%PDF")
        hinted(hints, "scan.pdf")
    finally:
        watcher.stop()
