"""Named points in a file's journey where tests kill the daemon on purpose.

``FLOWFLEXD_CRASH_AT=after_upload flowflexd run ...`` sends SIGKILL to the
process itself when a file reaches that point, so tests can prove that a
crash at each step loses nothing and sends nothing twice. Unset (always, in
production), each point costs one string comparison.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "after_claim",
    "after_upload",
    "after_send",
    "after_answer",
    "during_move",
    "before_commit",
)
# Reached only by some files (a claim that took a spare folder, before its
# record), so not among the points every file passes.
SPARE_TAKEN = "after_spare_taken"
_CRASH_AT = os.environ.get("FLOWFLEXD_CRASH_AT")


def reached(point: str) -> None:
    if point == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
