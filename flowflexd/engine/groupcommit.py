"""Finished claims removed together: one journal fsync, and one per folder, for many files.

A delivered file's last steps are its journal record, its link into done, an
fsync of each, and the removal of its claim. One file at a time, that is two
fsyncs per file, each a disk write and a hand-off of the interpreter lock
between workers. Here a worker writes the record and links the file (it
shows in done at once) and hands the claim over; every claim handed over in
the last ``COMMIT_AFTER`` seconds then goes together, after one fsync of the
journal and one of each folder the files went to.

Until its commit, a claim stays in the work area whole. A crash before it
(a kill or a power cut) finds the claim at the next start and carries it on
under its key: its record is in the journal's tail and it is only moved, or
the record was lost with the power and FlowFlex answers the repeated key as
before. So the batching changes when a claim goes, never whether a file is
delivered once.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import structlog

from flowflexd.engine.journal import Journal
from flowflexd.engine.stall import StallWatch
from flowflexd.inbox.spool import Placed, Spool
from flowflexd.support import crashpoints
from flowflexd.support.durable import fsync_dir

log = structlog.get_logger("flowflexd.engine.groupcommit")

COMMIT_AFTER = 0.2  # seconds a finished claim waits for others to commit with
COMMIT_MAX = 256  # a batch this big commits at once, by the worker that filled it
RETRY_AFTER = 10.0  # after an fsync failed (a full or failing disk)


class GroupCommit:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal  # the daemon sets a new one when state_dir changes
        self._pending: list[tuple[Spool, Placed]] = []
        self._first_at: float | None = None  # when the oldest pending claim was handed over
        # Claims a commit could not finish (a disk error, an inbox away): tried again later.
        self._stuck: list[tuple[Spool, Placed]] = []
        self._stuck_until = 0.0
        self._warned: set[str] = set()  # claims whose removal failed and was logged
        self._lock = threading.Lock()
        self._committing = threading.Lock()  # one commit at a time
        self.watch: StallWatch | None = None  # told which folder a commit works in

    def add(self, spool: Spool, placed: Placed) -> None:
        """Hand over a claim whose record is written and whose files are linked."""
        with self._lock:
            self._pending.append((spool, placed))
            if self._first_at is None:
                self._first_at = time.monotonic()
            full = len(self._pending) >= COMMIT_MAX
        crashpoints.reached("before_commit")
        if full:
            self.commit()

    def __len__(self) -> int:
        return len(self._pending) + len(self._stuck)

    def due(self) -> float | None:
        """When the next commit is due (monotonic); None when no claim waits."""
        times = [self._first_at + COMMIT_AFTER] if self._first_at is not None else []
        if self._stuck:
            times.append(self._stuck_until)
        return min(times, default=None)

    def retry_soon(self) -> None:
        """Try the claims held after a failed commit at the next due commit (a folder is back)."""
        self._stuck_until = 0.0

    def commit_due(self, now: float) -> None:
        due = self.due()
        if due is not None and now >= due:
            self.commit(stuck=now >= self._stuck_until)

    def commit(self, *, stuck: bool = True) -> None:
        """Make the pending claims' records and new names durable, then remove the claims.

        With ``stuck``, claims an earlier commit could not finish are tried again too.
        """
        with self._committing:
            with self._lock:
                batch, self._pending, self._first_at = self._pending, [], None
                if stuck:
                    batch, self._stuck = self._stuck + batch, []
            if not batch:
                return
            try:
                self._at(self.journal.dir)
                self.journal.sync()
            except OSError as err:
                self._cannot_sync(batch, err)
                return
            by_spool: dict[Spool, list[Placed]] = {}
            for spool, placed in batch:
                by_spool.setdefault(spool, []).append(placed)
            for spool, placed_there in by_spool.items():
                # On a share, in the inbox's own thread: a server that stopped
                # answering holds that inbox's claims alone.
                spool.run_there(partial(self._finish, spool, placed_there))

    def _finish(self, spool: Spool, batch: list[Placed]) -> None:
        """Make one inbox's new names durable, then remove its claims from the work area."""
        try:
            for target in dict.fromkeys(placed.target for placed in batch):
                self._at(target)
                fsync_dir(target)
        except OSError as err:
            self._cannot_sync([(spool, placed) for placed in batch], err)
            return
        held = []
        for placed in batch:
            self._at(spool.inbox)
            try:
                spool.release(placed)
            except OSError as err:
                held.append((spool, placed))
                # An inbox away says so itself; anything else, once per claim.
                away = isinstance(err, FileNotFoundError)
                with self._lock:
                    said = placed.claim.id in self._warned
                    self._warned.add(placed.claim.id)
                (log.debug if away or said else log.warning)(
                    "cannot remove a finished claim from the work area yet; its file is "
                    "in done, and this is tried again",
                    folder=str(spool.inbox),
                    file=placed.claim.name,
                    claim=placed.claim.id,
                    error=str(err),
                )
            else:
                with self._lock:
                    self._warned.discard(placed.claim.id)
        self._hold(held)

    def _cannot_sync(self, batch: list[tuple[Spool, Placed]], err: OSError) -> None:
        self._hold(batch)
        log.warning(
            "cannot make finished files durable; their claims stay in the work area "
            "and this is tried again",
            error=str(err),
            claims=len(batch),
            retry_in_s=RETRY_AFTER,
        )

    def _at(self, folder: Path) -> None:
        if self.watch is not None:
            self.watch.at(folder)

    def _hold(self, items: list[tuple[Spool, Placed]]) -> None:
        if not items:
            return
        with self._lock:
            self._stuck.extend(items)
            self._stuck_until = time.monotonic() + RETRY_AFTER
