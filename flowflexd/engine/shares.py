"""Inboxes on shares, as the loop sees them: steps made apart, and files held while one is silent.

An inbox on a share makes its look and step in a thread of its own
(inbox/own_thread.py): the loop hands the step over and goes on, and the
answer comes back as a message, so that a share whose server stops holds
that inbox alone. A share is found silent two ways: a call in the inbox's own
thread out over ``HELD_AFTER`` s, asleep in the kernel; or, for any inbox,
the 5 s look finding it does not answer. Either way its files are held back
from the workers (``Scheduler.hold``), which lends the pool a thread for
each worker already waiting there, until it answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import structlog

from flowflexd.engine.lifecycle import Ledger
from flowflexd.engine.scheduler import Scheduler
from flowflexd.inbox.answering import FORCE_OFF
from flowflexd.inbox.runtime import Inbox, Trouble, Turn
from flowflexd.inbox.spool import Claim
from flowflexd.support.kernelwait import HELD_AFTER

log = structlog.get_logger("flowflexd")

#: Why an inbox whose own thread waits on its share is shown away (status, daemon.json).
HELD_REASON = f"a call into it has waited over {HELD_AFTER:g} s: its share's server does not answer"
HELD_FIX = (
    "bring back the share's server or the network to it; this folder goes on by itself once "
    f"it answers, and the others are not held. To go on without it, force it off: {FORCE_OFF}"
)
WORKER_LOOK_EVERY = 1.0  # a second's delay is nothing beside HELD_AFTER

TakeTurn = Callable[[Inbox, Turn, float], None]


class Shares:
    """The loop's side of inboxes in their own threads, and of holding silent ones."""

    def __init__(
        self,
        scheduler: Scheduler,
        ledger: Ledger,
        *,
        take_turn: TakeTurn,
        inboxes: Callable[[], Sequence[Inbox]],
    ) -> None:
        self._scheduler = scheduler
        self._ledger = ledger
        self._take_turn = take_turn  # what the loop does with a step's answer
        self._inboxes = inboxes  # the daemon's inboxes now (a reload replaces the list)
        self._next_worker_look = 0.0

    def step(self, inbox: Inbox, now: float) -> None:
        """An inbox on a share: its look and step, made in its own thread, answer later."""
        assert inbox.own is not None
        if inbox.lent:
            self._watch(inbox, now)
            return
        due = inbox.tracker.next_due() if inbox.online else None
        if now < inbox.next_rescan and (due is None or due > now):
            return
        inbox.out += 1
        inbox.own.submit(inbox.turn, partial(self._stepped, inbox))

    def change(self, inbox: Inbox, change: Callable[[], None]) -> None:
        """A reload's change to an inbox on a share: made there, after the step out now."""
        assert inbox.own is not None
        inbox.out += 1
        inbox.own.submit(change, partial(answered, inbox))

    def hold_silent(self) -> None:
        """Files of inboxes whose share does not answer wait off the workers; back when it does."""
        held = self._scheduler.held()
        for inbox in self._inboxes():
            if inbox.held_since is not None and inbox.own is not None and not inbox.lent:
                log.info("inbox answers again", folder=str(inbox.path))
                inbox.held_since = None
            if not inbox.answering and inbox.path not in held:
                self._scheduler.hold(inbox)
            elif inbox.answering and inbox.path in held:
                self._scheduler.unhold(inbox)

    def look_where_workers_wait(self, now: float) -> None:
        """A worker out over HELD_AFTER s on an inbox's file: look whether its share answers.

        An upload that long over a slow network is common, and the look costs a
        ``stat``; a share that stopped is then set aside within seconds, not at
        the next rescan, before every worker waits there.
        """
        if now < self._next_worker_look:
            return
        self._next_worker_look = now + WORKER_LOOK_EVERY
        oldest = self._scheduler.oldest_jobs()
        for inbox in self._inboxes():
            since = oldest.get(inbox.path)
            if (
                since is not None
                and now - since >= HELD_AFTER
                and inbox.online
                and not inbox.lent
                and now - inbox.looked_early >= HELD_AFTER
            ):
                inbox.looked_early = now
                inbox.next_rescan = min(inbox.next_rescan, now)

    def _stepped(self, inbox: Inbox, answer: Turn | Exception) -> None:
        answered(inbox, answer)
        assert isinstance(answer, Turn)
        if inbox in self._inboxes():
            self._take_turn(inbox, answer, time.monotonic())
            return
        # Removed by a reload meanwhile: what it found stays on disk, for the folder added back.
        for item in answer.found:
            if isinstance(item, Claim):
                inbox.spool.carried.discard(item.id)
        for ready in answer.ready:
            self._ledger.finish(ready.ticket)

    def _watch(self, inbox: Inbox, now: float) -> None:
        """Says once when an inbox's own thread waits on a share that does not answer."""
        assert inbox.own is not None
        if inbox.held_since is None and inbox.own.held(now):
            since = inbox.own.waiting_since() or now
            inbox.held_since = time.time() - (now - since)
            log.error(
                "inbox does not answer; other folders keep running, this one resumes when it does",
                folder=str(inbox.path),
                error=HELD_REASON,
                hint=HELD_FIX,
                waited_s=round(now - since, 1),
            )


def answered(inbox: Inbox, answer: object) -> None:
    """A call the loop lent the inbox's tracker for came back: the loop has it again."""
    inbox.answered()
    if isinstance(answer, Exception):
        raise answer  # a bug: as if it were raised on the loop, where the call once ran


def held_trouble(inbox: Inbox) -> Trouble | None:
    """What status shows for an inbox whose own thread waits on its share, if it does."""
    if inbox.held_since is None:
        return None
    return Trouble(HELD_REASON, HELD_FIX, inbox.held_since, answering=False)
