"""One inbox's online and offline life: prepared, watched, gone, back, reconfigured.

An inbox can vanish (an unmounted share, a removed folder) or be replaced
(remounted: a new inode) while the daemon runs. Each check notices, stops
watching while it is gone, and when it is back prepares it again, watches
it, and hands over the claims an earlier run left in its work area. Other
inboxes keep running meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from flowflexd.config.model import Folder
from flowflexd.engine.lifecycle import Ledger
from flowflexd.errors import UserError
from flowflexd.inbox.answering import FORCE_OFF, NOT_ANSWERING, Looker, NotAnswering
from flowflexd.inbox.completeness import NO_LEASE, NO_LEASE_FIX
from flowflexd.inbox.mounts import FSTAB, lease_problem, unmounted_share
from flowflexd.inbox.own_thread import OwnThread
from flowflexd.inbox.spool import (
    GONE_HINT,
    GONE_REASON,
    Carried,
    Claim,
    FolderMisplaced,
    FolderUnavailable,
    Spool,
    Unreadable,
    unusable,
)
from flowflexd.inbox.tracker import Ready, Tracker
from flowflexd.inbox.watcher import FolderWatcher

log = structlog.get_logger("flowflexd")

OFFLINE_CHECK_SECONDS = 5.0
NameHint = Callable[[str | None], None]  # a name changed (None: look at all)


@dataclass(frozen=True)
class Trouble:
    """Why an inbox is not taken up now, since when (wall clock): for ``flowflexd status``."""

    reason: str
    hint: str | None
    since: float
    answering: bool = True  # False: its share does not answer, and status must not look


def inbox_identity(path: Path) -> tuple[int, int] | None:
    """The inbox's (device, inode): a change means it was replaced or remounted."""
    found = look_at(path)
    return None if isinstance(found, OSError) else found


def look_at(path: Path) -> tuple[int, int] | OSError | None:
    """The inbox's identity; None when it is not there; the error when it cannot be seen.

    Not there is an unmounted share or a removed folder. Any other error is
    not: no access to a folder above it, a share's server not answering
    (EIO, a stale NFS handle) say what they are, and what to do.
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        return err
    return (info.st_dev, info.st_ino)


@dataclass(frozen=True)
class Turn:
    """What an inbox's look and step found (``Inbox.turn``): on the loop, or in its own thread."""

    found: list[Claim | Unreadable]  # claims to resume, from a take-up
    ready: list[Ready]
    looked: bool  # the periodic look was made
    came_online: bool


@dataclass(frozen=True)
class Sight:
    """What a look at an inbox found: where its path leads, and what is there."""

    real: str
    identity: tuple[int, int] | OSError | None


def look_into(path: Path) -> Sight:
    """Everything a look asks of the inbox's file system, made in one go.

    Both calls may wait on a share whose server is down, so both are made by
    the inbox's ``Looker``, never on the main loop.
    """
    return Sight(os.path.realpath(path), look_at(path))


