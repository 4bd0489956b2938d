"""Says so while the main loop is held by a file system that does not answer.

One loop looks at every inbox, takes its files up and moves finished ones to
done. A call into a share whose server stopped answering (a hard-mounted NFS
share, a CIFS or FUSE mount such as sshfs) does not return until the server
answers, and every folder waits behind it; the journal said nothing of it
but, 30 s later, systemd's "Watchdog timeout". This thread names the folder,
the call and how long it has waited, in the log, in ``systemctl status`` and
for ``flowflexd status``, and says when the loop runs again.

While the loop is held so, this thread feeds systemd's watchdog itself. A
restart cannot help: the new process waits at the same folder, and the old
one may not even exit (closing its files on the share waits for the server
too, FUSE's even after SIGKILL), keeping its inboxes' locks, so that the new
one refuses them and the unit stops. The loop goes on by itself once the
share answers, or once it is forced off (``umount -f``, a FUSE connection
aborted): its inbox is then away, like any unmounted share.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from flowflexd.inbox.answering import FORCE_OFF
from flowflexd.support.durable import write_durable
from flowflexd.support.kernelwait import HELD_AFTER, KernelWaits

log = structlog.get_logger("flowflexd")

# In state_dir while the loop is held: which folder, since when, by which pid. For
# ``flowflexd status``, which must not look at that share itself, or it would wait too.
HELD_FILE = "held.json"
PACKAGE = str(Path(__file__).resolve().parent.parent)


class StallWatch:
    """Watches the thread that calls ``start``; that thread calls ``beat`` each time round."""

    def __init__(
        self,
        status: Callable[[str], None],
        *,
        feed: Callable[[], None] | None = None,
        feed_every: float | None = None,
        note: Path | None = None,
        # The loop comes round at least once a second when all is well (its wait is
        # capped at 1 s); HELD_AFTER is well inside systemd's WatchdogSec=30s.
        after: float = HELD_AFTER,
        look: float = 1.0,
    ) -> None:
        self._status = status
        self._feed = feed  # systemd's watchdog, fed while the loop is held by a share
        self._feed_every = feed_every
        self._fed_at = 0.0
        self._note = note  # HELD_FILE, kept while held
        self._noted = False  # ours to remove: a standby shares state_dir with the active one
        self._after = after
        self._look = look  # between looks once the loop is late
        self._main: int | None = None  # the watched thread, from start()
        self._native: int | None = None  # its native thread id, for its wchan
        self._beat = time.monotonic()
        self._held_since: float | None = None  # the last beat before the loop was held
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        # The folder the loop works in now; set by the loop, read here.
        self._folder: Path | None = None

    def beat(self) -> None:
        """The watched thread came round: it works in no folder until it says so."""
        self._beat = time.monotonic()
        self._folder = None

    def at(self, folder: Path | None) -> None:
        """The watched thread works in ``folder`` now (called from other threads: ignored)."""
        if threading.get_ident() == self._main:
            self._folder = folder

    def start(self) -> None:
        """Watch the calling thread from now on."""
        self._main = threading.get_ident()
        self._native = threading.get_native_id()
        self._done.clear()
        self._held_since = None
        self._beat = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._forget_note()

    def _watch(self) -> None:
        waits = KernelWaits()
        while not self._done.wait(self._next_look()):
            beat = self._beat
            if time.monotonic() - beat < self._after:
                if self._held_since is not None:
                    log.warning(
                        "the main loop runs again", waited_s=round(beat - self._held_since, 1)
                    )
                    self._held_since = None
                    self._forget_note()
                waits.reset()
                continue
            if self._held_since is not None:
                self._feed_watchdog()
                continue
            # Asleep in a file system's wait, not on the GIL or a lock of ours.
            if self._native is not None and waits.look(self._native):
                self._held_since = beat
                self._say_held(time.monotonic() - beat)
                self._fed_at = 0.0
                self._feed_watchdog()

    def _feed_watchdog(self) -> None:
        now = time.monotonic()
        if self._feed is not None and self._feed_every and now - self._fed_at >= self._feed_every:
            self._fed_at = now
            self._feed()

    def _next_look(self) -> float:
        due = self._beat + self._after - time.monotonic()
        return self._look if due <= 0 else max(0.05, due)

    def _say_held(self, waited: float) -> None:
        folder = str(self._folder) if self._folder is not None else None
        # Noted first: whoever reads the log or the status may run flowflexd status next.
        if self._note is not None and folder is not None:
            note = {"pid": os.getpid(), "folder": folder, "since": time.time() - waited}
            try:
                write_durable(self._note, json.dumps(note).encode())
                self._noted = True
            except OSError as err:  # a state_dir on the same share, say
                log.warning("cannot note the held folder for status", error=str(err))
        log.error(
            "the main loop has waited on a file system call; every folder waits with it",
            folder=folder,
            waited_s=round(waited, 1),
            at=_where(sys._current_frames().get(self._main)) if self._main is not None else None,
            fix="bring back the share whose server does not answer (a hard-mounted NFS "
            "share, a CIFS or FUSE mount); flowflexd goes on by itself once it answers. "
            f"To go on without it now, force it off: {FORCE_OFF}; its inbox is then away "
            "and every other folder goes on. A restart does not help: it waits at the same "
            "folder",
            watchdog="fed while the loop is held by the share"
            if self._feed is not None and self._feed_every
            else None,
        )
        where = f" in {folder}" if folder else ""
        self._status(f"waiting on a file system call{where}: its share does not answer")

    def _forget_note(self) -> None:
        if self._note is not None and self._noted:
            self._noted = False
            with contextlib.suppress(OSError):
                self._note.unlink()


def read_note(state_dir: Path) -> dict[str, Any] | None:
    """HELD_FILE as a held daemon wrote it (pid, folder, since); None without a whole one."""
    try:
        note = json.loads((state_dir / HELD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or not isinstance(note.get("folder"), str):
        return None
    return note


def _where(frame: FrameType | None) -> str | None:
    """The innermost of flowflexd's own frames: the call that does not return."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith(PACKAGE):
            name = code.co_filename[len(PACKAGE) - len("flowflexd") :]
            return f"{code.co_qualname} ({name}:{frame.f_lineno})"
        frame = frame.f_back
    return None
