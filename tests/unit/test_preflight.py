from __future__ import annotations

import os
from pathlib import Path

import yaml

from flowflexd.commands.preflight import Findings, check, check_folder
from flowflexd.config.model import Config, Folder, load
from flowflexd.inbox.mounts import (
    has_cap_lease,
    lease_problem,
    mount_of,
    share_of,
    unmounted_share,
    wants_own_thread,
)


def mounts(tmp_path: Path, fstype: str) -> str:
    table = tmp_path / "mounts"
    table.write_text(
        f"/dev/vda / ext4 rw 0 0\n//server/scans {tmp_path / 'share'} {fstype} rw 0 0\n"
    )
    return str(table)


def folder(path: Path, *, poll: bool) -> Folder:
    return Folder(path=path, done=path / "done", failed=path / "failed", rules=(), poll=poll)


def test_a_network_inbox_without_polling_is_warned(tmp_path: Path) -> None:
    (tmp_path / "share" / "inbox").mkdir(parents=True)
    findings = Findings()

    check_folder(
        folder(tmp_path / "share" / "inbox", poll=False), findings, mounts(tmp_path, "cifs")
    )

    [lease, inotify] = findings.warnings
    assert "network filesystem (cifs" in inotify
    assert "poll: true" in inotify
    assert "cannot tell whether another process still writes files here" in lease
    assert "network file system (cifs), where the kernel does not see writers" in lease


def test_a_network_inbox_with_polling_is_warned_only_about_writers(tmp_path: Path) -> None:
    (tmp_path / "share" / "inbox").mkdir(parents=True)
    findings = Findings()

    check_folder(
        folder(tmp_path / "share" / "inbox", poll=True), findings, mounts(tmp_path, "nfs4")
    )

    [warning] = findings.warnings
    assert "(the inbox is on a network file system (nfs4)" in warning


def status_file(folder: Path, cap_eff: str) -> str:
    folder.mkdir(exist_ok=True)
    path = folder / "status"
    path.write_text(f"Name:\tflowflexd\nCapInh:\t0\nCapEff:\t{cap_eff}\nCapBnd:\t1ff\n")
    return str(path)


def leases_file(folder: Path, value: str) -> str:
    folder.mkdir(exist_ok=True)
    path = folder / "leases-enable"
    path.write_text(f"{value}\n")
    return str(path)


def test_cap_lease_is_read_from_the_effective_set(tmp_path: Path) -> None:
    assert has_cap_lease(status_file(tmp_path / "a", "0000000010000000"))  # CAP_LEASE alone
    assert has_cap_lease(status_file(tmp_path / "b", "000001ffffffffff"))  # root
    assert not has_cap_lease(status_file(tmp_path / "c", "0000000000000000"))
    assert not has_cap_lease(str(tmp_path / "no-such-status"))


def test_the_writer_probe_needs_cap_lease_leases_on_and_a_local_file_system(
    tmp_path: Path,
) -> None:
    inbox = folder(tmp_path / "inbox", poll=False)
    local = mounts(tmp_path, "cifs")  # the inbox is beside the cifs share, not in it
    on, off = leases_file(tmp_path / "on", "1"), leases_file(tmp_path / "off", "0")
    cap, no_cap = status_file(tmp_path / "cap", "10000000"), status_file(tmp_path / "no", "0")

    assert lease_problem(inbox, local, cap, on) is None
    assert "lacks CAP_LEASE" in str(lease_problem(inbox, local, no_cap, on))
    assert "fs.leases-enable = 0" in str(lease_problem(inbox, local, cap, off))


