"""Claims: taking a file and its companions out of an inbox, and moving them on.

A claimed file lives in its claim folder (layout.py) beside its
``claim.jsonl``: one JSON line per step (idempotency key and rule, then the
uploads, then a failure's reason), each appended and fsynced, the last whole
line being the claim's state. Every move is a rename or a hard link within
the inbox's filesystem, never a copy, and never replaces a name; what the
next step needs is fsynced, file and directory, before that step runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from flowflexd.config.model import DEFAULT_DESTINATION, Folder
from flowflexd.engine.outcomes import Decision
from flowflexd.errors import AlreadyRunningError, FileRejected, UserError
from flowflexd.inbox import layout
from flowflexd.inbox.completeness import Writers, someone_writes, writer_state
from flowflexd.inbox.layout import CLAIM_FILE, name_tags, report_name, suffixed
from flowflexd.inbox.reading import open_regular, read_regular, signature
from flowflexd.rules.matching import is_temporary_name
from flowflexd.support import crashpoints
from flowflexd.support.durable import (
    TMP_PREFIX,
    fsync_dir,
    link_no_replace,
    make_folders,
    move_no_replace,
    same_file,
    write_all,
    write_durable,
)

SIDECAR_MAX_BYTES = 1024 * 1024
# A claim file is our own, but read as untrusted: a manifest of 10,000 rows
# keeps each row's answer, so its state may reach megabytes.
CLAIM_MAX_BYTES = 64 * 1024 * 1024
COMPACT_AT = 1024 * 1024  # a claim file past this is rewritten as its state alone
# A finished claim's folder, its claim file emptied, is kept in the work area
# under this prefix and renamed into place by the next claim: a new folder
# and a new file cost ext4 an inode each, most of a claim's system time.
SPARE_PREFIX = ".spare-"
SPARES_KEPT = 64  # per inbox; more finished folders than this are removed
DELTA_PARTS = ("rows", "uploads", "seen")  # what a delta line may change


class FolderUnavailable(UserError):
    """An inbox (or its done, failed or work folder) cannot be used right now."""

    exit_code = 2


class FolderMisplaced(FolderUnavailable):
    """done or failed is on another filesystem than its inbox: a configuration error."""


GONE_REASON = "the folder is not there (unmounted or removed)"
GONE_HINT = "mount it or create it again; it is taken up by itself within seconds"


def not_ours(path: Path, info: os.stat_result, home: Path) -> FolderUnavailable | None:
    """Why flowflexd's own folder in an inbox (``home`` or its work area) is not usable.

    It must be a folder of this user's. One another user owns is most often
    an earlier run of flowflexd as that user (root, before the service user
    existed): its claims are in it, so the fix is to hand it over, not to
    move it aside.
    """
    if not stat.S_ISDIR(info.st_mode):
        return FolderUnavailable(
            f"{path} is not a folder: someone else's file is where flowflexd keeps its work",
            hint="move it aside; flowflexd recreates it",
        )
    if info.st_uid == os.geteuid():
        return None
    me, owner = user_name(os.geteuid()), user_name(info.st_uid)
    hand_over = f"chown -R {me} {home} (the claims in it are then resumed, none sent twice)"
    if os.geteuid() == 0:  # most likely a try by hand beside the service: do not take its work
        hint = (
            f"this inbox is {owner}'s flowflexd's (the service?): run flowflexd as {owner}; "
            f"to move its work to root instead: {hand_over}"
        )
    else:
        hint = (
            f"if flowflexd ran here as {owner} before, hand its work over: {hand_over}; "
            "otherwise move it aside, and flowflexd recreates it"
        )
    message = f"{path} belongs to {owner}, not to flowflexd's user ({me})"
    return FolderUnavailable(message, hint=hint)


def user_name(uid: int) -> str:
    """A uid's account name, or ``uid N`` for one without an account."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def unusable(inbox: Path, err: OSError) -> FolderUnavailable:
    """An inbox that failed while being taken up: the folder, the error, the fix."""
    where = f" ({os.fsdecode(err.filename)})" if err.filename else ""
    if isinstance(err, PermissionError) and err.filename and Path(err.filename) == inbox:
        return FolderUnavailable(
            f"flowflexd's user may not reach {inbox}: {err.strerror}",
            hint="give flowflexd's user access to the inbox and to each folder above it "
            "(x, search, on each); `flowflexd check --as-user USER` shows what that user may do",
        )
    if isinstance(err, PermissionError):
        return FolderUnavailable(
            f"flowflexd's user may not write in {inbox}: {err.strerror}{where}",
            hint="give flowflexd's user write access to the inbox (the group that owns it, "
            "with group write); `flowflexd check --as-user USER` shows what that user may do",
        )
    return FolderUnavailable(
        f"cannot take up {inbox}: {err.strerror or err}{where}",
        hint="it changed or went while flowflexd was taking it up (a share remounting?); "
        "it is looked at again every few seconds",
    )


