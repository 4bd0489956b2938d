"""Where each file is in its life: the one owner of that, with counts kept as files move.

Every file the daemon knows of holds a ticket here from the moment it is
seen until it is finished (done, failed, gone, or no longer watched). The
tracker moves a ticket through the stages before a claim, the daemon through
the stages after it; both ask the ledger for counts instead of keeping their
own, and nothing walks every file to answer "how many" or "since when".

Only the scheduler thread touches a ledger.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from enum import Enum


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


@dataclass
class _Ticket:
    folder: str
    stage: Stage
    since: float  # wall clock: when the file was first seen (or its claim found)


class Ledger:
    def __init__(self) -> None:
        self._tickets: dict[int, _Ticket] = {}
        self._ids = itertools.count(1)
        self._counts = dict.fromkeys(Stage, 0)
        self._by_folder: dict[str, dict[Stage, int]] = {}
        # (since, ticket) of files waiting to go; stale items are dropped when
        # they reach the top, so finding the oldest never walks every file.
        self._oldest: list[tuple[float, int]] = []
        #: Bumped by every change: a snapshot is rebuilt only when it moved.
        self.version = 0

    def enter(self, folder: str, stage: Stage, *, since: float) -> int:
        if stage not in ENTRY_STAGES:
            raise IllegalMove(f"a file cannot start its life {stage.value}")
        ticket = next(self._ids)
        self._tickets[ticket] = _Ticket(folder, stage, since)
        self._count(folder, stage, +1)
        self._note_waiting(ticket, stage, since)
        self.version += 1
        return ticket

    def move(self, ticket: int, stage: Stage) -> None:
        held = self._tickets[ticket]
        if held.stage is stage:
            return
        if stage not in TRANSITIONS[held.stage]:
            raise IllegalMove(f"a file cannot go from {held.stage.value} to {stage.value}")
        was, held.stage = held.stage, stage
        self._count(held.folder, was, -1)
        self._count(held.folder, stage, +1)
        if was not in WAITING_TO_GO:
            self._note_waiting(ticket, stage, held.since)
        self.version += 1

    def finish(self, ticket: int) -> None:
        """The file's life here is over (done, failed, gone, or its folder removed)."""
        held = self._tickets.pop(ticket, None)
        if held is None:
            return
        self._count(held.folder, held.stage, -1)
        self.version += 1

    def stage(self, ticket: int) -> Stage | None:
        held = self._tickets.get(ticket)
        return held.stage if held is not None else None

    def count(self, *stages: Stage, folder: str | None = None) -> int:
        counts = self._counts if folder is None else self._by_folder.get(folder, {})
        return sum(counts.get(stage, 0) for stage in stages)

    def oldest_waiting(self) -> float | None:
        """When the oldest file still waiting to go was first seen (wall clock)."""
        heap = self._oldest
        while heap:
            since, ticket = heap[0]
            held = self._tickets.get(ticket)
            if held is not None and held.stage in WAITING_TO_GO and held.since == since:
                return since
            heapq.heappop(heap)
        return None

    def __len__(self) -> int:
        return len(self._tickets)

    def _count(self, folder: str, stage: Stage, delta: int) -> None:
        self._counts[stage] += delta
        per = self._by_folder.setdefault(folder, dict.fromkeys(Stage, 0))
        per[stage] += delta

    def _note_waiting(self, ticket: int, stage: Stage, since: float) -> None:
        if stage not in WAITING_TO_GO:
            return
        heapq.heappush(self._oldest, (since, ticket))
        # Stale items below a long-waiting file would pile up; rebuild now and then.
        if len(self._oldest) > 2 * self.count(*WAITING_TO_GO) + 1024:
            self._oldest = [
                (held.since, t) for t, held in self._tickets.items() if held.stage in WAITING_TO_GO
            ]
            heapq.heapify(self._oldest)
