"""Is a file whole? What the kernel and the file's own format say, beyond settling.

Settling (size, mtime and ctime still for ``settle_seconds``) cannot see a
writer that pauses while it holds the file open, a Windows copy that set the
full size first and has not filled the end yet, or a client that died and
left a prefix under the final name. Three further checks can:

- **writers**: a read lease (``F_SETLEASE`` ``F_RDLCK``) on our own read-only
  descriptor is refused exactly while another process has the file open for
  writing. Samba, FTP and SSH servers are local processes on the file server,
  so their writers count. The lease is a probe: taken and released at once,
  so no writer ever waits on a lease break. It needs the file's owner or
  ``CAP_LEASE``, and a local file system; elsewhere the answer is "unknown".
- **tail**: a file whose last bytes were never written ends in a hole
  (``SEEK_DATA`` finds no data there). Only the end counts: a compressed file
  system may store zero blocks inside a file as holes.
- **format**: the types scanners and exports produce say where they end: PDF
  (``%%EOF``), JPEG (EOI), PNG (IEND), and the ZIP end record of DOCX, XLSX
  and PPTX.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

PDF_TRAILER_WINDOW = 1024
_ZIP_EOCD = b"PK\x05\x06"
_ZIP_EOCD_SIZE = 22
_ZIP_TAIL_WINDOW = _ZIP_EOCD_SIZE + 0xFFFF  # the record plus the longest comment
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Lease breaks are signalled to the holder, SIGIO by default, whose default
# action ends the process. A writer opening the file in the microseconds we
# hold the probe lease must not kill the daemon: SIGURG is ignored by default.
_BREAK_SIGNAL = signal.SIGURG
_WHY_NO_LEASE = {
    errno.EACCES: "flowflexd's user neither owns the file nor has CAP_LEASE",
    errno.EPERM: "flowflexd's user neither owns the file nor has CAP_LEASE",
    errno.EINVAL: "this file system does not support leases",
    errno.ENOLCK: "the kernel has no room for another lease",
}


NO_LEASE = "cannot tell whether another process still writes files here"
NO_LEASE_FIX = (
    "give flowflexd CAP_LEASE (the shipped unit does) and keep inboxes on a local file system; "
    "otherwise raise settle_seconds"
)


class Writers(Enum):
    NONE = "none"  # nobody else has the file open for writing
    OPEN = "open"  # another process has it open for writing
    UNKNOWN = "unknown"  # a lease cannot be taken here: settling alone decides


@dataclass(frozen=True)
class WriterProbe:
    writers: Writers
    why: str = ""  # for UNKNOWN: why the kernel could not tell


def probe_writers(fd: int) -> WriterProbe:
    """Whether another process has the file behind ``fd`` (opened read-only) open for writing."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, _BREAK_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EBUSY):
            return WriterProbe(Writers.OPEN)
        why = _WHY_NO_LEASE.get(err.errno or 0, f"leases fail here: {os.strerror(err.errno or 0)}")
        return WriterProbe(Writers.UNKNOWN, why)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return WriterProbe(Writers.NONE)


def _open(path: str | Path) -> int | os.stat_result:
    """A read-only descriptor on ``path``, or its lstat when another process holds a write lease.

    Opening would break that lease (Samba with kernel oplocks holds one for a
    client with an exclusive oplock); O_NONBLOCK refuses instead of waiting,
    and such a holder is a writer. Other errors (gone, unreadable, a link) raise.
    """
    try:
        return os.open(path, _OPEN_FLAGS)
    except BlockingIOError:
        return os.lstat(path)


def writer_state(path: str | Path) -> tuple[os.stat_result, Writers] | None:
    """``path``'s fstat and whether another process writes it; None when it is gone."""
    try:
        opened = _open(path)
    except FileNotFoundError:
        return None
    if isinstance(opened, os.stat_result):
        return opened, Writers.OPEN
    try:
        return os.fstat(opened), probe_writers(opened).writers
    finally:
        os.close(opened)


def someone_writes(path: str | Path) -> bool:
    """True when another process has ``path`` open for writing (False when it cannot tell)."""
    try:
        state = writer_state(path)
    except OSError:
        return False  # unreadable or a link: the claim itself says so
    return state is not None and state[1] is Writers.OPEN