# --------------------------------------------------------------------- claims


@dataclass
class Claim:
    """One claimed file, its companions, and how far its journey got."""

    id: str
    inbox: str
    members: dict[str, str]  # role ("file", "sidecar", "attach.NAME") -> file name
    key: str  # the idempotency key, minted at claim time
    rule: str
    claimed_at: float
    reject: dict[str, Any] | None = None  # the failure decided: code, reason, HTTP status
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> assetId, time
    event: str | None = None  # the rendered event name, once known
    answer: Any = None  # the API's answer, once the event was accepted
    sent_at: float | None = None
    attempts: int = 0
    # role -> [size, mtime_ns, ctime_ns] when it was read for this event: what
    # FlowFlex gets. Checked again before the event fires and before the move.
    seen: dict[str, list[int]] = field(default_factory=dict)
    changes: int = 0  # times a member changed under us before the event fired
    below: str = ""  # the folder below the inbox it came from ("alice/2026"), "" at the top
    # A manifest's rows by number ("1", "2" ...): each one's event, once sent or refused.
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    destination: str = DEFAULT_DESTINATION  # the FlowFlex integration it goes to, fixed at claim
    dir: Path = field(init=False, repr=False, compare=False)
    state_file: Path = field(init=False, repr=False, compare=False)  # its claim.jsonl
    # Each member's path, made once: a pathlib join costs microseconds, and a
    # file's journey asks for its paths a dozen times.
    _paths: dict[str, Path] = field(default_factory=dict, init=False, repr=False, compare=False)
    # Its outcome is in the journal (this run): a move retried records nothing again.
    recorded: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.dir = layout.claim_dir(self.inbox, self.id)
        self.state_file = self.dir / CLAIM_FILE

    @property
    def name(self) -> str:
        return self.members["file"]

    def source(self, role: str) -> str:
        """Where a member was in the inbox, as a path below it."""
        return layout.join_path(self.below, self.members[role])

    def path(self, role: str) -> Path:
        found = self._paths.get(role)
        if found is None:
            found = self._paths[role] = self.dir / self.members[role]
        return found

    def present(self) -> dict[str, str]:
        """The members that really are in the claim folder.

        Raises FileNotFoundError when the claim folder itself is not there (its
        inbox is away: renamed, unmounted). An answer without those members
        would read as files removed, or moved by a crash part-way, and be acted on.
        """
        found = {
            role: name for role, name in self.members.items() if os.path.lexists(self.path(role))
        }
        if len(found) < len(self.members) and not self.dir.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the claim's folder is not there", str(self.dir))
        return found

    def to_json(self) -> bytes:
        state = {name: getattr(self, name) for name in _CLAIM_FIELDS}
        return json.dumps(state, ensure_ascii=False).encode("utf-8", "surrogateescape")

    @classmethod
    def from_lines(cls, data: bytes) -> Claim:
        """The state in the last whole state line, with the delta lines after it applied.

        A line a crash cut, or one that does not read, is passed over.
        """
        lines = data.splitlines()
        for at in range(len(lines) - 1, -1, -1):
            try:
                claim = cls.from_json(lines[at])
            except ValueError:
                continue
            for line in lines[at + 1 :]:
                with contextlib.suppress(ValueError):
                    claim.apply(line)
            return claim
        raise ValueError("no claim in the claim file")

    def delta(self, **parts: dict[str, Any]) -> bytes:
        """A line recording entries of ``rows``, ``uploads`` or ``seen`` set since the last save."""
        return json.dumps({"delta": parts}, ensure_ascii=False).encode("utf-8", "surrogateescape")

    def apply(self, line: bytes) -> None:
        """Apply a delta line (ValueError when it is not one, or not well-typed)."""
        raw = json.loads(line.decode("utf-8", "surrogateescape"))
        parts = raw.get("delta") if isinstance(raw, dict) else None
        if not isinstance(parts, dict) or not set(parts) <= set(DELTA_PARTS):
            raise ValueError("not a delta line")
        kinds = {"rows": dict, "uploads": dict, "seen": list}
        for part, entries in parts.items():
            if not isinstance(entries, dict) or not all(
                isinstance(k, str) and isinstance(v, kinds[part]) for k, v in entries.items()
            ):
                raise ValueError(f"a delta line's {part} is not well-typed")
        for part, entries in parts.items():
            getattr(self, part).update(entries)

    @classmethod
    def from_json(cls, data: bytes) -> Claim:
        """A claim line, checked field by field: a start must never trust what a disk kept."""
        raw = json.loads(data.decode("utf-8", "surrogateescape"))
        if not isinstance(raw, dict):
            raise ValueError("a claim line is not a JSON object")
        for name, (kind, required) in _CLAIM_TYPES.items():
            if name not in raw:
                if required:
                    raise ValueError(f"the claim has no {name}")
            elif not isinstance(raw[name], kind) or isinstance(raw[name], bool) is not (
                kind is bool
            ):
                raise ValueError(f"the claim's {name} is {type(raw[name]).__name__}")
        below = raw.get("below", "")
        if below and not all(_plain_name(part) for part in below.split("/")):
            raise ValueError("the claim's folder is not a path below its inbox")
        members = raw["members"]
        if "file" not in members or not all(
            isinstance(k, str) and isinstance(v, str) and _plain_name(v) for k, v in members.items()
        ):
            raise ValueError("the claim's members are not plain file names")
        return cls(**{k: v for k, v in raw.items() if k in _CLAIM_FIELDS})


