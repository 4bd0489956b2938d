"""Which files of one inbox are complete and ready to take, and what goes with each.

Driven by one thread (the daemon's scheduler): hints and rescans say which
names to look at; ``step`` looks, and returns the files to claim. A file is
complete once its size, mtime and ctime held still for ``settle_seconds``
(all of them: Samba reserves a file's full size when a copy starts, and
ctime moves on every write or rename, which no copier can set back). Empty
files and temporary names are never taken. A settled file must also be
whole (see completeness.py): no other process has it open for writing, its
end was written, and its format's trailer is there; until then it waits, and
a file still cut short after the rule's ``incomplete_timeout`` fails as
INCOMPLETE_FILE. A file whose sidecar or attachments have not come waits for
them up to the rule's ``sidecar_timeout``; companions are never sent on
their own.
"""

from __future__ import annotations

import heapq
import os
import stat
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

import structlog

from flowflexd.client.filetypes import MAX_FILE_BYTES, mime_for_name
from flowflexd.config.model import Folder
from flowflexd.engine.lifecycle import (
    HANDED_OVER,
    OBSERVED,
    WAITING_TO_GO,
    Ledger,
    Stage,
    Ticket,
)
from flowflexd.engine.outcomes import Code, Decision, Verdict
from flowflexd.errors import FileRejected
from flowflexd.inbox import layout
from flowflexd.inbox.completeness import NO_LEASE, NO_LEASE_FIX, Writers, examine, someone_writes
from flowflexd.inbox.reading import describe_mode, read_manifest, signature
from flowflexd.rules.matching import (
    Match,
    Rule,
    companion_patterns,
    companions,
    could_be_companion,
    document_name,
    is_temporary_name,
    match,
)
from flowflexd.rules.sanitize import asset_name

log = structlog.get_logger("flowflexd.inbox.tracker")


#: A file the daemon has (handed over), or finished and has not yet released: an
#: inbox in its own thread hears of the release only when its step answers.
THE_DAEMONS: frozenset[Stage | None] = frozenset({*HANDED_OVER, None})
EMPTY_RECHECK_SECONDS = 5.0
MAX_ROWS_SHOWN = 20  # bad rows named in a reason; the rest are counted


@dataclass(slots=True, eq=False)
class Entry(Ticket):
    """A name in the inbox, and (as a Ticket) the file's place in the ledger."""

    name: str
    sig: tuple[int, int, int, int] | None = None
    still_since: float = 0.0  # monotonic time since when nothing changed
    complete_at: float | None = None  # monotonic: when the wait for companions began
    incomplete_since: float | None = None  # monotonic: settled but not whole since
    due: float | None = None
    said: set[str] | None = None  # what was logged about it once; most files never need it

    def say_once(self, key: str) -> bool:
        if self.said is None:
            self.said = set()
        elif key in self.said:
            return False
        self.said.add(key)
        return True


@dataclass(frozen=True, slots=True)
class Ready:
    """A file to claim with its companions, or to set aside with ``reject``.

    Kept small: a backlog of 100,000 files means as many of these at once.
    """

    name: str
    rule: str
    expect: tuple[int, int, int, int]  # its signature when judged whole; claimed only if so still
    ticket: Ticket
    companions: tuple[tuple[str, str], ...] = ()  # (role, name) of its sidecar and attachments
    reject: Decision | None = None
    # When the tracker found no writer (monotonic): a claim soon after need not probe again.
    judged_at: float = 0.0

    @property
    def members(self) -> dict[str, str]:
        """role -> name: ``file`` and its companions."""
        return {"file": self.name, **dict(self.companions)}


