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

    def submit(self, job: J) -> None:
        self.busy += 1
        self._jobs.put(job)

    def finished(self) -> None:
        """The scheduler handled one reported job."""
        self.busy -= 1

    def resize(self, count: int) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < count:
            thread = threading.Thread(target=self._work, name="worker", daemon=True)
            thread.start()
            self._threads.append(thread)
        for _ in range(len(self._threads) - count):
            self._jobs.put(None)  # that many workers leave after their current job

    def alive(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    def take_unstarted(self) -> list[J]:
        """Jobs no worker has started yet, taken back (at a stop)."""
        taken: list[J] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return taken
            if job is not None:
                self.busy -= 1
                taken.append(job)

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                result = self._run(job)
            except Exception as err:  # a bug must not kill the worker or lose the file
                log.exception("unexpected error; the file stays where it is", error=str(err))
                result = self._crashed(job, err)
            self._report(job, result)
