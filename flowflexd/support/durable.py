"""Durable file-system steps: writes that survive a power cut, moves that never replace.

Every step that a later one relies on is fsynced, file and directory, before
it returns; a move is a hard link then an unlink (or a guarded rename where
the file system has no hard links), so an existing name is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from pathlib import Path

#: Names of half-written files; never taken from an inbox, never left behind.
TMP_PREFIX = ".flowflexd-tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folders(root: Path, below: str) -> Path:
    """``root/below``, each missing level made and its name made durable in its parent."""
    path = root
    for part in Path(below).parts:
        path = path / part
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            continue
        fsync_dir(path.parent)
    return path


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: a write may take only part of it (a full disk, a signal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_durable(path: Path, data: bytes, *, readable_as: os.stat_result | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; file and directory fsynced.

    With ``readable_as``, whoever may read that file may read this one too:
    its read bits and its group (where our user may give it), never more.
    """
    # Not derived from the name: a 255-byte name leaves no room for a suffix.
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if readable_as is not None:
            # Explicit: the service's UMask=0077 would mask the mode given to open.
            os.fchmod(fd, 0o600 | (stat.S_IMODE(readable_as.st_mode) & 0o444))
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, readable_as.st_gid)  # only to a group we are in
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def link_no_replace(src: Path, dst: Path) -> bool:
    """Give ``src`` the further name ``dst``, never replacing an existing ``dst``.

    A hard link fails when the name is taken; a ``dst`` already naming the
    same file (a crash interrupted an earlier attempt) counts as done. On a
    filesystem without hard links, falls back to a rename guarded by a check.
    Returns True when ``src`` still exists and must be unlinked.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        if not same_file(src, dst):
            raise
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "name taken", str(dst)) from err
        os.rename(src, dst)
        return False
    return True


def move_no_replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` without ever replacing an existing ``dst``."""
    if link_no_replace(src, dst):
        os.unlink(src)
