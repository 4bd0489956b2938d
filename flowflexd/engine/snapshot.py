"""What the daemon shows of itself: counts for status, sd_notify and the progress line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum


class Pause(Enum):
    OUTAGE = "outage"  # FlowFlex is unreachable or failing
    CONFIG = "config"  # FlowFlex refuses our credentials, integration or base_url


@dataclass(frozen=True)
class FolderCounts:
    folder: str
    waiting: int
    settling: int
    in_flight: int


@dataclass(frozen=True)
class Snapshot:
    """Live counts, replaced whole by the scheduler; safe to read from any thread."""

    waiting: int = 0  # on the way, not yet handed to a worker
    in_flight: int = 0  # claimed: carried by a worker, or waiting for its next attempt
    empty: int = 0
    ignored: int = 0
    companions: int = 0
    incomplete: int = 0
    done: int = 0
    failed: int = 0
    deferred: int = 0  # times a file could not be claimed or finished (disk full ...)
    oldest_waiting_since: float | None = None  # wall clock
    paused: Pause | None = None  # the worst pause of any destination
    paused_destinations: tuple[tuple[str, Pause], ...] = ()  # (destination, why) of each paused
    offline: tuple[str, ...] = ()
    by_folder: tuple[FolderCounts, ...] = ()

    def oldest_waiting_s(self, now: float | None = None) -> int:
        if self.oldest_waiting_since is None:
            return 0
        return max(0, round((time.time() if now is None else now) - self.oldest_waiting_since))

    def text(self) -> str:
        """``waiting 3, in flight 1, done 10, failed 0, oldest waiting 12s`` (+ pause, offline)."""
        text = (
            f"waiting {self.waiting}, in flight {self.in_flight}, done {self.done}, "
            f"failed {self.failed}, oldest waiting {self.oldest_waiting_s()}s"
        )
        where = ""
        if len(self.paused_destinations) > 1 or (
            self.paused_destinations and self.paused_destinations[0][0] != "default"
        ):
            where = f" ({', '.join(name for name, _ in self.paused_destinations)})"
        if self.paused is Pause.CONFIG:
            text += f"; PAUSED{where}: FlowFlex refuses the configuration"
        elif self.paused is Pause.OUTAGE:
            text += f"; paused{where}: FlowFlex unreachable"
        if self.offline:
            text += f"; inbox unavailable: {', '.join(self.offline)}"
        return text
