"""The look that gives up waiting, on a real blocking file system call.

Opening a FIFO for reading waits in the kernel until a writer opens it: a
call that does not come back until someone else acts, as a look into a share
does until its server answers. (tests/field/test_share_hang.py sets aside a
real sshfs inbox whose server stopped.)
"""

from __future__ import annotations

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
