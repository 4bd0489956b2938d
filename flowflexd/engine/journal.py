"""The append-only record of outcomes: one JSON line per file, fsynced before its claim goes.

Each line: time, outcome (done or failed), folder, file, sha256, rule, event,
idempotency key, assetIds, and the API's answer or the error. A line that a
crash or a full disk cut short is cut off at the next start (and after any
failed write), so the next record starts on a line of its own; readers skip
such a line, and any record whose fields have the wrong types. A claim
finished again after a crash may appear twice, with the same claim id.

A daemon that runs for years must not fill its disk: past ``ROTATE_BYTES``
the journal is renamed ``journal.jsonl.1`` (older ones shift to ``.2`` and
on), and only ``KEEP`` old files are kept, so the journal never takes more
than (KEEP + 1) x ROTATE_BYTES (144 MiB): the last 200,000 files or so,
records being about 600 bytes. ``status`` counts over what is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog

from flowflexd.errors import UserError
from flowflexd.support.durable import fsync_dir, write_all

JOURNAL_NAME = "journal.jsonl"
ROTATE_BYTES = 16 << 20
KEEP = 8

log = structlog.get_logger("flowflexd.engine.journal")


def _open_append(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


class Journal:
    def __init__(
        self,
        state_dir: Path,
        *,
        rotate_bytes: int = ROTATE_BYTES,
        keep: int = KEEP,
        defer: bool = False,
    ) -> None:
        """Open the journal now, or with ``defer`` at ``open()``.

        A standby defers: the active daemon may be writing to the same journal.
        """
        self.dir = state_dir
        self.path = state_dir / JOURNAL_NAME
        self._rotate_bytes = rotate_bytes
        self._keep = keep
        self._fd = -1
        self._end = self._size = 0
        self._unsynced = False  # written by write() and not yet fsynced
        self._lock = threading.Lock()
        if not defer:
            self.open()

    def open(self) -> None:
        state_dir = self.dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = _open_append(self.path)
        except OSError as err:
            raise UserError(
                f"cannot keep the journal in state_dir {state_dir}: "
                f"{err.strerror or err} ({err.filename or self.path})",
                hint="give flowflexd's user a writable state_dir (the unit's StateDirectory= "
                "makes /var/lib/flowflexd), or set state_dir in the configuration",
            ) from err
        self._end = _cut_torn_tail(self._fd)  # the size of the whole records
        self._size = self._end  # bytes since the last rotation (or rotation attempt)
        # A journal created just now must survive a power cut with its name.
        fsync_dir(state_dir)

    def record(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` and fsync it, with any record written before it."""
        self._append(entry, sync=True)

    def write(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` without an fsync: ``sync()`` (or the next record) makes it durable.

        For a group commit: whoever relies on the record calls ``sync()`` first.
        """
        self._append(entry, sync=False)

    def sync(self) -> None:
        """Make every record written so far durable (nothing to do when none waits)."""
        with self._lock:
            self._sync_held()

    def _sync_held(self) -> None:
        """sync() with the lock held."""
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False

    def _append(self, entry: dict[str, Any], *, sync: bool) -> None:
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        data = line.encode("utf-8", "surrogateescape")
        with self._lock:
            try:
                write_all(self._fd, data)
                if sync:
                    os.fsync(self._fd)
            except OSError:
                # A part of the line may be on disk (a full disk takes what
                # fits): cut it off, or the next record would be glued to it.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._end)
                raise
            self._unsynced = not sync
            self._end += len(data)
            self._size += len(data)
            if self._size >= self._rotate_bytes:
                self._rotate()

    def _rotate(self) -> None:
        """Start a new file; the records written so far are durable in the old one."""
        try:
            self._sync_held()  # sync() fsyncs the current file only: the old one's records first
            for n in range(self._keep, 0, -1):
                older = rotated(self.path, n)
                if not older.exists():
                    continue
                if n == self._keep:
                    older.unlink()
                else:
                    os.replace(older, rotated(self.path, n + 1))
            os.replace(self.path, rotated(self.path, 1))
            fd = _open_append(self.path)
            fsync_dir(self.dir)
        except OSError as err:
            # Keep writing where we are: a full disk must not stop the records.
            log.warning("cannot rotate the journal; it keeps growing", error=str(err))
            self._size = 0  # try again after another ROTATE_BYTES, not on every record
            return
        os.close(self._fd)
        self._fd, self._size, self._end = fd, 0, 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):  # records a group commit has not synced yet
                    self._sync_held()
                os.close(self._fd)
                self._fd = -1


def _cut_torn_tail(fd: int) -> int:
    """Cut a last line that a crash left without its newline; the size that remains."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep = size
    while keep > 0:
        chunk = os.pread(fd, min(65536, keep), max(0, keep - 65536))
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = keep - len(chunk) + newline + 1
            break
        keep -= len(chunk)
    log.warning(
        "the journal's last line was cut short (a crash or a full disk); it is cut off",
        bytes_cut=size - keep,
    )
    os.ftruncate(fd, keep)
    os.fsync(fd)
    return keep


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def files(state_dir: Path) -> list[Path]:
    """The journal's files that exist, oldest first (the current one last).

    Found by listing, not by counting up from ``.1``: a rotation cut short
    by a crash can leave a gap in the numbers.
    """
    path = state_dir / JOURNAL_NAME
    numbered: list[tuple[int, Path]] = []
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return []
    for name in names:
        suffix = name.removeprefix(f"{JOURNAL_NAME}.")
        if suffix != name and suffix.isdigit():
            numbered.append((int(suffix), state_dir / name))
    found = [p for _, p in sorted(numbered, reverse=True)]
    if path.exists():
        found.append(path)
    return found


def outcomes_in_tail(
    state_dir: Path, claims: set[str], tail_bytes: int = 16 << 20
) -> dict[str, Any]:
    """The last record of each of ``claims`` within the journal's last ``tail_bytes``.

    Claims left by a crash are recent, so their records, if written at all,
    are near the end (or, just after a rotation, at the end of the previous
    file); reading only the tail keeps a start after a crash fast however
    much history there is.
    """
    found: dict[str, Any] = {}
    if not claims:
        return found
    chunks: list[bytes] = []
    left = tail_bytes
    for path in reversed(files(state_dir)):
        if left <= 0:
            break
        try:
            with path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - left))
                data = handle.read()
        except FileNotFoundError:
            continue  # rotated away meanwhile
        chunks.append(data)
        left -= len(data)
    for data in reversed(chunks):
        # The first line of a tail may be cut: _entries skips it like a torn one.
        for entry in _entries(data.splitlines()):
            claim = entry.get("claim")
            if isinstance(claim, str) and claim in claims:
                found[claim] = entry
    return found


def read(state_dir: Path) -> Iterator[dict[str, Any]]:
    """Every whole record the journal keeps, oldest first."""
    for path in files(state_dir):
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            continue
        with handle:
            yield from _entries(handle)


# What a record's fields must be for a reader to use it.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "outcome": str,
    "folder": str,
    "file": str,
    "claim": str,
    "time": str,
    "event": (str, type(None)),
    "code": (str, type(None)),
    "reason": (str, type(None)),
    "sha256": (str, type(None)),
}


def _entries(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The whole, well-formed records among ``lines``; a torn or mistyped one is skipped."""
    for raw in lines:
        try:
            entry = json.loads(raw.decode("utf-8", "surrogateescape"))
        except ValueError:
            continue
        if isinstance(entry, dict) and all(
            isinstance(entry[key], kind) for key, kind in _FIELD_TYPES.items() if key in entry
        ):
            yield entry
