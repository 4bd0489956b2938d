"""A warning that can come many times a second, said at most once a while, with a count.

Some conditions repeat in bursts (inotify's queue overflowing under a flood
of files, say): each occurrence is handled, but a line for each would bury
the journal. The first is said at once; later ones within ``every`` seconds
are counted, and the next line says how many there were.
"""

from __future__ import annotations

import math


class Sparingly:
    """When to say a repeated thing: at most once every ``every`` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._said_at = -math.inf
        self._since = 0  # occurrences since the last line, this one included

    def came(self, now: float) -> int | None:
        """It happened (at monotonic ``now``). How many times since the last line, if one is
        due now; None while it is kept quiet."""
        self._since += 1
        if now - self._said_at < self.every:
            return None
        self._said_at, count, self._since = now, self._since, 0
        return count
