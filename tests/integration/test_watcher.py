"""The watcher on real folders with the kernel's inotify: which names it hints, and when.

Events come from watchdog's inotify reader thread; in a tree, the watcher
keeps the watches of its folders itself, so these tests pin which folders it
watches as they are made, moved and removed.
"""

from __future__ import annotations

import itertools
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


def folder(
    path: Path, *, recursive: bool = False, poll: bool = False, max_depth: int | None = None
) -> Folder:
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
        max_depth=max_depth,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[FolderWatcher, Hints]]:
    (tmp_path / "tree" / "alice").mkdir(parents=True)
    watcher = FolderWatcher(folder(tmp_path / "tree", recursive=True, max_depth=3))
    hints: Hints = queue.SimpleQueue()
    assert watcher.start(hints.put) == "inotify"
    yield watcher, hints
    watcher.stop()


def quiet(hints: Hints, seconds: float = 0.5) -> list[str | None]:
    """What else comes within ``seconds`` (to show that something does not)."""
    got: list[str | None] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(hints.get(timeout=left))
        except queue.Empty:
            break
    return got


def until_watched(hints: Hints, folder: Path, below: str, timeout: float = 10.0) -> None:
    """Make probes in ``folder`` until one is hinted: then its watch is in place.

    A folder's watch is added by the reader thread a moment after the event
    that made it; this polls for it with a deadline rather than waiting a while.
    A probe is a folder: making one is a single event, so no hint of it is left
    over for the test to find.
    """
    deadline = time.monotonic() + timeout
    for i in itertools.count():
        probe = f"probe-{i}"
        (folder / probe).mkdir()
        wanted = f"{below}/{probe}"
        until = min(deadline, time.monotonic() + 0.1)
        while (left := until - time.monotonic()) > 0:
            try:
                if hints.get(timeout=left) == wanted:
                    return
            except queue.Empty:
                break
        if time.monotonic() > deadline:
            raise AssertionError(f"{below} was not watched within {timeout}s")


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


def test_a_tree_watches_folders_made_below_it_at_any_depth_at_once(
    tree: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    watcher, hints = tree
    (tmp_path / "tree" / "alice" / "scan.pdf").write_bytes(b"%PDF")
    hinted(hints, "alice/scan.pdf")
    deep = tmp_path / "tree" / "bob" / "2026" / "12"
    # mkdir -p: the inner folders may come before the outer one's watch. Each
    # folder is watched before it is hinted, so the tracker's walk of a hinted
    # folder finds what was written before the watch, and events tell the rest.
    deep.mkdir(parents=True)
    hinted(hints, "bob")
    until_watched(hints, deep, "bob/2026/12")
    (deep / "late.pdf").write_bytes(b"%PDF")
    hinted(hints, "bob/2026/12/late.pdf")
    assert watcher.alive()


def test_a_tree_never_watches_flowflexds_own_hidden_or_too_deep_folders(
    tree: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    _, hints = tree
    root = tmp_path / "tree"
    for below in (".flowflexd/work/3f2a", ".snapshot", "@eaDir", "a/b/c/d"):
        (root / below).mkdir(parents=True)
    hinted(hints, ".flowflexd", ".snapshot", "@eaDir", "a")
    until_watched(hints, root / "a" / "b" / "c", "a/b/c")
    for below in (".flowflexd/work/3f2a", ".snapshot", "@eaDir", "a/b/c/d"):
        (root / below / "x.pdf").write_bytes(b"%PDF")
    (root / "a" / "b" / "c" / "deepest-taken.pdf").write_bytes(b"%PDF")
    got = hinted(hints, "a/b/c/deepest-taken.pdf")
    got.update(quiet(hints))
    assert got == {"a/b/c/deepest-taken.pdf"}


def test_a_folder_moved_inside_the_tree_is_watched_under_its_new_path(
    tree: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    _, hints = tree
    root = tmp_path / "tree"
    (root / "alice" / "2026").mkdir()
    hinted(hints, "alice/2026")
    (root / "alice" / "2026").rename(root / "archive-2026")
    # Its files now have other paths: the whole folder is looked at again.
    hinted(hints, None, "alice/2026", "archive-2026")
    (root / "archive-2026" / "moved.pdf").write_bytes(b"%PDF")
    got = hinted(hints, "archive-2026/moved.pdf")
    got.update(quiet(hints))
    assert "alice/2026/moved.pdf" not in got


def test_a_folder_moved_out_of_the_tree_is_no_longer_watched(
    tree: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    watcher, hints = tree
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "tree" / "alice").rename(elsewhere)
    hinted(hints, None, "alice")
    quiet(hints)
    (elsewhere / "gone.pdf").write_bytes(b"%PDF")
    assert quiet(hints) == []
    # A folder moved in from outside is watched, and its files looked at by the tracker.
    elsewhere.rename(tmp_path / "tree" / "back")
    hinted(hints, "back")
    (tmp_path / "tree" / "back" / "new.pdf").write_bytes(b"%PDF")
    hinted(hints, "back/new.pdf")
    assert watcher.alive()


def test_a_removed_subfolder_leaves_the_tree_watched(
    tree: tuple[FolderWatcher, Hints], tmp_path: Path
) -> None:
    watcher, hints = tree
    shutil.rmtree(tmp_path / "tree" / "alice")
    hinted(hints, "alice")
    (tmp_path / "tree" / "after.pdf").write_bytes(b"%PDF")
    hinted(hints, "after.pdf")
    assert watcher.alive()
    shutil.rmtree(tmp_path / "tree")
    hinted(hints, None)
    wait_until(lambda: not watcher.alive(), timeout=10, what="the watcher to say it is not alive")


def test_a_polled_inbox_hints_the_same_names(tmp_path: Path) -> None:
    watcher = FolderWatcher(folder(tmp_path / "share", poll=True))
    hints: Hints = queue.SimpleQueue()
    assert watcher.start(hints.put) == "polling"
    try:
        (tmp_path / "share" / "scan.pdf").write_bytes(b"%PDF")
        hinted(hints, "scan.pdf")
    finally:
        watcher.stop()
