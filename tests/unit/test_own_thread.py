"""An inbox's own thread: calls made in order, answers handed back, a held call told apart.

A call that waits on a FIFO's other end sleeps in the kernel, as one into a
share whose server stopped does (tests/field/test_share_hang.py has the real
sshfs share). A call that runs Python all the while is slow, not held.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest
from support import wait_until

from flowflexd.engine.workers import WorkerPool
from flowflexd.inbox import own_thread
from flowflexd.inbox.own_thread import Answered, OwnThread


def test_calls_run_in_order_in_one_thread_and_their_answers_come_back(tmp_path: Path) -> None:
    answers: queue.SimpleQueue[Answered] = queue.SimpleQueue()
    own = OwnThread(tmp_path, answers.put)
    seen: list[tuple[int, str]] = []

    def call(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        if n == 2:
            raise ValueError("a bug in a call")
        return n * 10

    got: list[object] = []
    for n in range(4):
        own.submit(lambda n=n: call(n), got.append)  # type: ignore[misc]
    own.submit(lambda: call(9))  # no answer wanted
    for _ in range(4):
        answered = answers.get(timeout=10)
        answered.then(answered.answer)  # what the main loop does with each
    own.stop()
    assert own.join(10)

    assert [n for n, _ in seen] == [0, 1, 2, 3, 9]
    assert {name for _, name in seen} == {f"inbox {tmp_path}"}
    assert got[:2] == [0, 10] and got[3] == 30
    assert isinstance(got[2], ValueError)  # handed back, not lost with the thread
    assert answers.empty()


def test_a_call_asleep_in_the_kernel_is_held_and_a_busy_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(own_thread, "HELD_AFTER", 0.3)
    monkeypatch.setattr(own_thread, "LOOK_EVERY", 0.05)
    fifo = tmp_path / "share"
    os.mkfifo(fifo)
    answers: queue.SimpleQueue[Answered] = queue.SimpleQueue()
    own = OwnThread(tmp_path, answers.put)

    # Running its own code all the while (a slow share between answers): never held.
    stop = time.monotonic() + 1.0
    own.submit(lambda: sum(1 for _ in iter(lambda: time.monotonic() > stop, True)))
    wait_until(lambda: own.waiting_since() is not None)
    while own.waiting_since() is not None:
        assert not own.held(time.monotonic())
        time.sleep(0.02)  # the pace of the loop's looks; the call ends by its own clock

    # Waiting on the FIFO's writer, as on a server that does not answer: held.
    own.submit(lambda: os.close(os.open(fifo, os.O_RDONLY)), lambda _: None)
    started = time.monotonic()
    wait_until(lambda: own.held(time.monotonic()), what="the call held")
    assert time.monotonic() - started >= 0.3
    assert own.waiting_since() is not None

    # The "server" answers: the call comes back, and the thread is no longer held.
    os.close(os.open(fifo, os.O_WRONLY))
    answers.get(timeout=10)
    assert not own.held(time.monotonic())
    assert own.waiting_since() is None
    own.stop()
    assert own.join(10)


def test_the_pool_lends_a_thread_for_each_worker_held_and_takes_it_back(tmp_path: Path) -> None:
    """Two workers wait in a silent share; the others' files still get two workers."""
    fifo = tmp_path / "share"
    os.mkfifo(fifo)
    reports: queue.SimpleQueue[str] = queue.SimpleQueue()
    in_share: list[str] = []

    def run(job: str) -> str:
        if job.startswith("share"):
            in_share.append(job)
            os.close(os.open(fifo, os.O_RDONLY))
        return job

    pool: WorkerPool[str, str] = WorkerPool(run, lambda job, _: reports.put(job), lambda j, e: j)
    pool.resize(2)
    pool.submit("share-1")
    pool.submit("share-2")
    wait_until(lambda: len(in_share) == 2, what="both workers in the share")
    pool.lend(2)
    assert wait_until(lambda: pool.alive() == 4)
    for n in range(6):
        pool.submit(f"local-{n}")
    assert sorted(reports.get(timeout=10) for _ in range(6)) == [f"local-{n}" for n in range(6)]

    writer = os.open(fifo, os.O_WRONLY)  # the share answers: both calls come back
    try:
        assert {reports.get(timeout=10), reports.get(timeout=10)} == {"share-1", "share-2"}
    finally:
        os.close(writer)
    pool.recall(2)
    wait_until(lambda: pool.alive() == 2, what="the lent threads gone")
    pool.submit("local-after")
    assert reports.get(timeout=10) == "local-after"
    pool.stop()
