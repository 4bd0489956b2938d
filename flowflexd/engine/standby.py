"""A standby's wait for the daemon holding its inboxes, never held by a share that does not answer.

``run --standby`` tries each inbox's lock every second and keeps each as
soon as it is free; once it holds them all, it starts. Taking a lock opens a
file in the inbox, and on a share whose server is down that waits until it
answers: the standby then neither followed a holder that died nor stopped
when told to. Each try is therefore made in a thread of its own and waited
on for a look's limit. An inbox whose try has not come back is not waited
for: it is taken up, lock and all, once it answers, as any inbox coming
back is. A try given up on that gets its lock later lets it go at once, so
that the inbox's take-up can have it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import structlog

from flowflexd.config.model import Folder
from flowflexd.inbox.answering import LOOK_TIMEOUT, Call
from flowflexd.inbox.spool import try_lock

log = structlog.get_logger("flowflexd")

POLL_SECONDS = 1.0  # how soon a standby follows a holder that died

Got = int | str | OSError  # the lock's descriptor, the holder's pid, or why it cannot be tried


class _Try:
    """One try at an inbox's lock, made as a look is (``answering.Call``)."""

    def __init__(self, inbox: Path) -> None:
        self._lock = threading.Lock()
        self._got: Got | None = None
        self._abandoned = False
        self._call = Call(partial(self._take, inbox), f"flowflexd-lock {inbox}")

    def _take(self, inbox: Path) -> Got:
        try:
            got: Got = try_lock(inbox)
        except OSError as err:
            got = err
        with self._lock:
            if self._abandoned and isinstance(got, int):
                os.close(got)  # nobody will keep it: the inbox's take-up locks it itself
            self._got = got
        return got

    def wait(self) -> Got | None:
        """What the try got, waiting a look's limit from its start at most; None if still out."""
        self._call.thread.join(max(0.0, self._call.since + LOOK_TIMEOUT - time.monotonic()))
        self._call.answer()  # a bug in the try is raised here
        with self._lock:
            return self._got  # set as it ends, before the call's own answer is

    def abandon(self) -> None:
        """Given up on while it waited on its share: a lock it gets is let go."""
        with self._lock:
            self._abandoned = True
            if isinstance(self._got, int):  # it came back since it was last waited on
                os.close(self._got)


def wait_for_holders(
    folders: Sequence[Folder],
    adopted: dict[Path, int],
    *,
    status: Callable[[str], None],
    stop_asked: Callable[[float], bool],
) -> bool:
    """Wait until no other daemon holds one of ``folders``; False if told to stop.

    The locks taken go into ``adopted`` (inbox to descriptor) and are kept, so
    no third daemon slips in between. ``stop_asked(timeout)`` waits that long
    for a stop, and says whether one came.
    """
    holders: dict[Path, str] = {}
    tries: dict[Path, _Try] = {}
    silent: set[Path] = set()
    while True:
        for folder in folders:
            if folder.path not in adopted and folder.path not in tries:
                tries[folder.path] = _Try(folder.path)
        for path, each in list(tries.items()):
            got = each.wait()
            if got is None:
                holders.pop(path, None)  # who holds it cannot be known now
                if path not in silent:
                    silent.add(path)
                    log.warning(
                        "standby: inbox does not answer; not waited for, it is taken up "
                        "once it answers",
                        folder=str(path),
                    )
                continue
            del tries[path]
            silent.discard(path)
            _heard(path, got, adopted, holders)
        if not holders:
            _abandon(tries)
            return True
        pids = ", ".join(sorted(set(holders.values())))
        status(f"standby: waiting for flowflexd pid {pids} ({len(holders)} inboxes)")
        if stop_asked(POLL_SECONDS):
            _abandon(tries)
            for fd in adopted.values():
                os.close(fd)
            adopted.clear()
            return False


def _heard(path: Path, got: Got, adopted: dict[Path, int], holders: dict[Path, str]) -> None:
    """A try at ``path``'s lock came back with ``got``."""
    if isinstance(got, OSError):
        holders.pop(path, None)  # not there: the start says so
    elif isinstance(got, int):
        adopted[path] = got
        if holders.pop(path, None) is not None:
            log.info("standby: the holder is gone; taking over", folder=str(path))
    elif holders.get(path) != got:
        holders[path] = got
        log.info(
            "standby: another flowflexd holds this inbox; waiting to take over when it stops",
            folder=str(path),
            holder_pid=got,
        )


def _abandon(tries: dict[Path, _Try]) -> None:
    for each in tries.values():
        each.abandon()
