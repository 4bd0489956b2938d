"""watchdog's inotify (or its polling observer), one inbox at a time, turned into name hints.

Events are only hints: a hint says "look at this name again", never "this
file is complete". Names are matched in our own code, not by watchdog's
pattern handler (which drops a rename whose old name it ignores, such as
``scan.tmp`` to ``scan.pdf``). When the kernel's inotify limits are reached,
the folder falls back to polling instead of going silent.

With inotify, an inbox's events come straight from watchdog's inotify reader
thread (``InotifyFD``), one callback per event. watchdog's observer would
pass each event through three more threads (the move grouper, the emitter,
the dispatcher) to pair moves and build event objects that a name hint does
not need; at a few events per file, those hand-offs were 8 % of the daemon's
CPU per file. In a tree, the watch keeps a watch on each folder the tracker
takes files from, and never on flowflexd's own (the work area below
``.flowflexd`` changes with every claim) or on hidden, junk or too deep ones.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
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
from flowflexd.inbox import layout
from flowflexd.support.sparingly import Sparingly

log = structlog.get_logger("flowflexd.inbox.watcher")

Hint = Callable[[str | None], None]  # a name to look at again; None: rescan the folder

OBSERVER_STOP_WAIT = 2.0  # seconds a stop waits for a polling thread; a held one is left
# A queue that overflows under a flood does so many times a second: each time the
# folder is looked at whole, and the warning is said once a minute with a count.
OVERFLOW_SAID_EVERY = 60.0

# A file that appeared, was closed after writing, moved or went is enough of a
# hint: the tracker re-checks a file that is still changing on its own
# schedule, so per-write "modified" events would only add work. The folder
# itself going away (deleted, or moved) asks for a look at the whole inbox.
INOTIFY_MASK = Mask(
    InotifyConstants.IN_CREATE
    | InotifyConstants.IN_CLOSE_WRITE
    | InotifyConstants.IN_MOVE
    | InotifyConstants.IN_DELETE
    | InotifyConstants.IN_DELETE_SELF
    | InotifyConstants.IN_MOVE_SELF
    | InotifyConstants.IN_ONLYDIR
    | InotifyConstants.IN_DONT_FOLLOW
)

INOTIFY_LIMITS = {
    errno.ENOSPC: "fs.inotify.max_user_watches",
    errno.EMFILE: "fs.inotify.max_user_instances",
}


def _limit_fix(sysctl: str) -> str:
    return f"raise it: sysctl -w {sysctl}=<larger>, and persist it in /etc/sysctl.d/"


class _Handler(FileSystemEventHandler):
    """Polling: watchdog's events on the inbox (and below, in a tree) as name hints."""

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


