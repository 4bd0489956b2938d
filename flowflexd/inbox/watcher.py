"""watchdog's inotify (or its polling observer), one watch per inbox, turned into name hints.

Events are only hints: a hint says "look at this name again", never "this
file is complete". Names are matched in our own code, not by watchdog's
pattern handler (which drops a rename whose old name it ignores, such as
``scan.tmp`` to ``scan.pdf``). When the kernel's inotify limits are reached,
the folder falls back to polling instead of going silent.

A flat inbox (not ``recursive``) takes its events straight from watchdog's
inotify reader thread. Its observer would pass each event through three more
threads (the move grouper, the emitter, the dispatcher), to pair moves and
build event objects that a name hint does not need; at a few events per
file, those hand-offs were 8 % of the daemon's CPU per file. A tree keeps the
observer, whose emitter adds and moves the watches of its subfolders.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserver

from flowflexd.config.model import Folder

log = structlog.get_logger("flowflexd.inbox.watcher")

Hint = Callable[[str | None], None]  # a name to look at again; None: rescan the folder

# With inotify, a file that appeared, was closed after writing, or moved is
# enough of a hint: the tracker re-checks a file that is still changing on
# its own schedule, so per-write "modified" events would only add work.
INOTIFY_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    DirCreatedEvent,  # a new folder (per user or device) is entered at once with recursive
]

# The kernel mask watchdog's emitter asks for with INOTIFY_EVENTS, so that a
# flat inbox and a tree sharing a watch (one inotify instance per process)
# never rewrite each other's mask.
FLAT_MASK = Mask(
    InotifyConstants.IN_CREATE
    | InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVE
    | InotifyConstants.IN_DELETE
    | InotifyConstants.IN_DELETE_SELF
    | InotifyConstants.IN_DONT_FOLLOW
)

INOTIFY_LIMITS = {
    errno.ENOSPC: "fs.inotify.max_user_watches",
    errno.EMFILE: "fs.inotify.max_user_instances",
}


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: str, hint: Hint, *, recursive: bool) -> None:
        self._inbox = inbox
        self._below = inbox.rstrip("/") + "/"
        self._hint = hint
        self._recursive = recursive

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE):
            return
        paths = [event.src_path]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(dest)
        for raw in paths:
            path = os.fsdecode(raw)
            parent, name = os.path.split(path)
            if parent == self._inbox and name:
                self._hint(name)
            elif self._recursive and path.startswith(self._below):
                # A path below a subfolder; the tracker decides which folders count.
                self._hint(path[len(self._below) :])
            elif path == self._inbox and event.event_type in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
                # The inbox itself moved or vanished. (A "modified" event on it
                # only says an entry changed; that entry has its own event.)
                self._hint(None)


class _FlatWatch:
    """One inotify watch on a flat inbox; watchdog's reader thread calls it per event.

    It only passes names on: a name in the inbox, or None (look at the whole
    folder) when the inbox itself went away or the kernel's queue overflowed
    and events were lost.
    """

    def __init__(self, inbox: str, hint: Hint) -> None:
        self._hint = hint
        self._lock = threading.Lock()  # stop() and the reader thread; no hint after stop
        self._live = True
        self._id = CallbackId(id(self))
        self._reader = InotifyFD.get_instance()
        self._wd: WatchDescriptor = self._reader.add_callback(
            os.fsencode(inbox), FLAT_MASK, self, self._id
        )

    def on_event(self, event: InotifyEvent) -> None:
        with self._lock:
            if self._live:
                self._hint(os.fsdecode(event.name) if event.name else None)

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        # The inbox was removed, or its file system unmounted: alive() says so,
        # and the inbox's own checks decide whether it is gone or back.
        with self._lock:
            if self._live:
                self._live = False
                self._hint(None)

    def on_queue_overflow(self) -> None:
        with self._lock:
            if self._live:
                self._hint(None)

    def alive(self) -> bool:
        return self._live and self._reader.is_alive()

    def stop(self) -> None:
        with self._lock:
            self._live = False
        try:
            self._reader.remove_callbacks([(self._wd, self._id)])
        except OSError as err:
            log.debug("inotify watch removal failed", error=str(err))


class FolderWatcher:
    """Watches one inbox with inotify, or by polling (``poll: true`` or as a fallback)."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self._observer: BaseObserver | None = None
        self._flat: _FlatWatch | None = None
        self.mode = "stopped"

    def start(self, hint: Hint) -> str:
        """Start watching, calling ``hint`` for every name an event concerns; returns the mode."""
        inbox = str(self.folder.path)
        recursive = self.folder.recursive
        handler = _Handler(inbox, hint, recursive=recursive)
        if not self.folder.poll:
            observer: BaseObserver | None = None
            try:
                # watchdog opens its inotify instance on first use: here, or in the constructor.
                if recursive:
                    observer = Observer()
                    observer.schedule(handler, inbox, recursive=True, event_filter=INOTIFY_EVENTS)
                    observer.start()
                else:
                    self._flat = _FlatWatch(inbox, hint)
            except OSError as err:
                sysctl = INOTIFY_LIMITS.get(err.errno or 0)
                if sysctl is None:
                    raise
                if observer is not None:
                    _stop_quietly(observer)
                log.error(
                    "inotify limit reached; this folder falls back to polling",
                    folder=inbox,
                    error=str(err),
                    fix=f"raise it: sysctl -w {sysctl}=<larger>, and persist it in /etc/sysctl.d/",
                )
            else:
                self._observer = observer
                self.mode = "inotify"
                return self.mode
        observer = PollingObserver(timeout=self.folder.poll_interval)
        observer.schedule(handler, inbox, recursive=recursive)
        observer.start()
        self._observer = observer
        self.mode = "polling" if self.folder.poll else "polling (inotify limit)"
        return self.mode

    def alive(self) -> bool:
        if self._flat is not None:
            return self._flat.alive()
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        if self._flat is not None:
            self._flat.stop()
            self._flat = None
        if self._observer is not None:
            _stop_quietly(self._observer)
            self._observer = None
        self.mode = "stopped"


def _stop_quietly(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except (OSError, RuntimeError) as err:
        log.debug("observer stop failed", error=str(err))