class Tracker:
    def __init__(
        self,
        folder: Folder,
        *,
        settle_seconds: float,
        ledger: Ledger,
    ) -> None:
        self.folder = folder
        self.inbox = folder.path
        self.ledger = ledger
        self.key = str(folder.path)  # this inbox's files in the ledger
        self.settle = settle_seconds
        # On a network mount, ctime comes from another machine's clock.
        self.trust_ctime = not folder.poll
        self._entries: dict[str, Entry] = {}
        self._pending: set[str] = set()
        self._heap: list[tuple[float, str]] = []
        self._later: list[tuple[float, str]] = []  # names to look at again after a wait
        self._wanted_by: dict[str, str] = {}  # companion name -> the file waiting for it
        self._wants: dict[str, set[str]] = {}  # file -> its companions' names (the reverse)
        self._prefetchable: set[str] = set()  # settling files a rule takes, not yet offered
        self._offered: set[str] = set()
        self._patterns = companion_patterns(folder.rules)
        self._skip = layout.owned_names(folder.path, folder.done, folder.failed)
        # With a manifest rule, a file no rule takes may be a document of a manifest to come.
        self._manifests = any(rule.manifest for rule in folder.rules)
        self._folder_markers = _folder_markers(folder)
        self._batches: dict[str, set[str]] = {}  # folder marker path -> files waiting on it
        self._batch_of: dict[str, str] = {}  # file -> the folder marker it waits on
        self.said_no_lease = False

    def reconfigure(self, folder: Folder, *, settle_seconds: float) -> None:
        """New rules or settings: every name is judged again, what is queued stays queued."""
        self.folder = folder
        self.settle = settle_seconds
        self.trust_ctime = not folder.poll
        self._patterns = companion_patterns(folder.rules)
        self._skip = layout.owned_names(folder.path, folder.done, folder.failed)
        self._manifests = any(rule.manifest for rule in folder.rules)
        self._folder_markers = _folder_markers(folder)
        self._batches.clear()
        self._batch_of.clear()
        self._wanted_by.clear()
        self._wants.clear()
        for name, entry in self._entries.items():
            if entry.stage not in THE_DAEMONS:
                self._set(entry, Stage.SETTLING)
                entry.complete_at = None
                entry.said = None
                self._pending.add(name)

    # ------------------------------------------------------------------ input

    def note(self, name: str) -> None:
        """Look at ``name`` again at the next step."""
        self._pending.add(name)

    def rescan(self) -> None:
        """Look at every name in the inbox (nothing, when it cannot be listed now).

        With ``recursive``, every name in the subfolders taken from too, as a
        path below the inbox ("alice/scan.pdf").
        """
        try:
            if self.folder.recursive:
                os.stat(self.inbox)  # gone: nothing to list, nothing forgotten
                names = set(layout.walk(self.inbox, self._skip, self.folder.max_depth))
            else:
                names = set(os.listdir(self.inbox))
        except OSError:
            return
        for name in [n for n in self._entries if n not in names]:
            if self._entries[name].stage not in THE_DAEMONS:
                self._forget(name)
        self._pending.update(names)

    def close(self) -> None:
        """The folder is no longer watched: its files leave the ledger, but handed-over ones."""
        for name in list(self._entries):
            self._drop(name)

    def release(self, ready: Ready, *, look_again_in: float = 0.0) -> None:
        """A claim finished (or never happened): its names are looked at afresh.

        A new copy dropped under the same name while the first was carried
        is then seen at once, not at the next full rescan. A file that could
        not be claimed is looked at again after ``look_again_in`` seconds.
        """
        at = time.monotonic() + look_again_in
        for name in ready.members.values():
            self._forget(name)
            if look_again_in > 0:
                heapq.heappush(self._later, (at, name))
            else:
                self._pending.add(name)

    # ----------------------------------------------------------------- output

    def next_due(self) -> float | None:
        """When ``step`` has something to look at next (monotonic); 0 for names noted now."""
        if self._pending:
            return 0.0
        later = self._later[0][0] if self._later else None
        while self._heap:
            due, name = self._heap[0]
            entry = self._entries.get(name)
            if entry is not None and entry.due == due:
                return due if later is None else min(due, later)
            heapq.heappop(self._heap)
        return later

    def step(self, now: float | None = None) -> list[Ready]:
        now = time.monotonic() if now is None else now
        while self._heap and self._heap[0][0] <= now:
            _, name = heapq.heappop(self._heap)
            entry = self._entries.get(name)
            if entry is not None and entry.due is not None and entry.due <= now:
                entry.due = None
                self._pending.add(name)
        while self._later and self._later[0][0] <= now:
            self._pending.add(heapq.heappop(self._later)[1])
        ready: list[Ready] = []
        while self._pending:
            pending, self._pending = self._pending, set()
            # Folder markers after the files beside them: a marker judged first would
            # see no batch and move on before the files it completes were looked at.
            markers = []
            for name in pending:
                if self._is_folder_marker(name):
                    markers.append(name)
                elif (found := self._observe(name, now)) is not None:
                    ready.append(found)
            for name in markers:
                if (found := self._observe(name, now)) is not None:
                    ready.append(found)
        if len(ready) > 1:
            # The order they are queued in: a backlog drains oldest first (or by name).
            if self.folder.order == "name":
                ready.sort(key=lambda r: r.name)
            else:
                ready.sort(key=lambda r: (r.expect[1], r.name))  # mtime, then name
        return ready

    def unfinished(self) -> int:
        """Files still on their way: names not yet looked at, and files waiting to go."""
        return self.ledger.count(*WAITING_TO_GO, folder=self.key) + len(self._pending)

    # -------------------------------------------------------------- internals

    def take_prefetch(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` settling files (name, inode) whose upload URL may be asked for now."""
        out: list[tuple[str, int]] = []
        while self._prefetchable and len(out) < limit:
            name = self._prefetchable.pop()
            entry = self._entries.get(name)
            if entry is not None and entry.stage is Stage.SETTLING and entry.sig:
                self._offered.add(name)
                out.append((name, entry.sig[3]))
        return out

    def _worth_prefetching(self, name: str, info: os.stat_result) -> bool:
        """A file FlowFlex will take: its type allowed, within the cap, a rule for it.

        Disallowed and oversized files fail without any request, so they are
        never offered.
        """
        return (
            stat.S_ISREG(info.st_mode)
            and 0 < info.st_size <= MAX_FILE_BYTES
            and mime_for_name(asset_name(os.path.basename(name))) is not None
            and match(self.folder.rules, *reversed(layout.split_path(name))) is not None
        )

    def _set(self, entry: Entry, stage: Stage) -> None:
        self.ledger.move(entry, stage)

    def _drop(self, name: str) -> None:
        """Stop tracking a name; a file handed over is the daemon's to finish."""
        entry = self._entries.pop(name, None)
        if entry is not None and entry.stage in OBSERVED:
            self.ledger.finish(entry)
        marker = self._batch_of.pop(name, None)
        if marker is not None:
            batch = self._batches.get(marker, set())
            batch.discard(name)
            if not batch:
                # The last file of its batch is gone: the folder marker can follow it.
                self._batches.pop(marker, None)
                self._pending.add(marker)

    def _is_folder_marker(self, name: str) -> bool:
        return bool(self._folder_markers) and os.path.basename(name) in self._folder_markers

    def _forget(self, name: str) -> None:
        self._drop(name)
        self._prefetchable.discard(name)
        self._offered.discard(name)
        for companion in self._wants.pop(name, ()):
            if self._wanted_by.get(companion) == name:
                del self._wanted_by[companion]
        primary = self._wanted_by.pop(name, None)
        if primary is not None:
            self._wants.get(primary, set()).discard(name)

    def _schedule(self, entry: Entry, at: float) -> None:
        entry.due = at
        heapq.heappush(self._heap, (at, entry.name))

    def _look(self, name: str, now: float) -> tuple[Entry, os.stat_result] | None:
        """lstat a name and update its stillness; None when it is gone."""
        try:
            # A str path, not a Path: pathlib interns every part, a table
            # that grows with every name a busy inbox has ever held.
            info = os.lstat(os.path.join(self.key, name))
        except OSError:
            self._drop(name)
            return None
        entry = self._entries.get(name)
        if entry is None:
            entry = Entry(self.key, Stage.SETTLING, time.time(), name)
            self._entries[name] = self.ledger.admit(entry)
        sig = signature(info)
        if sig != entry.sig:
            entry.sig = sig
            entry.complete_at = None
            entry.incomplete_since = None
            entry.still_since = now
            if self.trust_ctime:
                age = time.time() - info.st_ctime
                if age > 0:
                    entry.still_since = now - age
            if entry.stage not in THE_DAEMONS | {Stage.COMPANION}:
                self._set(entry, Stage.SETTLING)
        return entry, info

    def _outside(self, name: str) -> bool:
        """Not a name to take: flowflexd's own, a temporary one, or in a folder not entered."""
        if name in self._skip or is_temporary_name(os.path.basename(name)):
            return True
        if "/" not in name:
            return False
        return not self.folder.recursive or not layout.entered(
            name.rpartition("/")[0], self._skip, self.folder.max_depth
        )

    def _enter(self, folder: str) -> None:
        """A subfolder appeared (made, or a whole tree moved in): look at all of it now."""
        self._drop(folder)  # folders are entered, not tracked
        for name in layout.walk(self.inbox / folder, set(), self._depth_left(folder)):
            self._pending.add(f"{folder}/{name}")

    def _depth_left(self, folder: str) -> int | None:
        if self.folder.max_depth is None:
            return None
        return self.folder.max_depth - (folder.count("/") + 1)

    def _a_folder(self, name: str, entry: Entry, info: os.stat_result) -> bool:
        """Handle a folder (entered, or left alone) or a link to one; True when it was one."""
        if stat.S_ISDIR(info.st_mode) and self.folder.recursive:
            depth_left = self._depth_left(name)
            if name in self._skip or layout.skipped_folder(os.path.basename(name)):
                self._drop(name)
            elif depth_left is None or depth_left >= 0:
                self._enter(name)
            else:
                self._drop(name)
            return True
        if (
            stat.S_ISLNK(info.st_mode)
            and self.folder.recursive
            and os.path.isdir(os.path.join(self.key, name))
        ):
            self._set(entry, Stage.IGNORED)  # a folder behind a link is never followed
            if entry.say_once("link"):
                log.info(
                    "a symbolic link to a folder is not followed; it stays",
                    folder=str(self.inbox),
                    file=name,
                )
            return True
        if stat.S_ISDIR(info.st_mode):
            self._set(entry, Stage.IGNORED)
            if entry.say_once("dir"):
                log.info(
                    "subfolders are not watched; move files to the inbox itself, or set "
                    "recursive: true for this folder",
                    folder=str(self.inbox),
                    file=name,
                )
            return True
        return False

    def _observe(self, name: str, now: float) -> Ready | None:
        existing = self._entries.get(name)
        if existing is not None and existing.stage in THE_DAEMONS:
            return None
        if self._outside(name):
            return None
        looked = self._look(name, now)
        primary = self._wanted_by.get(name)
        if primary is not None:
            # A companion came, changed or went: its file decides what happens.
            if looked is not None and looked[0].stage in OBSERVED:
                self._set(looked[0], Stage.COMPANION)
            self._pending.add(primary)
            return None
        if looked is None:
            return None
        entry, info = looked
        if self._a_folder(name, entry, info):
            return None
        if stat.S_ISREG(info.st_mode) and info.st_size == 0 and not self._is_folder_marker(name):
            # A placeholder; look again now and then, as a writer may fill it
            # without closing it (no event says so).
            self._set(entry, Stage.EMPTY)
            self._schedule(entry, now + max(self.settle, EMPTY_RECHECK_SECONDS))
            return None
        settled_at = entry.still_since + self.settle
        if now < settled_at:
            self._schedule(entry, settled_at)
            # Judged once per file: a settling file is looked at on every event.
            if (
                name not in self._offered
                and name not in self._prefetchable
                and self._worth_prefetching(name, info)
            ):
                self._prefetchable.add(name)
            return None
        self._prefetchable.discard(name)
        return self._decide(entry, info, now)

    def _ready(
        self,
        entry: Entry,
        rule: str,
        members: dict[str, str] | None = None,
        reject: Decision | None = None,
    ) -> Ready:
        """Queue a file (set aside unread with ``reject``); it is the daemon's from now on."""
        assert entry.sig is not None
        self._set(entry, Stage.READY)
        companions = tuple((r, n) for r, n in (members or {}).items() if r != "file")
        return Ready(entry.name, rule, entry.sig, entry, companions, reject, time.monotonic())

    def _spelled_here(self, name: str) -> str:
        """``name`` as this inbox spells it: a Mac writes é decomposed (NFD), Windows not."""
        if name in self._entries or os.path.lexists(os.path.join(self.key, name)):
            return name
        folder, base = layout.split_path(name)
        for form in ("NFC", "NFD"):
            other = layout.join_path(folder, unicodedata.normalize(form, base))
            if other != name and os.path.lexists(os.path.join(self.key, other)):
                return other
        return name

    def _reject(
        self,
        entry: Entry,
        *,
        rule: str,
        code: str,
        reason: str,
        members: dict[str, str] | None = None,
    ) -> Ready:
        return self._ready(entry, rule, members, Decision(Verdict.FAILED, code, reason))

    def _decide(self, entry: Entry, info: os.stat_result, now: float) -> Ready | None:
        if not stat.S_ISREG(info.st_mode):
            rule = could_be_companion(self._patterns, os.path.basename(entry.name))
            if rule is not None:
                # Named as a file's marker or sidecar: that file, judged in the same step
                # or soon after, sets both aside together and says why. Alone, it goes
                # when a companion without its file would.
                deadline = self._as_companion(entry, rule, now)
                if now < deadline:
                    self._schedule(entry, deadline)
                    return None
            kind = describe_mode(info.st_mode)
            code = Code.SYMLINK if stat.S_ISLNK(info.st_mode) else Code.NOT_A_REGULAR_FILE
            reason = f"is a {kind}, not a regular file; set aside unread"
            return self._reject(entry, rule="", code=code, reason=reason)
        folder, name = layout.split_path(entry.name)
        if self._is_folder_marker(entry.name):
            return self._folder_marker(entry, now)
        found = match(self.folder.rules, name, folder)
        if found is None:
            return self._unmatched(entry, info, now)
        if found.rule.folder_marker is not None and not self._batch_open(entry, found, now):
            return self._marker_missing(entry, found, now)
        try:
            # Companions are looked for beside the file, in its own folder.
            wanted = {role: layout.join_path(folder, n) for role, n in companions(found).items()}
        except FileRejected as err:
            return self._reject(entry, rule=found.rule.name, code=err.code, reason=err.message)
        if found.rule.manifest:
            return self._manifest(entry, info, found, now)
        if not wanted:
            return self._take(entry, info, found, {"file": entry.name}, now)
        return self._with_companions(entry, info, found, wanted, now)

    def _manifest(
        self, entry: Entry, info: os.stat_result, found: Match, now: float
    ) -> Ready | None:
        """A manifest is taken with every document its rows name, once each is there and still.

        A row naming a file that is not there, a path out of the folder, or a
        type FlowFlex refuses keeps the whole batch waiting, for the export
        to finish or be fixed, until ``manifest_timeout``; then the manifest
        and the documents that are there go to failed with each bad row named.
        """
        rule = found.rule
        if someone_writes(os.path.join(self.key, entry.name)):
            self._set(entry, Stage.INCOMPLETE)  # still being exported: read it once it is whole
            self._schedule(entry, now + max(self.settle, 1.0))
            return None
        try:
            rows, _ = read_manifest(rule, os.path.join(self.key, entry.name), found.name)
        except FileRejected as err:
            return self._reject(entry, rule=rule.name, code=err.code, reason=err.message)
        documents, bad, still_until = self._documents(entry, found, rows, now)
        if entry.complete_at is None:
            entry.complete_at = now
        deadline = entry.complete_at + rule.manifest_timeout
        members = {"file": entry.name, **{role: path for path, role in documents.items()}}
        if still_until > now:
            self._set(entry, Stage.WAITING)
            self._schedule(entry, still_until if not bad else min(still_until, deadline))
            return None
        if not bad:
            return self._take(entry, info, found, members, now)
        if now >= deadline:
            shown = "; ".join(bad[:MAX_ROWS_SHOWN])
            more = f"; and {len(bad) - MAX_ROWS_SHOWN} more" if len(bad) > MAX_ROWS_SHOWN else ""
            return self._reject(
                entry,
                rule=rule.name,
                code=Code.MANIFEST_ROWS_BAD,
                reason=f"{len(bad)} of {len(rows)} rows cannot be sent after "
                f"{rule.manifest_timeout:g} s (manifest_timeout), so none was: {shown}{more}",
                members=members,
            )
        self._wait(
            entry,
            deadline,
            "a manifest waits for the documents its rows name",
            rule=rule.name,
            rows=len(rows),
            not_ready=bad[:MAX_ROWS_SHOWN],
            timeout_s=rule.manifest_timeout,
        )
        return None

    def _batch_open(self, entry: Entry, found: Match, now: float) -> bool:
        """Join the batch of this file's folder marker; True once the marker is there."""
        assert found.rule.folder_marker is not None
        marker = layout.join_path(found.dir, found.rule.folder_marker)
        self._batches.setdefault(marker, set()).add(entry.name)
        self._batch_of[entry.name] = marker
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self.key, marker)).st_mode)
        except OSError:
            return False

    def _marker_missing(self, entry: Entry, found: Match, now: float) -> Ready | None:
        """A file waits for its folder's marker, until ``marker_timeout``."""
        rule = found.rule
        if entry.complete_at is None:
            entry.complete_at = now
        deadline = entry.complete_at + rule.marker_timeout
        marker = layout.join_path(found.dir, rule.folder_marker or "")
        if now >= deadline:
            return self._reject(
                entry,
                rule=rule.name,
                code=Code.MARKER_MISSING,
                reason=f"the folder marker {marker} did not arrive within "
                f"{rule.marker_timeout:g} s (or is not a regular file)",
            )
        self._wait(
            entry,
            deadline,
            "waiting for the folder marker",
            rule=rule.name,
            marker=marker,
            timeout_s=rule.marker_timeout,
        )
        return None

    def _folder_marker(self, entry: Entry, now: float) -> Ready | None:
        """A settled folder marker: its files go now; it goes to done once they are all gone."""
        batch = self._batches.get(entry.name)
        if batch:
            self._pending.update(
                n for n in batch if n in self._entries and self._entries[n].stage not in THE_DAEMONS
            )
            self._set(entry, Stage.COMPANION)
            return None
        base = os.path.basename(entry.name)
        rule = next(r for r in self.folder.rules if r.folder_marker == base)
        return self._ready(
            entry,
            rule.name,
            reject=Decision(
                Verdict.DONE,
                Code.FOLDER_MARKER,
                "a folder marker: its batch is finished, so it moves to done (no event)",
            ),
        )

    def _with_companions(
        self, entry: Entry, info: os.stat_result, found: Match, wanted: dict[str, str], now: float
    ) -> Ready | None:
        present: dict[str, str] = {}
        missing: list[str] = []
        still_until = 0.0
        for role, rendered in wanted.items():
            cname = self._spelled_here(rendered)
            wanted[role] = cname
            self._wanted_by[cname] = entry.name
            self._wants.setdefault(entry.name, set()).add(cname)
            looked = self._look(cname, now)
            if looked is None or (
                # An empty sidecar or attachment is not there yet; a marker may be empty.
                role != "marker" and stat.S_ISREG(looked[1].st_mode) and looked[1].st_size == 0
            ):
                missing.append(role)
                continue
            companion, seen = looked
            if role == "marker" and not stat.S_ISREG(seen.st_mode):
                kind = describe_mode(seen.st_mode)
                return self._reject(
                    entry,
                    rule=found.rule.name,
                    code=Code.SYMLINK if stat.S_ISLNK(seen.st_mode) else Code.NOT_A_REGULAR_FILE,
                    reason=f"its marker {cname} is a {kind}, not a regular file; both are set "
                    "aside unread",
                    members={"file": entry.name, "marker": cname},
                )
            if companion.stage in OBSERVED:
                self._set(companion, Stage.COMPANION)
            present[role] = cname
            still_until = max(still_until, companion.still_since + self.settle)
        if entry.complete_at is None:
            entry.complete_at = now
        rule = found.rule
        waits = rule.marker_timeout if "marker" in missing else rule.sidecar_timeout
        deadline = entry.complete_at + waits
        if still_until > now:
            self._set(entry, Stage.WAITING)
            self._schedule(entry, still_until if not missing else min(still_until, deadline))
            return None
        members = {"file": entry.name, **present}
        if not missing:
            return self._take(entry, info, found, members, now)
        required = [r for r in missing if r != "sidecar" or found.rule.sidecar_required]
        if now >= deadline:
            if required:
                names = ", ".join(wanted[r] for r in required)
                return self._reject(
                    entry,
                    rule=rule.name,
                    code=_missing_code(required),
                    reason=f"{names} did not arrive within {waits:g} s",
                    members=members,
                )
            return self._take(entry, info, found, members, now)
        self._wait(
            entry,
            deadline,
            "waiting for companion files",
            rule=found.rule.name,
            missing=[wanted[r] for r in missing],
            timeout_s=waits,
        )
        return None

    def _wait(self, entry: Entry, deadline: float, message: str, **fields: Any) -> None:
        """A file waits for something until ``deadline``: said once, looked at again then."""
        self._set(entry, Stage.WAITING)
        if entry.say_once(message):
            log.info(message, folder=str(self.inbox), file=entry.name, **fields)
        self._schedule(entry, deadline)

    def _documents(
        self, entry: Entry, found: Match, rows: list[tuple[int, dict[str, Any]]], now: float
    ) -> tuple[dict[str, str], list[str], float]:
        """A manifest's documents (path -> role), its bad rows, and when all are settled."""
        folder = layout.split_path(entry.name)[0]
        documents: dict[str, str] = {}  # path below the inbox -> role
        bad: list[str] = []
        still_until = 0.0
        for number, row in rows:
            try:
                name = document_name(found, number, row)
            except FileRejected as err:
                bad.append(f"row {number}: {err.message}")
                continue
            if mime_for_name(asset_name(name)) is None:
                bad.append(f"row {number}: {name} is a type FlowFlex does not take")
                continue
            path = self._spelled_here(layout.join_path(folder, name))
            if path in documents:
                continue
            self._wanted_by[path] = entry.name
            self._wants.setdefault(entry.name, set()).add(path)
            looked = self._look(path, now)
            if looked is None or (stat.S_ISREG(looked[1].st_mode) and looked[1].st_size == 0):
                bad.append(f"row {number}: {name} is not in the folder")
                continue
            if not stat.S_ISREG(looked[1].st_mode):
                kind = describe_mode(looked[1].st_mode)
                bad.append(f"row {number}: {name} is a {kind}, not a regular file; never read")
                continue
            document, _ = looked
            if document.stage in OBSERVED:
                self._set(document, Stage.COMPANION)
            documents[path] = f"doc.{len(documents) + 1}"
            still_until = max(still_until, document.still_since + self.settle)
        return documents, bad, still_until

    def _take(
        self,
        entry: Entry,
        info: os.stat_result,
        found: Match,
        members: dict[str, str],
        now: float,
    ) -> Ready | None:
        """Queue the settled file and its companions once each of them is whole.

        Until then the file waits, looked at again every settle period (a
        writer that closes the file also sends an event). An unwritten end or
        a missing trailer fails the file after ``incomplete_timeout``; a file
        still open for writing never does: taking it would move it from under
        its writer.
        """
        rule = found.rule
        problem: tuple[str, str] | None = None
        for name in members.values():
            seen = examine(os.path.join(self.key, name), verify_format=rule.verify_format)
            if seen is None:
                continue  # gone or unreadable: the claim says what happened
            if seen.writer.writers is Writers.UNKNOWN and not self.said_no_lease:
                self.said_no_lease = True
                log.warning(
                    f"{NO_LEASE}; files are taken once settled alone",
                    folder=str(self.inbox),
                    file=name,
                    reason=seen.writer.why,
                    fix=NO_LEASE_FIX,
                )
            problem = seen.problem()
            if problem is not None and problem[0] != "writer" and _refused_anyway(seen.info):
                problem = None  # fails at the claim without a byte read: no need to wait
            if problem is not None:
                break
        if problem is None:
            entry.incomplete_since = None
            return self._ready(entry, rule.name, members)
        check, reason = problem
        self._set(entry, Stage.INCOMPLETE)
        if entry.incomplete_since is None:
            entry.incomplete_since = now
            log.info(
                "settled but not whole yet; waiting",
                folder=str(self.inbox),
                file=entry.name,
                rule=rule.name,
                check=check,
                reason=reason,
            )
        waited = now - entry.incomplete_since
        if waited >= rule.incomplete_timeout:
            if check != "writer":
                return self._reject(
                    entry,
                    rule=rule.name,
                    code=Code.INCOMPLETE_FILE,
                    reason=f"{reason}; still so after {waited:.0f} s (incomplete_timeout), "
                    "so it was never sent",
                    members=members,
                )
            if entry.say_once("writer-timeout"):
                log.warning(
                    "a file is still open for writing by another process; it waits until the "
                    "writer closes it",
                    folder=str(self.inbox),
                    file=entry.name,
                    waited_s=round(waited),
                )
        recheck = max(self.settle, 1.0)
        if check != "writer":
            recheck = min(recheck, entry.incomplete_since + rule.incomplete_timeout - now)
        self._schedule(entry, now + max(recheck, 0.05))
        return None

    def _as_companion(self, entry: Entry, rule: Rule, now: float) -> float:
        """Held as some file's companion from now on; when that file is given up on."""
        self._set(entry, Stage.COMPANION)
        if entry.complete_at is None:
            entry.complete_at = now
        return entry.complete_at + rule.sidecar_timeout

    def _unmatched(self, entry: Entry, info: os.stat_result, now: float) -> Ready | None:
        rule = could_be_companion(self._patterns, os.path.basename(entry.name))
        if rule is not None:
            deadline = self._as_companion(entry, rule, now)
            if self.folder.unmatched != "fail":
                return None
            if now < deadline:
                self._schedule(entry, deadline)
                return None
            return self._reject(
                entry,
                rule=rule.name,
                code=Code.NO_FILE_FOR_COMPANION,
                reason=f"looks like a sidecar or attachment of rule {rule.name!r}, but no file "
                f"for it arrived within {rule.sidecar_timeout:g} s",
            )
        if self.folder.unmatched == "fail":
            tried = ", ".join(r.pattern or r.regex or r.name for r in self.folder.rules)
            reason = f"no rule takes this name (tried: {tried})"
            return self._reject(entry, rule="", code=Code.UNMATCHED, reason=reason)
        self._set(entry, Stage.IGNORED)
        if entry.say_once("unmatched") and not self._manifests:
            log.info("no rule takes this file; it stays", folder=str(self.inbox), file=entry.name)
        return None


def _folder_markers(folder: Folder) -> frozenset[str]:
    return frozenset(r.folder_marker for r in folder.rules if r.folder_marker)


def _refused_anyway(info: os.stat_result) -> bool:
    """Over FlowFlex's cap, or hard-linked: the claim refuses it whatever its content."""
    return info.st_size > MAX_FILE_BYTES or info.st_nlink > 1


def _missing_code(roles: list[str]) -> Code:
    """The code for companions that never came: the marker says most, then the sidecar."""
    if "marker" in roles:
        return Code.MARKER_MISSING
    return Code.SIDECAR_MISSING if "sidecar" in roles else Code.ATTACHMENT_MISSING
