"""The stall watch, on a real thread held in a real blocking file system call.

Opening a FIFO for reading waits in the kernel until a writer opens it: a
call that does not return until someone else acts, as a share's does until
its server answers. (tests/field/test_share_hang.py holds the daemon itself
on a real sshfs share.)
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from support import wait_until

from flowflexd.engine.stall import StallWatch

HELD = "the main loop has waited on a file system call; every folder waits with it"


class Loop:
    """A thread that starts a watch, as the daemon's loop does, and runs ``body``."""

    def __init__(self, body: object, statuses: list[str], note: Path | None = None) -> None:
        self.fed: list[float] = []  # when systemd's watchdog was fed
        self.watch = StallWatch(
            statuses.append,
            feed=lambda: self.fed.append(time.monotonic()),
            feed_every=0.1,
            note=note,
            after=0.3,
            look=0.05,
        )
        self.body = body
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.watch.start()
        try:
            self.body(self.watch)  # type: ignore[operator]
            while not self.done.is_set():  # round and round, as a free loop goes
                self.watch.beat()
                time.sleep(0.01)
        finally:
            self.watch.stop()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def test_a_loop_held_in_a_file_system_call_names_its_folder_and_is_said_free_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    fifo = share / "answer"
    os.mkfifo(fifo)
    statuses: list[str] = []

    def held_in_open(watch: StallWatch) -> None:
        watch.at(share)
        with open(fifo, "rb"):  # waits until a writer comes
            pass

    note = tmp_path / "held.json"
    note.write_text("a standby's, or one killed while held")
    loop = Loop(held_in_open, statuses, note)
    try:
        wait_until(lambda: statuses, timeout=10, what="a status while the loop is held")
        held = capsys.readouterr().out
        # For flowflexd status, which must not look at the share itself.
        noted = json.loads(note.read_text())
        assert (noted["pid"], noted["folder"]) == (os.getpid(), str(share))
        assert time.time() - 5 < noted["since"] <= time.time() - 0.3
        # The watchdog is fed while held: a restart would wait at the same call.
        wait_until(lambda: len(loop.fed) >= 3, timeout=10, what="the watchdog fed")
        os.close(os.open(fifo, os.O_WRONLY))  # the server answers
        wait_until(lambda: "the main loop runs again" in capsys.readouterr().out or None)
        assert not note.exists()
    finally:
        loop.stop()
    assert statuses == [f"waiting on a file system call in {share}: its share does not answer"]
    line = next(line for line in held.splitlines() if HELD in line)
    assert f"folder={share}" in line
    assert "waited_s=" in line
    assert "bring back the share" in line


def test_a_loop_that_is_late_but_busy_or_waiting_on_a_lock_is_not_said_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses: list[str] = []
    note = tmp_path / "held.json"
    note.write_text("the active daemon's, in the state_dir a standby shares")
    lock = threading.Lock()
    lock.acquire()
    finished = threading.Event()

    def late(watch: StallWatch) -> None:
        end = time.monotonic() + 1.0  # three times the watch's limit, without coming round
        while time.monotonic() < end:
            sum(range(1000))  # its own code, as a huge listing's bookkeeping
        lock.acquire(timeout=1.0)  # then a wait on a lock another thread holds
        finished.set()

    loop = Loop(late, statuses, note)
    try:
        wait_until(finished.is_set, timeout=10)
    finally:
        loop.stop()
        lock.release()
    assert statuses == []
    assert loop.fed == []  # late, not held: the watchdog is the loop's own to feed
    assert note.exists()  # not ours: never removed
    assert HELD not in capsys.readouterr().out
