"""watchdog observers, one per inbox, turned into name hints.

Events are only hints: a hint says "look at this name again", never "this
file is complete". Names are matched in our own code, not by watchdog's
pattern handler (which drops a rename whose old name it ignores, such as
``scan.tmp`` to ``scan.pdf``). When the kernel's inotify limits are reached,
the folder falls back to polling instead of going silent.
"""

from __future__ import annotations

import errno
import os
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


class FolderWatcher:
    """Watches one inbox with inotify, or by polling (``poll: true`` or as a fallback)."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self._observer: BaseObserver | None = None
        self.mode = "stopped"

    def start(self, hint: Hint) -> str:
        """Start watching, calling ``hint`` for every name an event concerns; returns the mode."""
        inbox = str(self.folder.path)
        recursive = self.folder.recursive
        handler = _Handler(inbox, hint, recursive=recursive)
        if not self.folder.poll:
            observer: BaseObserver | None = None
            try:
                # watchdog opens the inotify instance in the constructor already.
                observer = Observer()
                observer.schedule(handler, inbox, recursive=recursive, event_filter=INOTIFY_EVENTS)
                observer.start()
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
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
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
