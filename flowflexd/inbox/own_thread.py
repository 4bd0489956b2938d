"""A thread of its own for an inbox on a share: its server stopping holds that inbox alone.

Every call into a folder on a hard-mounted NFS share, a CIFS share or a FUSE
mount waits for as long as the share's server does not answer. The main
loop looks at every inbox and commits every finished claim, so a share that
stopped while its files settled or were moved into done held every folder
with it. An inbox on a network file system therefore makes those calls here:
its tracker's steps and rescans, its take-up when it comes back (the one at
a start stays on the loop, after a look that gives up in 5 s), its share of
a group commit, its retention pass. The main loop hands a call over and goes on; the answer
comes back to it as a message. While a call of the main loop's is out, the
inbox's tracker belongs to this thread and the loop leaves it alone (hints
and releases wait for the answer).

A call that has not come back after ``HELD_AFTER`` seconds, its thread asleep
in the kernel at ``HELD_LOOKS`` looks in a row, is waiting on a share that
does not answer: the daemon says so, holds the inbox's files back from the
workers, and lends the pool a thread for each worker it already holds.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from flowflexd.support.kernelwait import HELD_AFTER, KernelWaits

log = structlog.get_logger("flowflexd")

LOOK_EVERY = 1.0  # between looks at a call's thread, once it is out HELD_AFTER seconds

Then = Callable[[Any], None]


@dataclass(frozen=True)
class Answered:
    """A call made in an inbox's thread came back: ``then`` is run with its answer on the loop."""

    then: Then
    answer: Any  # what the call returned, or the exception it raised


class OwnThread:
    """Runs the calls handed to it one at a time, in order, in one thread."""

    def __init__(self, path: Path, deliver: Callable[[Answered], None]) -> None:
        self.path = path
        self._deliver = deliver
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Then | None] | None] = (
            queue.SimpleQueue()
        )
        self._since: float | None = None  # when the call now running began (monotonic)
        self._native_id: int | None = None
        self._looked_at = 0.0
        self._waits = KernelWaits()  # the looks at the running call's thread
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"inbox {path}", daemon=True)
        self._thread.start()
        self._started.wait()

    def submit(self, call: Callable[[], Any], then: Then | None = None) -> None:
        """Run ``call`` in the inbox's thread; ``then(answer)`` is delivered back (any thread)."""
        self._calls.put((call, then))

    def stop(self) -> None:
        """The thread ends once the calls handed to it before this are made."""
        self._calls.put(None)

    def join(self, timeout: float) -> bool:
        """Wait for a stopped thread to end; False if a call still waits (on a share)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def waiting_since(self) -> float | None:
        """When the call now running began (monotonic), None when the thread is idle."""
        return self._since

    def held(self, now: float) -> bool:
        """The running call waits on a file system that does not answer.

        Looked at most once a second: after ``HELD_AFTER`` seconds, ``HELD_LOOKS``
        looks in a row must find the thread asleep in the kernel, not running its
        own code between a slow share's answers.
        """
        since = self._since
        if since is None or now - since < HELD_AFTER or self._native_id is None:
            self._waits.reset()
            return False
        if now - self._looked_at >= LOOK_EVERY:
            self._looked_at = now
            self._waits.look(self._native_id)
        return self._waits.held

    def _serve(self) -> None:
        self._native_id = threading.get_native_id()
        self._started.set()
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, then = item
            self._since = time.monotonic()
            answer: Any
            try:
                answer = call()
            except Exception as err:  # handed back, as if raised where the call was made
                answer = err
            finally:
                self._since = None
                self._waits.reset()
            if then is not None:
                self._deliver(Answered(then, answer))
            elif isinstance(answer, Exception):
                log.error(
                    "unexpected error in an inbox's own thread; nothing was lost",
                    folder=str(self.path),
                    error=repr(answer),
                )