def _plain_name(name: str) -> bool:
    """A name inside one folder: not empty, no separator, not . or .."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


_CLAIM_FIELDS = tuple(f.name for f in fields(Claim) if f.init)
_NUMBER = (int, float)
_MAYBE = type(None)
# field -> (its JSON type, whether a claim must have it)
_CLAIM_TYPES: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "id": (str, True),
    "inbox": (str, True),
    "members": (dict, True),
    "key": (str, True),
    "rule": (str, True),
    "claimed_at": (_NUMBER, True),
    "reject": ((dict, _MAYBE), False),
    "uploads": (dict, False),
    "event": ((str, _MAYBE), False),
    "sent_at": ((*_NUMBER, _MAYBE), False),
    "attempts": (int, False),
    "seen": (dict, False),
    "changes": (int, False),
    "below": (str, False),
    "rows": (dict, False),
    "destination": (str, False),
}


@dataclass(frozen=True)
class Unreadable:
    """A claim folder whose claim file cannot be read: its files wait to be set aside."""

    id: str
    dir: Path
    reason: str

    def files(self) -> list[str]:
        """The regular files in it, but the claim file: what was claimed."""
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return []
        return sorted(
            e.name
            for e in entries
            if e.name != CLAIM_FILE
            and not e.name.startswith(TMP_PREFIX)
            and e.is_file(follow_symlinks=False)
        )


@dataclass(frozen=True)
class Placed:
    """A claim's files linked into done or failed; their names in the claim folder remain.

    Those go (``Spool.release``) once the new names are durable: until then
    the claim folder still says the file is unfinished.
    """

    claim: Claim
    target: Path  # the folder the files were linked into
    moved: dict[str, str]  # role -> final path
    linked: tuple[Path, ...]  # the claim folder's names to unlink then


def _drop_old_names(placed: Placed) -> None:
    """Unlink a placed claim's names in its claim folder (one already gone counts as gone)."""
    for path in placed.linked:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Carried:
    """The claims one daemon carries, so no inbox coming back hands one out twice."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, claim_id: str) -> None:
        with self._lock:
            self._ids.add(claim_id)

    def discard(self, claim_id: str) -> None:
        with self._lock:
            self._ids.discard(claim_id)

    def __contains__(self, claim_id: object) -> bool:
        with self._lock:
            return claim_id in self._ids


class Spool:
    """Claims, moves and reads the files of one inbox."""

    def __init__(self, folder: Folder, carried: Carried | None = None) -> None:
        self.folder = folder
        self.carried = carried if carried is not None else Carried()
        self.inbox = folder.path
        self.home = layout.home(folder.path)
        self.work = layout.work(folder.path)
        self._lock_fd: int | None = None
        self._adopted = False
        self._home_checked = 0.0
        self._spares: list[str] = []  # names in the work area of emptied claim folders
        # Where calls into this inbox's folders are made: at once by the caller, or, for
        # an inbox on a share, handed to its own thread (own_thread.py) to be made there.
        self.run_there: Callable[[Callable[[], Any]], None] = _call_now

    # ---------------------------------------------------------- preparation

    def check_placement(self) -> None:
        """Refuse done or failed on another filesystem than the inbox (where both exist)."""
        try:
            inbox_dev = os.stat(self.inbox).st_dev
        except OSError:
            return
        for label, path in (("done", self.folder.done), ("failed", self.folder.failed)):
            probe = path
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            self._refuse_elsewhere(label, path, os.stat(probe).st_dev, inbox_dev)

    def prepare(self, *, create_inbox: bool = True) -> None:
        """Create the folders, check they share the inbox's filesystem, take the lock.

        ``create_inbox`` is for a start: an inbox taken up again (back, or
        reconfigured) that is missing is away, an unmounted share most often,
        and a folder made at its path would be an empty one on the wrong
        filesystem, taken for it.
        """
        if not create_inbox:
            try:
                os.stat(self.inbox)
            except FileNotFoundError as err:
                raise FolderUnavailable(GONE_REASON, hint=GONE_HINT) from err
            except OSError as err:
                raise unusable(self.inbox, err) from err
        for path in (self.inbox, self.folder.done, self.folder.failed):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise FolderUnavailable(
                    f"cannot create {path}: {err.strerror}",
                    hint="create it, or give flowflexd's user write access to its parent",
                ) from err
        try:
            self._make_home()
            inbox_dev = os.stat(self.inbox).st_dev
            places = (
                ("done", self.folder.done),
                ("failed", self.folder.failed),
                ("work", self.work),
            )
            for label, path in places:
                self._refuse_elsewhere(label, path, os.stat(path).st_dev, inbox_dev)
            self._lock()
        except OSError as err:
            raise unusable(self.inbox, err) from err

    def _refuse_elsewhere(self, label: str, path: Path, device: int, inbox_device: int) -> None:
        if device != inbox_device:
            raise FolderMisplaced(
                f"the {label} folder {path} is on another filesystem than its inbox "
                f"{self.inbox}; files move by atomic rename, which cannot cross filesystems",
                hint=f"put {label} on the inbox's filesystem, e.g. {self.inbox / label}",
            )

    def _home_is_ours(self) -> None:
        """``_make_home``, at most once a second: every claim relies on it."""
        now = time.monotonic()
        if now - self._home_checked > 1.0:
            self._make_home()
            self._home_checked = now

    def _make_home(self) -> None:
        for path in (self.home, self.work):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            problem = not_ours(path, os.lstat(path), self.home)
            if problem is not None:
                raise problem

    def _lock(self) -> None:
        if self._lock_fd is not None and self._adopted:
            self._adopted = False  # taken by the standby's wait: ours already
            return
        self.unlock()  # a folder that came back: drop the lock taken on its old self
        fd = try_lock(self.inbox)
        if isinstance(fd, str):
            raise AlreadyRunningError(
                f"{self.inbox} is already watched by another flowflexd (pid {fd})",
                hint="stop the other one first, or start this one with --standby to take over "
                "when it stops; two daemons on one inbox are refused",
            )
        self._lock_fd = fd

    def adopt_lock(self, fd: int) -> None:
        """A lock taken before the inbox was prepared (by a standby): the next prepare keeps it."""
        self.unlock()
        self._lock_fd = fd
        self._adopted = True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            # A share forced off (umount -f, a FUSE connection aborted) fails the close
            # (ENOTCONN, EIO); the descriptor, and the lock with it, is gone all the same.
            with contextlib.suppress(OSError):
                os.close(fd)

    # --------------------------------------------------------------- claims

    def claim(
        self,
        members: dict[str, str],
        *,
        rule: str,
        expect: tuple[int, int, int, int] | None = None,
        reject: Decision | None = None,
        destination: str = DEFAULT_DESTINATION,
        probed: bool = False,
    ) -> Claim | None:
        """Take a file and its companions out of the inbox, by rename.

        The claim (with its new idempotency key) is durable before the first
        rename. Returns None when the file is gone or changed since it was
        judged complete: someone else took it, or it is being written again
        (another process has it open for writing; not asked again when ``probed``
        says the tracker just found no writer: the check before the event
        still catches one that came since).
        """
        self._home_is_ours()
        below = layout.split_path(members["file"])[0]
        source = self.inbox / members["file"]
        if expect is not None:
            try:
                now = os.lstat(source)
            except FileNotFoundError:
                return None
            if signature(now) != expect:
                return None
            if reject is None and not probed and someone_writes(source):
                return None
        random = os.urandom(32)  # one system call for both: the claim's id and its key
        claim = Claim(
            id=uuid.UUID(bytes=random[:16], version=4).hex,
            inbox=str(self.inbox),
            members={role: layout.split_path(path)[1] for role, path in members.items()},
            key=str(uuid.UUID(bytes=random[16:], version=4)),
            rule=rule,
            claimed_at=time.time(),
            reject=None if reject is None else reject.as_record(),
            below=below,
            destination=destination,
        )
        self.carried.add(claim.id)
        try:
            fd = self._new_claim_file(claim)
        except OSError:
            self.carried.discard(claim.id)
            raise
        try:
            write_all(fd, claim.to_json() + b"\n")
            try:
                os.rename(source, claim.path("file"))
            except OSError as err:
                # Gone, or not ours to move (a read-only inbox): leave no empty claim behind.
                os.close(fd)
                fd = -1
                self._discard(claim)
                if isinstance(err, FileNotFoundError):
                    return None
                raise
            self._take_companions(claim)
            # One sync point before anything leaves the machine: the claim with
            # its key, and the renames (a crash before it gives the files back).
            os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        fsync_dir(claim.dir)
        fsync_dir(self.work)
        fsync_dir(source.parent)
        crashpoints.reached("after_claim")
        return claim

    def _new_claim_file(self, claim: Claim) -> int:
        """The claim's folder, new, with its empty claim file open for appending.

        A spare folder is renamed into place when there is one, else one is made.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                spare = self._spares.pop()
            except IndexError:
                break
            try:
                os.rename(self.work / spare, claim.dir)
            except FileNotFoundError:
                continue  # removed meanwhile; if the inbox is away, mkdir says so below
            crashpoints.reached(crashpoints.SPARE_TAKEN)
            # Emptied when it was kept; O_TRUNC all the same, so that no claim can
            # ever start after another one's lines (a spare is only ours to write).
            return os.open(claim.state_file, flags | os.O_TRUNC, 0o600)
        os.mkdir(claim.dir, 0o700)
        return os.open(claim.state_file, flags | os.O_EXCL, 0o600)

    def _keep_spare(self, claim: Claim) -> bool:
        """Keep a finished claim's folder, only its claim file left in it, as a spare."""
        if len(self._spares) >= SPARES_KEPT:
            return False
        try:
            if os.listdir(claim.dir) != [CLAIM_FILE]:
                return False  # a compaction a crash cut short, or anything else: removed
            os.truncate(claim.state_file, 0)
            spare = SPARE_PREFIX + claim.id
            os.rename(claim.dir, self.work / spare)
        except OSError:
            return False
        self._spares.append(spare)
        return True

    def _take_companions(self, claim: Claim) -> None:
        for role in claim.members:
            if role == "file" or os.path.lexists(claim.path(role)):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.inbox / claim.source(role), claim.path(role))

    def _discard(self, claim: Claim) -> None:
        """Remove a claim that took nothing: only our own claim file is in it."""
        self.carried.discard(claim.id)
        _remove_empty(claim.dir)

    def save(self, claim: Claim) -> None:
        """Append the claim's state as a line and fsync it (its name is durable already)."""
        self._append(claim, claim.to_json())

    def save_delta(self, claim: Claim, **parts: dict[str, Any]) -> None:
        """Append only what changed (a manifest's row, one upload) and fsync it.

        A manifest of N rows saved whole after each row would write O(N^2) bytes.
        """
        self._append(claim, claim.delta(**parts))

    def _append(self, claim: Claim, line: bytes) -> None:
        fd = os.open(claim.state_file, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            write_all(fd, line + b"\n")
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > COMPACT_AT:
            self._compact(claim)

    def _compact(self, claim: Claim) -> None:
        """Rewrite a long claim file as the claim's state alone: new file, fsync, rename over."""
        state = claim.to_json() + b"\n"
        if len(state) * 2 > os.lstat(claim.state_file).st_size:
            return  # mostly state already: rewriting would gain little
        write_durable(claim.state_file, state)

    def pending(self) -> Iterator[Claim | Unreadable]:
        """Claims left by an earlier run (a crash, a kill, a power cut), oldest first.

        Claims this process carries are not among them. A claim whose file
        never left the inbox is undone: companions it took go back to the
        inbox. A claim whose claim file cannot be read (missing, torn,
        zero-filled, mistyped, not a file) comes as ``Unreadable``: its key
        is lost, so its files must not be sent again under a new one unseen.
        The inbox gone before or while it is listed raises FileNotFoundError:
        its claims are away with it, not missing and not unreadable.
        """
        self._make_home()
        with os.scandir(self.work) as listing:
            aged = [(age, entry) for entry in listing if (age := _age(entry)) is not None]
        aged.sort(key=lambda pair: pair[0])
        self._spares.clear()  # found again below: the folder may be another one now
        for _, entry in aged:
            if not entry.is_dir(follow_symlinks=False) or entry.name in self.carried:
                continue
            claim_dir = Path(entry.path)
            if entry.name.startswith(SPARE_PREFIX) and _holds_nothing(claim_dir):
                if len(self._spares) < SPARES_KEPT:
                    self._spares.append(entry.name)
                else:
                    _remove_empty(claim_dir)
                continue
            try:
                claim = _read_claim(claim_dir)
                if claim.id != entry.name:
                    raise ValueError("the claim file belongs to another claim")
            except (ValueError, FileRejected, OSError) as err:
                lost = self._unreadable(claim_dir, err)
                if lost is not None:
                    yield lost
                continue
            decided = claim.answer is not None or claim.reject is not None
            if (
                not decided
                and not os.path.lexists(claim.path("file"))
                and os.path.lexists(self.inbox / claim.source("file"))
            ):
                # Killed between writing the claim and taking the file.
                self._return_orphans(claim_dir, self.inbox / claim.below)
                continue
            self._take_companions(claim)
            self.carried.add(claim.id)
            yield claim

    def _unreadable(self, claim_dir: Path, err: Exception) -> Unreadable | None:
        """A claim folder whose claim file cannot be read; None: nothing left to set aside."""
        if _holds_nothing(claim_dir):
            # Killed making a claim, before its record was written: there is
            # nothing to send and no key to keep.
            _remove_empty(claim_dir)
            return None
        if not isinstance(err, FileNotFoundError):
            reason = err.message if isinstance(err, FileRejected) else str(err)
            return Unreadable(claim_dir.name, claim_dir, f"its claim file {reason}")
        if os.path.lexists(claim_dir):
            return Unreadable(claim_dir.name, claim_dir, "its claim file is missing")
        if not os.path.isdir(self.work):
            raise err  # the inbox went while it was listed: its claims are away, not lost
        return None  # removed meanwhile: nothing is left to set aside

    def set_aside(
        self, lost: Unreadable, *, primary: str, report: dict[str, Any] | None
    ) -> dict[str, str]:
        """Move an unreadable claim's files on (to failed with ``report``, else to done).

        What is left of the claim folder (its claim file, anything not a
        regular file) moves to ``.flowflexd/aside/``, kept for a person.
        """
        names = lost.files()
        others = [n for n in names if n != primary]
        members = {"file": primary, **{f"found.{i}": n for i, n in enumerate(others, 1)}}
        stand_in = Claim(lost.id, str(self.inbox), members, "", "", time.time())
        moved = {}
        if names:
            placed = self.place(stand_in, report)
            fsync_dir(placed.target)
            _drop_old_names(placed)
            moved = placed.moved
        aside = layout.aside(self.inbox, lost.id)
        aside.parent.mkdir(mode=0o700, exist_ok=True)
        if os.path.lexists(lost.dir):
            move_no_replace(lost.dir, aside)
        fsync_dir(self.work)
        return moved

    def _return_orphans(self, claim_dir: Path, home: Path) -> None:
        """Give back to ``home`` (the folder they came from) what a claim never took."""
        for entry in list(os.scandir(claim_dir)):
            if entry.name == CLAIM_FILE:
                os.unlink(entry.path)
                continue
            for tag in name_tags(uuid.uuid4().hex):
                try:
                    move_no_replace(Path(entry.path), home / suffixed(entry.name, tag))
                    break
                except FileExistsError:
                    continue
        with contextlib.suppress(OSError):
            os.rmdir(claim_dir)
        fsync_dir(home)

    # ----------------------------------------------------------------- reads

    def open_member(self, claim: Claim, role: str, *, max_bytes: int) -> tuple[int, os.stat_result]:
        return open_regular(claim.path(role), max_bytes=max_bytes)

    def member_now(self, claim: Claim, role: str) -> tuple[os.stat_result, Writers] | None:
        """A member's fstat now and whether anyone writes it; None when it is gone."""
        return writer_state(claim.path(role))

    # ---------------------------------------------------------------- moves

    def finish(self, claim: Claim, *, report: dict[str, Any] | None = None) -> dict[str, str]:
        """Move a claim's files to done (or to failed, with ``report`` beside the file).

        Names are never replaced: when one is taken, every member gets the
        same suffix, the claim's short id (``INV-1 (3f2a9c1b).pdf``), so the
        file and its sidecar stay a pair and the journal finds them. Safe to
        call again after a crash part-way. Returns role -> final path.
        """
        placed = self.place(claim, report)
        fsync_dir(placed.target)  # the new names are durable before the old ones go
        self.release(placed)
        return placed.moved

    def destination(self, claim: Claim, *, failed: bool) -> Path:
        """The folder a claim's files move to: done or failed, and the folders below it.

        Raises FileRejected when the folder's template cannot place this file
        (a {dir[N]} it is not deep enough for, or a path leaving the folder).
        """
        root = self.folder.failed if failed else self.folder.done
        below = self.folder.failed_below if failed else self.folder.done_below
        return layout.placed(
            root, below, claim.name, folder=claim.below, claimed_at=claim.claimed_at
        )

    def _target(self, claim: Claim, *, failed: bool) -> Path:
        """The destination made on disk; a failure that cannot be placed goes to failed's root."""
        root = self.folder.failed if failed else self.folder.done
        try:
            below = os.path.relpath(self.destination(claim, failed=failed), root)
        except FileRejected:
            if not failed:
                raise
            below = "."
        if below == ".":
            return root
        target = make_folders(root, below)
        if os.stat(target).st_dev != os.stat(self.inbox).st_dev:
            raise OSError(errno.EXDEV, f"{target} is on another filesystem than {self.inbox}")
        return target

    def place(self, claim: Claim, report: dict[str, Any] | None = None) -> Placed:
        """Link a claim's files into done (or into failed, beside ``report``), nothing fsynced.

        The names in the claim folder stay: ``release`` them after an fsync of
        ``Placed.target`` (``finish`` does both at once).
        """
        target = self._target(claim, failed=report is not None)
        present = claim.present()
        # The file moves last: while it is still in the claim folder, a restart
        # knows this claim is unfinished.
        order = sorted(present, key=lambda role: role == "file")
        for tag in name_tags(claim.id):
            names = {role: suffixed(present[role], tag) for role in order}
            report_file = report_name(suffixed(claim.name, tag)) if report is not None else None
            if not self._free(target, names, claim, report_file):
                continue
            linked: list[Path] = []
            try:
                for role, name in names.items():
                    if link_no_replace(claim.path(role), target / name):
                        linked.append(claim.path(role))
                    crashpoints.reached("during_move")
            except FileExistsError:
                continue  # taken between the check and the move: next suffix
            if report is not None and report_file is not None:
                body = {**report, "claim": claim.id, "files": names}
                # The users whose file failed read why: the report is as readable as the file.
                shown = os.lstat(target / names["file"]) if "file" in names else None
                write_durable(target / report_file, _json_bytes(body), readable_as=shown)
            moved = {role: str(target / name) for role, name in names.items()}
            if "file" not in moved:  # gone from the claim folder: where it would be
                moved["file"] = str(target / suffixed(claim.name, tag))
            return Placed(claim, target, moved, tuple(linked))
        raise OSError(errno.EEXIST, f"no free name for {claim.name} in {target}")

    def release(self, placed: Placed) -> None:
        """Remove a placed claim from the work area; its target was fsynced since it was placed."""
        _drop_old_names(placed)
        self.close(placed.claim)

    def _free(
        self, target: Path, names: dict[str, str], claim: Claim, report_file: str | None
    ) -> bool:
        for role, name in names.items():
            dst = target / name
            if os.path.lexists(dst) and not same_file(claim.path(role), dst):
                return False
        if report_file and os.path.lexists(target / report_file):
            return _report_claim(target / report_file) == claim.id
        return True

    def close(self, claim: Claim) -> None:
        """Keep a finished claim's folder as a spare, or remove it (only its claim file is left).

        Not fsynced: should a crash undo this, the next start finds a claim
        whose file is already in done or failed, and removes it then, or one
        with an emptied claim file and nothing else, and removes that. Carried
        until it is gone: an inbox coming back must not hand it out again.
        """
        if self._keep_spare(claim):
            self.carried.discard(claim.id)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim.state_file)
        try:
            os.rmdir(claim.dir)
        except FileNotFoundError:
            if not os.path.isdir(self.work):
                raise  # the inbox is away (renamed, unmounted): not known to be gone
        except OSError as err:
            if err.errno != errno.ENOTEMPTY:
                raise
            for entry in os.scandir(claim.dir):
                if entry.name.startswith(TMP_PREFIX):  # a compaction a crash cut short
                    os.unlink(entry.path)
            os.rmdir(claim.dir)
        self.carried.discard(claim.id)

    # ---------------------------------------------------------------- status

    def waiting(self) -> list[tuple[str, os.stat_result]]:
        """Files in the inbox (and its subfolders, with recursive) that could be taken.

        Not temporary, not empty; names are paths below the inbox.
        """
        folder = self.folder
        if folder.recursive:
            owned = layout.owned_names(folder.path, folder.done, folder.failed)
            names = list(layout.walk(self.inbox, owned, folder.max_depth))
        else:
            try:
                names = os.listdir(self.inbox)
            except FileNotFoundError:
                return []
        out = []
        for name in names:
            if is_temporary_name(os.path.basename(name)):
                continue
            try:
                info = os.lstat(self.inbox / name)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_size > 0:
                out.append((name, info))
        return out

    def claimed_count(self) -> int:
        try:
            return sum(
                1
                for e in os.scandir(self.work)
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(SPARE_PREFIX)
            )
        except (FileNotFoundError, NotADirectoryError):
            return 0  # no work area (someone's file in its place): nothing is claimed