class _InotifyWatch:
    """The inotify watches of one inbox (and of its folders, in a tree).

    watchdog's reader thread calls ``on_event`` and the others; ``stop`` is
    called from the daemon's thread. A hint is a path below the inbox, or None
    (look at the whole folder) when the inbox went away, the kernel's event
    queue overflowed, or a folder moved out of the tree with its files.
    """

    def __init__(self, folder: Folder, hint: Hint) -> None:
        self._root = folder.path
        self._inbox = str(folder.path)
        self._tree = folder.recursive
        self._max_depth = folder.max_depth
        self._owned = layout.owned_names(folder.path, folder.done, folder.failed)
        self._hint = hint
        self._lock = threading.Lock()  # the reader thread and stop(); no hint after stop
        self._live = True
        self._overflows = Sparingly(OVERFLOW_SAID_EVERY)
        self._id = CallbackId(id(self))
        self._reader = InotifyFD.get_instance()
        self._folders: dict[WatchDescriptor, str] = {}  # a watch -> its folder ("": the inbox)
        self._watches: dict[str, WatchDescriptor] = {}  # and back
        try:
            self._watch_below("")
        except OSError:
            self._unwatch(list(self._folders))
            raise

    # ------------------------------------------------------ the reader thread

    def on_event(self, event: InotifyEvent) -> None:
        with self._lock:
            if not self._live:
                return
            folder = self._folders.get(event.wd)
            if folder is None:
                return  # a watch given up; its IN_IGNORED is on its way
            if not event.name:
                if folder == "":
                    self._hint(None)  # the inbox itself was removed or moved
                return  # a subfolder: its parent's event says the same
            path = layout.join_path(folder, os.fsdecode(event.name))
            if self._tree and event.is_directory:
                if event.is_create or event.is_moved_to:
                    self._watch_new(path)
                elif event.is_moved_from:
                    # Its files went with it, or now have other paths: look at all.
                    self._unwatch([wd for wd, f in self._folders.items() if _within(f, path)])
                    self._hint(None)
            self._hint(path)

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        # A watched folder was removed, or its file system unmounted.
        with self._lock:
            if self._forget(wd) == "" and self._live:
                self._live = False  # alive() says so; the inbox's own checks decide what next
                self._hint(None)

    def on_queue_overflow(self) -> None:
        with self._lock:
            if not self._live:
                return
            overflows = self._overflows.came(time.monotonic())
            if overflows is not None:
                log.warning(
                    "inotify's queue overflowed, events were lost; looking at the whole folder",
                    folder=self._inbox,
                    overflows=overflows,
                    fix="if this comes often, raise fs.inotify.max_queued_events (sysctl)",
                )
            if self._tree:
                # Folders made or moved while events were lost: watch the tree afresh.
                self._unwatch([wd for wd, f in self._folders.items() if f])
                try:
                    self._watch_below("")
                except OSError as err:
                    self._give_up(err)
            self._hint(None)

    # ------------------------------------------------------------ internals

    def _watch_below(self, below: str) -> None:
        """Watch ``below`` and, in a tree, every folder under it that files are taken from.

        The limits raise (OSError with ENOSPC or EMFILE); a folder that went
        or cannot be read is left out, as the tracker's walk leaves it out.
        """
        self._add(below, strict=True)
        if self._tree:
            for folder in layout.folders(self._root, self._owned, self._max_depth, below):
                self._add(folder, strict=False)

    def _add(self, folder: str, *, strict: bool) -> None:
        if folder in self._watches:
            # Seen twice: mkdir -p makes a folder and the folders in it before their
            # watches exist. (A folder removed and made again was forgotten first:
            # its watch's IN_IGNORED comes before the new folder's IN_CREATE.)
            return
        path = os.path.join(self._inbox, folder) if folder else self._inbox
        try:
            wd = self._reader.add_callback(os.fsencode(path), INOTIFY_MASK, self, self._id)
        except OSError as err:
            if strict or err.errno in INOTIFY_LIMITS:
                raise
            return
        self._folders[wd] = folder
        self._watches[folder] = wd

    def _watch_new(self, folder: str) -> None:
        """A folder made or moved into the tree: watch it and all below it (mkdir -p, a move)."""
        if not layout.entered(folder, self._owned, self._max_depth):
            return
        try:
            self._watch_below(folder)
        except OSError as err:
            if err.errno in INOTIFY_LIMITS:
                self._give_up(err)
            # Otherwise gone again, or unreadable: the tracker sees the same.

    def _give_up(self, err: OSError) -> None:
        """Out of watches for a new folder: stop, so that the inbox restarts its watch, polling."""
        log.error(
            "inotify limit reached for a new subfolder; this folder's watch starts again",
            folder=self._inbox,
            error=str(err),
            fix=_limit_fix(INOTIFY_LIMITS[err.errno or 0]),
        )
        self._live = False
        self._hint(None)

    def _forget(self, wd: WatchDescriptor) -> str | None:
        folder = self._folders.pop(wd, None)
        if folder is not None and self._watches.get(folder) == wd:
            del self._watches[folder]
        return folder

    def _unwatch(self, wds: list[WatchDescriptor]) -> None:
        for wd in wds:
            self._forget(wd)
        try:
            self._reader.remove_callbacks([(wd, self._id) for wd in wds])
        except OSError as err:
            log.debug("inotify watch removal failed", error=str(err))

    # ------------------------------------------------------- daemon's thread

    def alive(self) -> bool:
        return self._live and self._reader.is_alive()

    def stop(self) -> None:
        with self._lock:
            self._live = False
            self._unwatch(list(self._folders))


def _stop_observer(observer: BaseObserver) -> None:
    try:
        observer.stop()
        observer.join()
    except (OSError, RuntimeError) as err:
        log.debug("observer stop failed", error=str(err))


def _within(folder: str, top: str) -> bool:
    return folder == top or folder.startswith(top + "/")


class FolderWatcher:
    """Watches one inbox with inotify, or by polling (``poll: true`` or as a fallback)."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self._observer: BaseObserver | None = None
        self._inotify: _InotifyWatch | None = None
        self.mode = "stopped"

    def start(self, hint: Hint) -> str:
        """Start watching, calling ``hint`` for every name an event concerns; returns the mode."""
        inbox = str(self.folder.path)
        if not self.folder.poll:
            try:
                self._inotify = _InotifyWatch(self.folder, hint)
            except OSError as err:
                sysctl = INOTIFY_LIMITS.get(err.errno or 0)
                if sysctl is None:
                    raise
                log.error(
                    "inotify limit reached; this folder falls back to polling",
                    folder=inbox,
                    error=str(err),
                    fix=_limit_fix(sysctl),
                )
            else:
                self.mode = "inotify"
                return self.mode
        observer = PollingObserver(timeout=self.folder.poll_interval)
        observer.schedule(
            _Handler(inbox, hint, recursive=self.folder.recursive),
            inbox,
            recursive=self.folder.recursive,
        )
        observer.start()
        self._observer = observer
        self.mode = "polling" if self.folder.poll else "polling (inotify limit)"
        return self.mode

    def alive(self) -> bool:
        if self._inotify is not None:
            return self._inotify.alive()
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.stop()
            self._inotify = None
        if self._observer is not None:
            # watchdog's stop joins the polling thread with no timeout, and that thread
            # may wait in a share whose server is down: stopped aside, waited on a while.
            stopper = threading.Thread(
                target=_stop_observer,
                args=(self._observer,),
                name=f"flowflexd-unwatch {self.folder.path}",
                daemon=True,
            )
            stopper.start()
            stopper.join(timeout=OBSERVER_STOP_WAIT)
            self._observer = None
        self.mode = "stopped"