def unwritten_tail(fd: int, size: int) -> int:
    """How many bytes at the end of the file were never written (0: it has data to its end).

    0 also where the file system cannot tell (it then reports all data).
    """
    if size <= 0:
        return 0
    try:
        os.lseek(fd, size - 1, os.SEEK_DATA)
    except OSError as err:
        if err.errno != errno.ENXIO:
            return 0
    else:
        return 0
    # The end is a hole: find where the last data ends, for the message.
    end = 0
    position = 0
    for _ in range(4096):  # bounded: a file of many holes is reported roughly
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:
            break
        end = position = os.lseek(fd, start, os.SEEK_HOLE)
    return size - end


def _tail(fd: int, size: int, count: int) -> bytes:
    start = max(0, size - count)
    return os.pread(fd, size - start, start)


def _pdf(fd: int, size: int) -> str | None:
    if b"%%EOF" in _tail(fd, size, PDF_TRAILER_WINDOW):
        return None
    return f"a PDF ends with %%EOF within its last {PDF_TRAILER_WINDOW:,} bytes; this one does not"


def _jpeg(fd: int, size: int) -> str | None:
    # Some cameras pad after the end marker; padding of NULs or spaces is fine.
    if _tail(fd, size, 1024).rstrip(b"\x00 \r\n\t").endswith(_JPEG_EOI):
        return None
    return "a JPEG ends with its end-of-image marker (FF D9); this one does not"


def _png(fd: int, size: int) -> str | None:
    if _tail(fd, size, len(_PNG_END)) == _PNG_END:
        return None
    return "a PNG ends with its IEND chunk; this one does not"


def _zip(fd: int, size: int) -> str | None:
    tail = _tail(fd, size, _ZIP_TAIL_WINDOW)
    base = size - len(tail)
    at = tail.rfind(_ZIP_EOCD)
    while at >= 0:
        if at + _ZIP_EOCD_SIZE <= len(tail):
            (comment,) = struct.unpack_from("<H", tail, at + 20)
            if base + at + _ZIP_EOCD_SIZE + comment == size:
                return None
        at = tail.rfind(_ZIP_EOCD, 0, at)
    return (
        "a DOCX, XLSX or PPTX file is a ZIP archive that ends with its end-of-central-directory "
        "record; this one does not"
    )


_CHECKS = {
    "pdf": _pdf,
    "jpg": _jpeg,
    "jpeg": _jpeg,
    "png": _png,
    "docx": _zip,
    "xlsx": _zip,
    "pptx": _zip,
}


def has_format_check(name: str) -> bool:
    _, dot, ext = name.rpartition(".")
    return bool(dot) and ext.lower() in _CHECKS


def format_problem(fd: int, size: int, name: str) -> str | None:
    """What the file's format says is missing at its end, or None (whole, or a type not checked)."""
    _, dot, ext = name.rpartition(".")
    check = _CHECKS.get(ext.lower()) if dot else None
    return check(fd, size) if check is not None else None


@dataclass(frozen=True)
class Examined:
    """What the three checks found about one file."""

    name: str
    info: os.stat_result
    writer: WriterProbe
    unwritten: int  # bytes at the end never written
    format_problem: str | None  # None: whole, not checked, or a type without a check

    def problem(self) -> tuple[str, str] | None:
        """(check, reason) of the first check that says the file is not whole yet."""
        if self.writer.writers is Writers.OPEN:
            return "writer", f"{self.name} is still open for writing by another process"
        if self.unwritten:
            return (
                "tail",
                f"{self.name} ends in {self.unwritten:,} bytes that were never written "
                f"(its size is {self.info.st_size:,}: a copy that set the size first and "
                "has not filled it)",
            )
        if self.format_problem:
            return "format", f"{self.name} is cut short: {self.format_problem}"
        return None


def examine(path: str | Path, *, verify_format: bool) -> Examined | None:
    """Run every check on ``path``; None when it cannot be opened (gone, unreadable, a link)."""
    try:
        fd = _open(path)
    except OSError:
        return None
    if isinstance(fd, os.stat_result):
        return Examined(os.path.basename(path), fd, WriterProbe(Writers.OPEN), 0, None)
    try:
        info = os.fstat(fd)
        writer = probe_writers(fd)
        unwritten = unwritten_tail(fd, info.st_size)
        problem = (
            format_problem(fd, info.st_size, os.path.basename(path))
            if verify_format and not unwritten
            else None
        )
    except OSError:
        return None
    finally:
        os.close(fd)
    return Examined(os.path.basename(path), info, writer, unwritten, problem)