def try_lock(inbox: Path) -> int | str:
    """Take an inbox's lock: its descriptor, or the pid of the daemon that holds it.

    The holder's pid is written into the lock file, for messages.
    """
    home = layout.home(inbox)
    with contextlib.suppress(FileExistsError):
        os.mkdir(home, 0o700)
    path = layout.lock_file(inbox)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        return holder
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _age(entry: os.DirEntry[str]) -> float | None:
    """When a listed folder of the work area last changed; None if it went since the listing.

    Workers take spares and finish claims while an inbox is taken up again:
    one of them gone is no reason to list none.
    """
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None


def _holds_nothing(claim_dir: Path) -> bool:
    """A claim folder with nothing in it but, at most, an empty claim file."""
    try:
        names = os.listdir(claim_dir)
        if names == [CLAIM_FILE]:
            info = os.lstat(claim_dir / CLAIM_FILE)
            return stat.S_ISREG(info.st_mode) and info.st_size == 0
    except OSError:
        return False
    return not names


def _remove_empty(claim_dir: Path) -> None:
    with contextlib.suppress(OSError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim_dir / CLAIM_FILE)
        os.rmdir(claim_dir)


def _read_claim(claim_dir: Path) -> Claim:
    data, _ = read_regular(claim_dir / CLAIM_FILE, limit=CLAIM_MAX_BYTES, what=CLAIM_FILE)
    return Claim.from_lines(data)


def _report_claim(path: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_bytes())
        if isinstance(data, dict):
            return str(data.get("claim"))
    return None


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=2) + "\n").encode(
        "utf-8", "surrogateescape"
    )


def _call_now(call: Callable[[], Any]) -> None:
    call()
