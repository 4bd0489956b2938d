"""Where each file is in its life: the one owner of that, with counts kept as files move.

Every file the daemon knows of holds a ticket here from the moment it is
seen until it is finished (done, failed, gone, or no longer watched). The
tracker moves a ticket through the stages before a claim, the daemon through
the stages after it; both ask the ledger for counts instead of keeping their
own, and nothing walks every file to answer "how many" or "since when".

The scheduler thread touches a ledger, and so does the thread of each inbox
on a share (own_thread.py), whose tracker steps there: a lock keeps the
counts whole.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar


class Stage(Enum):
    # Before a claim, judged by the tracker from what the inbox shows.
    SETTLING = "settling"  # seen, not yet still for settle_seconds
    WAITING = "waiting"  # still, waiting for its sidecar or attachments
    INCOMPLETE = "incomplete"  # still, but open for writing or cut short
    EMPTY = "empty"  # 0 bytes: a scanner's placeholder, never taken
    IGNORED = "ignored"  # no rule takes it, or a subfolder
    COMPANION = "companion"  # a sidecar or attachment; moves with its file
    READY = "ready"  # whole and matched: queued to be claimed
    # After it is handed to a worker, moved by the daemon.
    IN_FLIGHT = "in_flight"  # a worker claims or carries it
    RETRYING = "retrying"  # claimed, waiting for its next attempt

    # Members are singletons compared by identity: hash them so too. Enum's own
    # __hash__ is Python code, run on every count and transition lookup.
    __hash__ = object.__hash__


#: Stages of a file the tracker still judges: any may become any other as the file changes.
OBSERVED = frozenset(
    {
        Stage.SETTLING,
        Stage.WAITING,
        Stage.INCOMPLETE,
        Stage.EMPTY,
        Stage.IGNORED,
        Stage.COMPANION,
    }
)
#: Stages of a file that is on its way to FlowFlex but not yet handed to a worker.
WAITING_TO_GO = frozenset({Stage.SETTLING, Stage.WAITING, Stage.INCOMPLETE, Stage.READY})
WAITING_TO_GO_STAGES = tuple(WAITING_TO_GO)
#: Stages of a file handed over: the daemon, not the tracker, decides what comes next.
HANDED_OVER = frozenset({Stage.READY, Stage.IN_FLIGHT, Stage.RETRYING})

#: Where a file may go from each stage. Finishing is allowed from every stage.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    **{stage: OBSERVED | {Stage.READY} for stage in OBSERVED},
    # A queued file is re-judged after a reload, or handed to a worker.
    Stage.READY: frozenset({Stage.IN_FLIGHT, *OBSERVED}),
    # Unstarted at a stop: back to the queue; claimed but not finished: retried.
    Stage.IN_FLIGHT: frozenset({Stage.READY, Stage.RETRYING}),
    Stage.RETRYING: frozenset({Stage.IN_FLIGHT}),
}
#: Stages a ticket may start in: a file first seen, or a claim found at start.
ENTRY_STAGES = OBSERVED | {Stage.RETRYING}


class IllegalMove(Exception):
    """A bug: a file was moved between stages its life does not connect."""


@dataclass(slots=True, eq=False)
class Ticket:
    """One file's place in the ledger. The tracker's entries are tickets themselves.

    No table maps files to tickets: each holder keeps its ticket, which keeps
    a backlog of 100,000 files to one small object each.
    """

    folder: str
    stage: Stage | None  # None once finished
    since: float  # wall clock: when the file was first seen (or its claim found)

    def __lt__(self, other: Ticket) -> bool:
        # Only to break ties between files first seen at the same instant.
        return id(self) < id(other)


T = TypeVar("T", bound=Ticket)


class Ledger:
    def __init__(self) -> None:
        self._counts = dict.fromkeys(Stage, 0)
        self._by_folder: dict[str, dict[Stage, int]] = {}
        # (since, ticket) of files waiting to go; stale items are dropped when
        # they reach the top, so the oldest is found without a walk.
        self._oldest: list[tuple[float, Ticket]] = []
        #: Bumped by every change: a snapshot is rebuilt only when it moved.
        self.version = 0
        self._lock = threading.Lock()

    def enter(self, folder: str, stage: Stage, *, since: float) -> Ticket:
        return self.admit(Ticket(folder, stage, since))

    def admit(self, ticket: T) -> T:
        """Start the life of a ticket made by its holder (the tracker's entries)."""
        stage = ticket.stage
        if stage not in ENTRY_STAGES:
            raise IllegalMove(f"a file cannot start its life {stage and stage.value}")
        with self._lock:
            self._count(ticket.folder, stage, +1)
            self._note_waiting(ticket, stage)
            self.version += 1
        return ticket

    def move(self, ticket: Ticket, stage: Stage) -> None:
        with self._lock:
            was = ticket.stage
            if was is stage:
                return
            if was is None:
                raise IllegalMove(f"a finished file cannot become {stage.value}")
            if stage not in TRANSITIONS[was]:
                raise IllegalMove(f"a file cannot go from {was.value} to {stage.value}")
            ticket.stage = stage
            self._count(ticket.folder, was, -1)
            self._count(ticket.folder, stage, +1)
            if was not in WAITING_TO_GO:
                self._note_waiting(ticket, stage)
            self.version += 1

    def finish(self, ticket: Ticket) -> None:
        """The file's life here is over (done, failed, gone, or its folder removed)."""
        with self._lock:
            if ticket.stage is None:
                return
            self._count(ticket.folder, ticket.stage, -1)
            ticket.stage = None
            self.version += 1

    @staticmethod
    def stage(ticket: Ticket) -> Stage | None:
        return ticket.stage

    def count(self, *stages: Stage, folder: str | None = None) -> int:
        with self._lock:
            return self._sum(stages, folder)

    def _sum(self, stages: tuple[Stage, ...], folder: str | None = None) -> int:
        counts = self._counts if folder is None else self._by_folder.get(folder, {})
        return sum(counts.get(stage, 0) for stage in stages)

    def oldest_waiting(self) -> float | None:
        """When the oldest file still waiting to go was first seen (wall clock)."""
        with self._lock:
            heap = self._oldest
            while heap:
                since, ticket = heap[0]
                if ticket.stage in WAITING_TO_GO:
                    return since
                heapq.heappop(heap)
            return None

    def __len__(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def _count(self, folder: str, stage: Stage, delta: int) -> None:
        self._counts[stage] += delta
        per = self._by_folder.get(folder)
        if per is None:  # not setdefault: that builds the default dict on every call
            per = self._by_folder[folder] = dict.fromkeys(Stage, 0)
        per[stage] += delta

    def _note_waiting(self, ticket: Ticket, stage: Stage) -> None:
        if stage not in WAITING_TO_GO:
            return
        heapq.heappush(self._oldest, (ticket.since, ticket))
        # Stale items below a long-waiting file would pile up; drop them now and then.
        if len(self._oldest) > 2 * self._sum(WAITING_TO_GO_STAGES) + 1024:
            self._oldest = [item for item in self._oldest if item[1].stage in WAITING_TO_GO]
            heapq.heapify(self._oldest)
