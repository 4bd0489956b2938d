"""The worker pool: threads that carry jobs and report each result back to the scheduler.

Only the scheduler thread submits and counts; workers never touch shared
state, they run one job and hand back its outcome. A job that raises is
reported like any other outcome, so a bug cannot kill a worker or strand a
file.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("flowflexd")

J = TypeVar("J")
R = TypeVar("R")


class WorkerPool(Generic[J, R]):
    def __init__(
        self,
        run: Callable[[J], R],
        report: Callable[[J, R], None],
        crashed: Callable[[J, Exception], R],
    ) -> None:
        self._run = run
        self._report = report
        self._crashed = crashed
        self._jobs: queue.SimpleQueue[J | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.busy = 0  # jobs submitted and not yet reported back as finished
        self._size = 0  # the workers asked for by resize
        self._lent = 0  # threads more, each for a worker waiting on a share that does not answer
        self._leaving = 0  # threads told to leave that have not yet
        self._lock = threading.Lock()

    def submit(self, job: J) -> None:
        self.busy += 1
        self._jobs.put(job)

    def finished(self) -> None:
        """The scheduler handled one reported job."""
        self.busy -= 1

    def resize(self, count: int) -> None:
        self._size = count
        self._adjust()

    def lend(self, count: int) -> None:
        """``count`` threads more while as many workers wait on a share that does not answer."""
        if count > 0:
            self._lent += count
            self._adjust()

    def recall(self, count: int) -> None:
        """Waiting workers came back: as many threads (any) leave after their current job."""
        self._lent -= count
        self._adjust()

    def _adjust(self) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            staying = len(self._threads) - self._leaving
            for _ in range(self._size + self._lent - staying):
                thread = threading.Thread(target=self._work, name="worker", daemon=True)
                thread.start()
                self._threads.append(thread)
            for _ in range(staying - self._size - self._lent):
                self._leaving += 1
                self._jobs.put(None)  # a worker leaves after its current job

    def alive(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    def take_unstarted(self) -> list[J]:
        """Jobs no worker has started yet, taken back (at a stop)."""
        taken: list[J] = []
        leaves = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                leaves += 1
            else:
                self.busy -= 1
                taken.append(job)
        for _ in range(leaves):  # a worker told to leave still does
            self._jobs.put(None)
        return taken

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                with self._lock:
                    self._leaving = max(0, self._leaving - 1)  # a stop's is not counted
                return
            try:
                result = self._run(job)
            except Exception as err:  # a bug must not kill the worker or lose the file
                log.exception("unexpected error; the file stays where it is", error=str(err))
                result = self._crashed(job, err)
            self._report(job, result)
