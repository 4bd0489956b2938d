"""Reading a file that someone else put in an inbox, without trusting it.

Files are opened without following links and checked with fstat on the open
descriptor, then read from that descriptor: a name swapped after a check
changes nothing. A signature says what "unchanged" means.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from flowflexd.engine.outcomes import Code
from flowflexd.errors import FileRejected
from flowflexd.rules import metadata
from flowflexd.rules.matching import Rule, manifest_rows

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: str | Path, *, max_bytes: int) -> tuple[int, os.stat_result]:
    """Open a file for reading only if it is what it claims to be.

    ``O_NOFOLLOW`` refuses a symbolic link, even one swapped in after any
    earlier check; ``O_NONBLOCK`` keeps a FIFO from hanging the open; fstat
    on the descriptor then requires a regular file with no other hard link
    and a size within the cap. The caller reads from the returned descriptor.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise FileRejected(
                "is a symbolic link; links are never followed", code=Code.SYMLINK
            ) from err
        if err.errno == errno.ENXIO:
            raise FileRejected("is a socket, not a file", code=Code.NOT_A_REGULAR_FILE) from err
        if err.errno == errno.EACCES:
            raise FileRejected(
                "cannot be read by flowflexd (permission denied)", code=Code.PERMISSION_DENIED
            ) from err
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRejected(
                f"is a {describe_mode(info.st_mode)}, not a regular file",
                code=Code.NOT_A_REGULAR_FILE,
            )
        if info.st_nlink > 1:
            raise FileRejected(
                f"has {info.st_nlink} hard links: another name points at the same data, "
                "so it was not put here only for flowflexd",
                code=Code.HARD_LINKED,
            )
        if info.st_size > max_bytes:
            raise FileRejected(
                f"is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit",
                code=Code.FILE_TOO_LARGE,
            )
        # O_NONBLOCK stays: it has no effect on a regular file's reads.
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def describe_mode(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def read_limited(fd: int, limit: int, *, what: str) -> bytes:
    """Read a whole small file from a descriptor, refusing one over ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, min(65536, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise FileRejected(f"{what} is over {limit:,} bytes", code=Code.SIDECAR_TOO_LARGE)
    return b"".join(chunks)


def read_regular(path: str | Path, *, limit: int, what: str) -> tuple[bytes, os.stat_result]:
    """A small regular file's bytes (``open_regular`` and ``read_limited``) and its fstat."""
    fd, info = open_regular(path, max_bytes=limit)
    try:
        return read_limited(fd, limit, what=what), info
    finally:
        os.close(fd)


def read_named(
    path: str | Path, *, limit: int, what: str, too_large: Code, advice: str = ""
) -> tuple[bytes, os.stat_result]:
    """``read_regular`` for a sidecar or manifest: ``what`` names it in every reason, and
    one over ``limit`` is ``too_large`` (with ``advice``), whichever check saw it first."""
    try:
        return read_regular(path, limit=limit, what=what)
    except FileRejected as err:
        if err.code in (Code.FILE_TOO_LARGE, Code.SIDECAR_TOO_LARGE):
            raise FileRejected(f"{what} is over {limit:,} bytes{advice}", code=too_large) from err
        raise FileRejected(f"{what} {err.message}", code=err.code) from err


def read_manifest(
    rule: Rule, path: str | Path, name: str
) -> tuple[list[tuple[int, dict[str, Any]]], os.stat_result]:
    """A manifest's rows, read as its rule says, and the manifest's fstat.

    Over ``MAX_MANIFEST_BYTES`` is MANIFEST_INVALID; a parse error too (metadata.py).
    """
    raw, info = read_named(
        path,
        limit=metadata.MAX_MANIFEST_BYTES,
        what=f"manifest {name}",
        too_large=Code.MANIFEST_INVALID,
        advice="; split the export",
    )
    return manifest_rows(rule, raw, name), info


def content_signature(info: os.stat_result) -> list[int]:
    """What changes when a writer writes: ``signature`` without the inode, as a claim stores it."""
    return list(signature(info)[:3])


def signature(info: os.stat_result) -> tuple[int, int, int, int]:
    """What must not change for a file to count as still (size, mtime, ctime, inode)."""
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
