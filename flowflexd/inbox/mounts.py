"""What the machine says about an inbox's file system: its mount, leases, a share not mounted.

The writer probe (completeness.py) needs a kernel lease on a local file
system, CAP_LEASE for files other users own, and leases switched on; a
network file system hides writers on other machines, and needs polling.
A share that fstab mounts at or above an inbox, and that is not mounted,
leaves the bare mount point on the machine's own disk: no inbox there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from flowflexd.config.model import Folder

NETWORK_FILESYSTEMS = frozenset(
    {"cifs", "smb3", "smbfs", "nfs", "nfs4", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs"}
)


CAP_LEASE = 28  # linux/capability.h
FSTAB = "/etc/fstab"
MOUNTS = "/proc/self/mounts"
_OCTAL = re.compile(r"\\([0-7]{3})")  # fstab and the mount table write a space as \040


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _entries(table: str) -> list[tuple[str, str]] | None:
    """(mount point, type) of each line of an fstab-format table; None when it cannot be read.

    One reader for both tables: ``/etc/fstab`` (what should be mounted) and
    the kernel's mount table (what is).
    """
    try:
        with open(table, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and fields[1].startswith("/"):
            entries.append((os.path.normpath(_unescape(fields[1])), fields[2]))
    return entries


def below(target: str, point: str) -> bool:
    """Whether ``target`` is the mount point ``point`` or a path under it."""
    return target == point or target.startswith(point.rstrip("/") + "/")


def share_of(path: Path, mounts_file: str = MOUNTS) -> str | None:
    """The mount point (not ``/``) a path lies under, from its name alone.

    Nothing is looked at on disk: for a share that does not answer, where a
    ``stat`` or ``realpath`` would wait for its server.
    """
    found = _deepest(str(path), _entries(mounts_file) or [])
    return found[0] if found is not None and found[0] != "/" else None


def filesystem_of(path: Path, mounts_file: str = MOUNTS) -> str | None:
    """The type of the file system a path lies on, from its name alone (see ``share_of``)."""
    found = _deepest(str(path), _entries(mounts_file) or [])
    return found[1] if found is not None else None


def on_network(fs_type: str | None) -> bool:
    """Whether a file system's calls may wait on a server: a share, or any FUSE mount."""
    return fs_type is not None and (
        fs_type in NETWORK_FILESYSTEMS or fs_type == "fuse" or fs_type.startswith("fuse.")
    )


def wants_own_thread(folder: Folder, mounts_file: str = MOUNTS) -> bool:
    """Whether an inbox's calls into its folders run in a thread of its own (own_thread.py)."""
    if folder.own_thread != "auto":
        return folder.own_thread == "always"
    return on_network(filesystem_of(folder.path, mounts_file))


def unmounted_share(target: str, mounts_file: str = MOUNTS, fstab: str | None = None) -> str | None:
    """The mount point fstab gives ``target`` (or a folder above it) when nothing is mounted there.

    A share that did not mount (its server was down at boot, say) leaves the
    bare mount point on the machine's own disk: an inbox made or found there
    would be taken for the share, and its files would never come. ``target``
    is where the inbox's path leads, resolved by the caller's look (a
    ``realpath`` would wait on a share that does not answer): nothing here
    looks at the disk.
    """
    wanted = _entries(fstab or FSTAB)
    mounted = _entries(mounts_file)
    if not wanted or mounted is None:
        return None
    above = [point for point, _ in wanted if point != "/" and below(target, point)]
    if not above:
        return None
    point = max(above, key=len)
    return None if point in {p for p, _ in mounted} else point


def existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def mount_of(path: Path, mounts_file: str = MOUNTS) -> tuple[str, str] | None:
    """(mount point, filesystem type) holding ``path``, from the mount table."""
    entries = _entries(mounts_file)
    if entries is None:
        return None
    return _deepest(os.path.realpath(existing_ancestor(path)), entries)


def _deepest(target: str, entries: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The (mount point, type) of the deepest mount holding ``target``, by name alone."""
    inside = [entry for entry in entries if below(target, entry[0])]
    return max(inside, key=lambda entry: len(entry[0])) if inside else None


def has_cap_lease(status_file: str = "/proc/self/status") -> bool:
    """Whether this process may take leases on files other users own."""
    try:
        with open(status_file, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_LEASE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def lease_problem(
    folder: Folder,
    mounts_file: str = MOUNTS,
    status_file: str = "/proc/self/status",
    leases_file: str = "/proc/sys/fs/leases-enable",
) -> str | None:
    """Why the writer probe cannot work for this inbox's files, or None when it can."""
    mount = mount_of(folder.path, mounts_file)
    if mount and mount[1] in NETWORK_FILESYSTEMS:
        return (
            f"the inbox is on a network file system ({mount[1]}), where the kernel does not "
            "see writers on other machines"
        )
    try:
        with open(leases_file, encoding="ascii") as handle:
            if handle.read().strip() == "0":
                return "leases are switched off on this machine (sysctl fs.leases-enable = 0)"
    except OSError:
        pass
    if not has_cap_lease(status_file):
        return (
            "flowflexd's user lacks CAP_LEASE, so files that other users own "
            "(the scanner or share users) cannot be probed"
        )
    return None
