"""The look that gives up waiting, on a real blocking file system call.

Opening a FIFO for reading waits in the kernel until a writer opens it: a
call that does not come back until someone else acts, as a look into a share
does until its server answers. (tests/field/test_share_hang.py sets aside a
real sshfs inbox whose server stopped.)
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from support import wait_until

from flowflexd.inbox.answering import Looker, NotAnswering, all_within


def _open_and_stat(path: Path) -> int:
    """Waits until the FIFO has a writer, then answers its inode."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_a_look_that_does_not_answer_is_given_up_and_not_made_again_until_it_answers(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "share"
    os.mkfifo(fifo)
    looker = Looker(fifo, _open_and_stat)

    started = time.monotonic()
    first = looker.look(timeout=0.3)
    assert isinstance(first, NotAnswering)
    assert 0.3 <= time.monotonic() - started < 5
    assert started <= first.since <= started + 0.3

    # Still waiting: said at once, from the same look, with no second call into it.
    started = time.monotonic()
    again = looker.look(timeout=5)
    assert again == first
    assert time.monotonic() - started < 1

    # The "server" answers: the waiting look comes back, and the next look is made afresh.
    writer = os.open(fifo, os.O_WRONLY)
    try:
        # Once the old look is back, a fresh one opens the FIFO again: a writer is there,
        # so it answers at once.
        found = wait_until(
            lambda: None if isinstance(ino := looker.look(timeout=1), NotAnswering) else ino,
            timeout=10,
            what="the old look to come back and a fresh one to answer",
        )
        assert found == os.stat(fifo).st_ino
    finally:
        os.close(writer)


def test_a_look_that_answers_in_time_answers_what_it_found(tmp_path: Path) -> None:
    looker = Looker(tmp_path, lambda p: os.stat(p).st_ino)
    assert looker.look() == os.stat(tmp_path).st_ino
    assert looker.look() == os.stat(tmp_path).st_ino  # none left waiting: looked afresh


def test_a_look_that_fails_raises_in_the_caller(tmp_path: Path) -> None:
    def broken(path: Path) -> int:
        raise ValueError(f"cannot look at {path}")

    with pytest.raises(ValueError, match="cannot look at"):
        Looker(tmp_path, broken).look()


def test_calls_made_together_wait_together_and_each_answers_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "share"
    os.mkfifo(fifo)
    started = time.monotonic()
    found = all_within(
        [lambda: _open_and_stat(fifo), lambda: os.stat(tmp_path).st_ino, lambda: "third"],
        timeout=0.3,
    )
    assert 0.3 <= time.monotonic() - started < 5  # one wait for all, not one each
    assert isinstance(found[0], NotAnswering)
    assert found[1:] == [os.stat(tmp_path).st_ino, "third"]
    with open(fifo, "wb"):  # let the held call go
        pass


def test_looks_begun_together_are_given_up_on_together(tmp_path: Path) -> None:
    """A start looks at each inbox in turn; three silent shares cost one limit, not three."""
    fifos = [tmp_path / f"share{n}" for n in range(3)]
    for fifo in fifos:
        os.mkfifo(fifo)
    lookers = [Looker(fifo, _open_and_stat) for fifo in fifos]
    answering = Looker(tmp_path, lambda p: os.stat(p).st_ino)
    try:
        started = time.monotonic()
        for looker in [*lookers, answering]:
            looker.begin()
        found = [looker.look(timeout=1.0) for looker in [*lookers, answering]]
        took = time.monotonic() - started
        assert all(isinstance(each, NotAnswering) for each in found[:3])
        assert found[3] == os.stat(tmp_path).st_ino
        assert 1.0 <= took < 2.0, took  # one after another: 3 s and more

        # Still waiting: a begin starts no second call into the share, and the look says so.
        lookers[0].begin()
        again = time.monotonic()
        assert lookers[0].look(timeout=5) == found[0]
        assert time.monotonic() - again < 1
    finally:
        for fifo in fifos:  # let the held looks go; a FIFO no look holds has no reader
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
