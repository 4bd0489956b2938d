"""Whether a thread sleeps in the kernel's wait for a file system, read from ``/proc``.

A thread held by a share whose server does not answer sleeps in that file
system's wait (``request_wait_answer`` for FUSE, NFS's and CIFS's own);
``wchan`` names it. A thread waiting for the interpreter lock or for another
of our threads sleeps in a futex instead, and one that runs shows "0".
"""

from __future__ import annotations

from pathlib import Path

# The one rule for "held by a share", for the main loop (stall.py) and for an
# inbox's own thread (own_thread.py): a call out this long, 10 s being past any
# listing or commit seen in the benchmarks (a 100,000-file backlog: 3.6 s) ...
HELD_AFTER = 10.0
# ... whose thread sleeps in the kernel at this many looks a second apart: a slow
# but working share runs its own code between its server's answers.
HELD_LOOKS = 3


def asleep_in_kernel(native_id: int) -> bool:
    """The thread (its native id) sleeps in the kernel, and not on a futex.

    Without ``/proc`` (or the thread gone) this answers True: the callers have
    already waited long enough for that to say enough.
    """
    try:
        where = Path(f"/proc/self/task/{native_id}/wchan").read_text().strip()
    except OSError:
        return True
    return where not in ("", "0") and "futex" not in where


class KernelWaits:
    """Looks at one thread, a second or so apart: held once ``HELD_LOOKS`` in a row find it
    asleep in the kernel (one that runs its own code in between is only slow)."""

    def __init__(self) -> None:
        self._asleep = 0  # looks in a row that found it asleep in the kernel

    @property
    def held(self) -> bool:
        return self._asleep >= HELD_LOOKS

    def look(self, native_id: int) -> bool:
        """Look once more at the thread (its native id); whether it is held now."""
        self._asleep = self._asleep + 1 if asleep_in_kernel(native_id) else 0
        return self.held

    def reset(self) -> None:
        """It came back (or is not yet out long): the next looks count afresh."""
        self._asleep = 0