def test_the_longest_mount_point_wins(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()

    assert mount_of(tmp_path / "share" / "not-yet", mounts(tmp_path, "smb3")) == (
        str(tmp_path / "share"),
        "smb3",
    )


def test_a_share_is_found_by_name_alone_without_looking_at_it(tmp_path: Path) -> None:
    """For a share that does not answer: nothing under it exists here, nothing is stat'ed."""
    table = fstab(
        tmp_path,
        "/dev/vda / ext4 rw 0 0",
        "nas:/srv /mnt/nas\\040drop nfs4 rw 0 0",
        "nas:/srv/deep /mnt/nas\\040drop/deep nfs4 rw 0 0",
    )

    assert share_of(Path("/mnt/nas drop/inbox/done"), table) == "/mnt/nas drop"
    assert share_of(Path("/mnt/nas drop/deep/inbox"), table) == "/mnt/nas drop/deep"
    assert share_of(Path("/mnt/nas"), table) is None  # a prefix of the name is not the share
    assert share_of(Path("/srv/drop/inbox"), table) is None  # only / above it
    assert share_of(Path("/mnt/nas drop/x"), str(tmp_path / "no-table")) is None


def test_an_inbox_on_a_share_gets_its_own_thread_by_its_mount_name_alone(tmp_path: Path) -> None:
    table = fstab(
        tmp_path,
        "/dev/vda / ext4 rw 0 0",
        "nas:/srv /mnt/nas nfs4 rw 0 0",
        "//fs/scans /mnt/scans cifs rw 0 0",
        "share: /mnt/sftp fuse.sshfs rw 0 0",
        "/dev/sdb1 /mnt/nas/usb ext4 rw 0 0",  # a local disk mounted below a share
    )

    def own(path: str, setting: str = "auto") -> bool:
        folder = Folder(
            Path(path), Path(path) / "done", Path(path) / "failed", (), own_thread=setting
        )
        return wants_own_thread(folder, table)

    assert own("/mnt/nas/inbox") and own("/mnt/scans/in") and own("/mnt/sftp/in")
    assert not own("/srv/drop/inbox")  # the machine's own disk
    assert not own("/mnt/nas/usb/inbox")  # the deepest mount decides
    assert not own("/mnt/nasty/inbox")  # a prefix of the name is not the share
    assert own("/srv/drop/inbox", "always") and not own("/mnt/nas/inbox", "never")


def fstab(tmp_path: Path, *lines: str) -> str:
    table = tmp_path / "fstab"
    table.write_text("\n".join(lines) + "\n")
    return str(table)


def test_an_inbox_on_a_share_fstab_mounts_and_nothing_mounted_there_is_named(
    tmp_path: Path,
) -> None:
    share = tmp_path / "nas scans"  # a space, as fstab writes it: \040
    inbox = share / "inbox"
    table = fstab(
        tmp_path,
        "# <file system> <mount point> <type> <options> <dump> <pass>",
        "UUID=1234 / ext4 defaults 0 1",
        "/swapfile none swap sw 0 0",
        f"//nas/scans {str(share).replace(' ', chr(92) + '040')} cifs credentials=/x 0 0",
    )
    not_mounted = tmp_path / "mounts"
    not_mounted.write_text("/dev/vda / ext4 rw 0 0\n")
    mounted = tmp_path / "mounted"
    escaped = str(share).replace(" ", "\\040")
    mounted.write_text(f"/dev/vda / ext4 rw 0 0\n//nas/scans {escaped} cifs rw 0 0\n")

    assert unmounted_share(os.path.realpath(inbox), str(not_mounted), table) == str(share)
    assert unmounted_share(os.path.realpath(share), str(not_mounted), table) == str(
        share
    )  # the point itself
    assert unmounted_share(os.path.realpath(inbox), str(mounted), table) is None
    assert (
        unmounted_share(os.path.realpath(tmp_path / "elsewhere"), str(not_mounted), table) is None
    )
    assert (
        unmounted_share(os.path.realpath(inbox), str(not_mounted), str(tmp_path / "no-fstab"))
        is None
    )

    findings = Findings()
    check_folder(folder(inbox, poll=True), findings, str(not_mounted), table)
    [error] = findings.errors
    assert f"on the share /etc/fstab mounts at {share}, and nothing is mounted there" in error
    assert f"mount {share}" in error and f"RequiresMountsFor={share}" in error
    assert not inbox.exists()  # nothing made on the bare mount point


def test_the_deepest_fstab_mount_point_above_an_inbox_decides(tmp_path: Path) -> None:
    outer, inner = tmp_path / "srv", tmp_path / "srv" / "nas"
    table = fstab(
        tmp_path, f"/dev/sdb1 {outer} ext4 defaults 0 2", f"//nas/x {inner} cifs _netdev 0 0"
    )
    mounts_now = tmp_path / "mounts"
    mounts_now.write_text(f"/dev/vda / ext4 rw 0 0\n/dev/sdb1 {outer} ext4 rw 0 0\n")

    assert unmounted_share(os.path.realpath(inner / "inbox"), str(mounts_now), table) == str(inner)
    assert unmounted_share(os.path.realpath(outer / "local-inbox"), str(mounts_now), table) is None


def queue_file(tmp_path: Path, size: int) -> str:
    path = tmp_path / "max_queued_events"
    path.write_text(f"{size}\n")
    return str(path)


RULE = {"name": "pdf", "pattern": "*.pdf", "event": "doc"}


def config_with(tmp_path: Path, *, poll: bool) -> Config:
    (tmp_path / "inbox").mkdir(parents=True)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "folders": [{"path": str(tmp_path / "inbox"), "poll": poll, "rules": [RULE]}],
            }
        )
    )
    return load(path, offline=True)


def test_a_small_inotify_queue_is_warned_with_its_size_and_the_sysctl(tmp_path: Path) -> None:
    config = config_with(tmp_path, poll=False)

    findings = check(config, mounts(tmp_path, "ext4"), queue_file(tmp_path, 16))

    [warning] = [w for w in findings.warnings if "max_queued_events" in w]
    assert warning.startswith("fs.inotify.max_queued_events is 16: a burst of more than about 5 ")
    assert "sysctl -w fs.inotify.max_queued_events=16384" in warning
    assert not findings.errors


def test_the_kernels_default_queue_and_polled_inboxes_are_not_warned(tmp_path: Path) -> None:
    default = check(
        config_with(tmp_path / "a", poll=False),
        mounts(tmp_path, "ext4"),
        queue_file(tmp_path, 16384),
    )
    polled = check(
        config_with(tmp_path / "b", poll=True), mounts(tmp_path, "ext4"), queue_file(tmp_path, 16)
    )
    unreadable = check(
        config_with(tmp_path / "c", poll=False), mounts(tmp_path, "ext4"), str(tmp_path / "none")
    )

    for findings in (default, polled, unreadable):
        assert not [w for w in findings.warnings if "max_queued_events" in w]
