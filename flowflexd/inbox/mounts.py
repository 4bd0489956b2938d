"""What the machine says about an inbox's file system: its mount, and whether leases work.

The writer probe (completeness.py) needs a kernel lease on a local file
system, CAP_LEASE for files other users own, and leases switched on; a
network file system hides writers on other machines, and needs polling.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowflexd.config.model import Folder

NETWORK_FILESYSTEMS = frozenset(
    {"cifs", "smb3", "smbfs", "nfs", "nfs4", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs"}
)


CAP_LEASE = 28  # linux/capability.h


def existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def mount_of(path: Path, mounts_file: str = "/proc/self/mounts") -> tuple[str, str] | None:
    """(mount point, filesystem type) holding ``path``, from the mount table."""
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(existing_ancestor(path))
    best: tuple[str, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, fields[2])
    return best


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
    mounts_file: str = "/proc/self/mounts",
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
