"""Rate limits per destination: token buckets shared by every worker sending there.

A destination's API has a quota. ``max_events_per_second`` and
``max_uploads_per_second`` space the calls out evenly, over all workers, so
the quota is never hit; a 429 with ``Retry-After`` (a quota we were not told
about, or shared with others) holds the whole destination for that long,
instead of each worker backing off on its own and the rest running into the
same wall.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("flowflexd")


class TokenBucket:
    """At most ``rate`` takes per second, one at a time (no bursts); None: no limit but holds."""

    def __init__(self, rate: float | None, cancel: threading.Event | None = None) -> None:
        self.rate = rate
        self._cancel = cancel or threading.Event()
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic: when the next take may happen
        self._held_until = 0.0  # monotonic: a 429's Retry-After

    def take(self) -> float:
        """Wait for a turn; returns the seconds waited (0 when there was no need)."""
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next, self._held_until)
            if self.rate:
                self._next = at + 1.0 / self.rate
        wait = at - now
        if wait > 0:
            self._cancel.wait(wait)
        return wait

    def hold(self, seconds: float) -> None:
        """No take for ``seconds`` from now (a 429's Retry-After), for every worker."""
        with self._lock:
            self._held_until = max(self._held_until, time.monotonic() + seconds)


@dataclass
class Limits:
    """One destination's buckets."""

    destination: str
    events: TokenBucket
    uploads: TokenBucket
    throttled: int = field(default=0)  # 429s answered by this destination

    @classmethod
    def of(
        cls,
        destination: str,
        *,
        events: float | None,
        uploads: float | None,
        cancel: threading.Event | None = None,
    ) -> Limits:
        return cls(destination, TokenBucket(events, cancel), TokenBucket(uploads, cancel))

    def throttle(self, call: str, seconds: float) -> None:
        """FlowFlex answered 429 with Retry-After: the whole destination waits that long."""
        self.throttled += 1
        self.events.hold(seconds)
        self.uploads.hold(seconds)
        log.info(
            "FlowFlex asks us to slow down; this destination waits",
            destination=self.destination,
            call=call,
            retry_after_s=seconds,
        )