class Inbox:
    def __init__(
        self,
        folder: Folder,
        *,
        ledger: Ledger,
        settle_seconds: float,
        rescan_seconds: float,
        watch: bool,
        hint: Callable[[Inbox], NameHint],
        carried: Carried,
        own: OwnThread | None = None,
    ) -> None:
        self.folder = folder
        self.spool = Spool(folder, carried)
        # On a share: the calls into its folders are made in this thread (own_thread.py).
        self.own = own
        if own is not None:
            self.spool.run_there = own.submit
        # The main loop's calls out in its own thread: till they answer, the tracker is theirs.
        self.out = 0
        self.held_since: float | None = None  # wall clock: a call there waits on its share
        self.looked_early = 0.0  # when a worker out long on its files last asked for a look
        self._notes: set[str] = set()  # hints and releases that came meanwhile
        self._rescan_asked = False
        self._releases: list[tuple[Ready, float]] = []
        self.tracker = Tracker(folder, settle_seconds=settle_seconds, ledger=ledger)
        self.watcher = FolderWatcher(folder)
        self.looker = Looker(folder.path, look_into)
        self.rescan_seconds = rescan_seconds
        self.watch = watch  # False for ``once``: one look, no watch
        self._hint = hint(self)
        self.online = False
        self.identity: tuple[int, int] | None = None
        self.next_rescan = 0.0
        self.said_offline: set[str] = set()  # why it is away, each said once until it is back
        self.trouble: Trouble | None = None  # the latest, while it is away
        # Its folder was there, or made, once in this run: missing from then on, it is
        # away (an unmounted share) and never made again, where a start makes it.
        self.seen = False

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def answering(self) -> bool:
        """False while its share is known not to answer: a look gave up, or a call is held."""
        if self.held_since is not None:
            return False
        return self.online or self.trouble is None or self.trouble.answering

    @property
    def lent(self) -> bool:
        """Its tracker is lent to its own thread: the main loop leaves it alone till it answers."""
        return self.out > 0

    def note(self, name: str | None) -> None:
        """A name changed in the inbox (None: look at all), said by its watch."""
        if self.lent:
            if name is None:
                self._rescan_asked = True
            else:
                self._notes.add(name)
        elif name is None:
            self.next_rescan = 0.0
        else:
            self.tracker.note(name)

    def release(self, ready: Ready, look_again_in: float = 0.0) -> None:
        """A file handed out came back: its names are looked at afresh (``Tracker.release``)."""
        if self.lent:
            self._releases.append((ready, look_again_in))
        else:
            self.tracker.release(ready, look_again_in=look_again_in)

    def answered(self) -> None:
        """One of the main loop's calls in its own thread came back: what waited is told now."""
        self.out -= 1
        if self.lent:
            return
        for ready, look_again_in in self._releases:
            self.tracker.release(ready, look_again_in=look_again_in)
        for name in self._notes:
            self.tracker.note(name)
        if self._rescan_asked:
            self.next_rescan = 0.0
        self._releases.clear()
        self._notes.clear()
        self._rescan_asked = False

    def turn(self, now: float | None = None) -> Turn:
        """Its look (when due) and its step."""
        now = time.monotonic() if now is None else now
        looked = now >= self.next_rescan
        was_online = self.online
        found = self.check(now) if looked else []
        ready = self.tracker.step(now) if self.online else []
        return Turn(found, ready, looked, self.online and not was_online)

    def start(self, now: float) -> list[Claim | Unreadable]:
        """Prepare and watch the inbox; the claims left by an earlier run.

        An inbox that cannot be used now is logged and looked at again every
        few seconds; a done or failed folder on another filesystem is a
        configuration error and raises.
        """
        if self._look(now) is None:
            return []
        try:
            self.spool.prepare()
        except FolderMisplaced:
            raise
        except FolderUnavailable as err:
            self.seen = inbox_identity(self.path) is not None  # made, then refused
            self._unavailable(err, now)
            return []
        self.seen = True
        why = lease_problem(self.folder)
        if why is not None:
            log.warning(
                f"{NO_LEASE}; files are taken once settled alone",
                folder=str(self.path),
                reason=why,
                fix=NO_LEASE_FIX,
            )
            self.tracker.said_no_lease = True
        return self._go_online(now)

    def check(self, now: float) -> list[Claim | Unreadable]:
        """The periodic look: gone, back, replaced, or a full rescan; claims to resume."""
        sight = self._look(now)
        if sight is None:
            return []
        identity = sight.identity
        if isinstance(identity, OSError):
            self._unavailable(identity, now)
            return []
        self.seen = self.seen or identity is not None
        if identity is None and self.seen:
            self._away(
                GONE_REASON,
                GONE_HINT,
                now,
                "inbox is gone (unmounted or removed); other folders keep running, "
                "this one resumes when it is back",
            )
            return []
        if (
            not self.online
            or identity != self.identity
            or (self.watch and not self.watcher.alive())
        ):
            try:
                # One this run could not yet make (no write access above it) is made now.
                self.spool.prepare(create_inbox=not self.seen)
            except UserError as err:
                self._unavailable(err, now)
                return []
            rewatched = self.online and identity == self.identity
            if rewatched:
                log.warning("this folder's watch stopped; watching it again", folder=str(self.path))
            was_away = bool(self.said_offline) or self.identity is not None
            found = self._go_online(now)
            # Said only once it is taken up: a share still remounting goes again meanwhile.
            if self.online and was_away and not rewatched:
                log.info("inbox is back", folder=str(self.path), claims_found=len(found))
            return found
        self.tracker.rescan()
        self.next_rescan = now + self.rescan_seconds
        log.debug("rescanned", folder=str(self.path))
        return []

    def reconfigure(self, folder: Folder, *, settle_seconds: float, rescan_seconds: float) -> None:
        """New settings for the same inbox: what is queued or claimed stays as it is."""
        restart = _watched_as(folder) != _watched_as(self.folder)
        self.folder = folder
        self.spool.folder = folder
        self.rescan_seconds = rescan_seconds
        now = time.monotonic()
        if self.online and self._look(now) is not None:
            try:
                self.spool.prepare(create_inbox=False)  # a new done or failed folder must exist
            except UserError as err:
                self._unavailable(err, now)
        # Away, it is prepared with these settings when it is back: the next look.
        self.tracker.reconfigure(folder, settle_seconds=settle_seconds)
        self.watcher.folder = folder
        if restart and self.online and self.watch:
            try:
                self._watch()
            except OSError as err:
                self._unavailable(err, now)
        self.next_rescan = min(self.next_rescan, now)

    def close(self) -> None:
        """No longer this daemon's: stop watching, give up the lock, leave the ledger."""
        self.watcher.stop()
        self.spool.unlock()
        self.tracker.close()

    def _go_online(self, now: float) -> list[Claim | Unreadable]:
        self.identity = inbox_identity(self.path)
        found: list[Claim | Unreadable] = []
        try:
            if self.watch:
                self._watch()
            for item in self.spool.pending():
                found.append(item)
        except (OSError, FolderUnavailable) as err:
            # Gone or changed again while it was being taken up (a share remounting):
            # nothing of it counts, and the next look finds its claims afresh.
            for item in found:
                if isinstance(item, Claim):
                    self.spool.carried.discard(item.id)
            self._unavailable(err, now)
            return []
        self.online = True
        self.said_offline.clear()
        self.trouble = None
        self.tracker.rescan()
        self.next_rescan = now + self.rescan_seconds
        return found

    def _share_down(self, now: float, real: str) -> bool:
        """Away while the share fstab mounts at or above the inbox is not mounted."""
        share = unmounted_share(real)
        if share is None:
            return False
        self._away(
            f"its share {share} is not mounted ({FSTAB} mounts it there)",
            f"mount it (mount {share}); the inbox is taken up by itself once it is there",
            now,
            "inbox's share is not mounted; other folders keep running, this one resumes when it is",
            share=share,
        )
        return True

    def _look(self, now: float) -> Sight | None:
        """A look at the inbox; None, and the inbox away, when it does not answer or its
        fstab share is not mounted.

        Made in a thread of its own and waited on for ``LOOK_TIMEOUT`` seconds at
        most, so that a share whose server is down holds this inbox only.
        """
        sight = self.looker.look()
        if not isinstance(sight, NotAnswering):
            return None if self._share_down(now, sight.real) else sight
        reason = f"it does not answer: {NOT_ANSWERING}"
        fix = (
            "bring back the share's server or the network to it; the inbox is taken up by "
            f"itself once it answers. To go on without it, force the share off: {FORCE_OFF}"
        )
        self._away(
            reason,
            fix,
            now,
            "inbox does not answer; other folders keep running, this one resumes when it does",
            error=reason,
            hint=fix,
            answering=False,
        )
        return None

    def _unavailable(self, err: UserError | OSError, now: float) -> None:
        """The inbox cannot be used now: unwatched, looked at again in a few seconds.

        Each kind of trouble is said once while the inbox is away, so a share
        that flaps says little, and one that comes back refused says why.
        """
        if isinstance(err, OSError):
            err = unusable(self.path, err)
        self._away(
            err.message,
            err.hint,
            now,
            "inbox unavailable; other folders keep running, this one is looked at "
            "again every few seconds",
            error=err.message,
            hint=err.hint,
        )

    def _away(
        self,
        reason: str,
        fix: str | None,
        now: float,
        event: str,
        *,
        answering: bool = True,
        **fields: object,
    ) -> None:
        """Unwatched, looked at again in a few seconds, ``reason`` and ``fix`` what status
        shows; ``event`` logged the first time this kind of trouble is met while away."""
        self.watcher.stop()
        self.online = False
        self.next_rescan = now + OFFLINE_CHECK_SECONDS
        since = self.trouble.since if self.trouble is not None else time.time()
        self.trouble = Trouble(reason, fix, since, answering)
        kind = fix or reason  # the paths in a reason vary; a fix names the kind
        if kind not in self.said_offline:
            self.said_offline.add(kind)
            log.error(event, folder=str(self.path), **fields)

    def _watch(self) -> None:
        self.watcher.stop()
        mode = self.watcher.start(self._hint)
        log.info("watching", folder=str(self.path), mode=mode)


def _watched_as(folder: Folder) -> tuple[object, ...]:
    """What a folder's watch is built from (a tree's watches follow depth and owned folders)."""
    return (
        folder.poll,
        folder.poll_interval,
        folder.recursive,
        folder.max_depth,
        folder.done,
        folder.failed,
    )
