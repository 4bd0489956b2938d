"""The circuit breaker in front of FlowFlex: open, or paused until a probe succeeds.

While FlowFlex is unreachable (an outage) or refuses our configuration, no
new file is sent; one probe at a time tests whether it is back, waiting
longer after each failed probe, and files wait where they are meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from flowflexd.engine.snapshot import Pause

log = structlog.get_logger("flowflexd")

OUTAGE_PROBE = (1.0, 60.0)  # first and longest wait between probes while FlowFlex is down
CONFIG_PROBE = (30.0, 300.0)  # ... while it refuses our credentials or integration


class Gate:
    """A circuit breaker in front of FlowFlex: open, or paused until a probe succeeds."""

    def __init__(self, destination: str = "default") -> None:
        self.destination = destination  # the FlowFlex integration this breaker stands before
        self.kind: Pause | None = None  # None while open
        self.reason = ""
        self.since: float | None = None  # wall clock: paused since
        self.on_change: Callable[[], None] = lambda: None
        self.trips = 0  # failed attempts since the pause began (0 while open)
        self.pauses = 0  # times sending paused since start
        self.probe_at = 0.0
        self.probing = False

    @property
    def open(self) -> bool:
        return self.kind is None

    def trip(self, kind: Pause, reason: str, now: float, *, probe: bool) -> None:
        """Pause sending; a failed probe (not a file already in flight) waits longer."""
        if not probe and self.kind == kind:
            return
        first, longest = CONFIG_PROBE if kind is Pause.CONFIG else OUTAGE_PROBE
        changed = kind != self.kind
        self.kind, self.reason = kind, reason
        self.trips += 1
        delay = min(longest, first * 2 ** (self.trips - 1))
        self.probe_at = now + delay
        self.probing = False
        if changed:
            self.pauses += 1
            self.since = time.time()
            self.on_change()
        if changed or self.trips in (2, 5) or self.trips % 20 == 0:
            if kind is Pause.CONFIG:
                log.error(
                    "FlowFlex refuses our configuration; sending is paused and files stay "
                    "where they are",
                    destination=self.destination,
                    reason=reason,
                    fix="check base_url, api_key, api_secret and integration_code of this "
                    "destination, then reload (systemctl reload flowflexd)",
                    next_try_s=round(delay),
                )
            else:
                log.warning(
                    "FlowFlex is unreachable; sending is paused and files wait",
                    destination=self.destination,
                    reason=reason,
                    next_try_s=round(delay),
                )

    def reset(self) -> None:
        was = self.kind
        if was is not None:
            log.info(
                "FlowFlex answers again; sending resumes",
                destination=self.destination,
                after_trips=self.trips,
            )
        self.kind = None
        self.reason = ""
        self.since = None
        self.trips = 0
        self.probing = False
        if was is not None:
            self.on_change()
