"""What ``flowflexd check`` verifies about the folders, without changing anything."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import pwd
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowflexd.config.model import SERVICE_STATE_DIR, Config, Folder
from flowflexd.errors import FileRejected, UserError
from flowflexd.inbox import layout
from flowflexd.inbox.answering import NOT_ANSWERING, Looker, NotAnswering
from flowflexd.inbox.completeness import NO_LEASE, NO_LEASE_FIX
from flowflexd.inbox.mounts import (
    FSTAB,
    MOUNTS,
    NETWORK_FILESYSTEMS,
    existing_ancestor,
    lease_problem,
    mount_of,
    unmounted_share,
)
from flowflexd.inbox.runtime import Sight, look_into
from flowflexd.inbox.spool import not_ours, user_name
from flowflexd.rules.templates import Template

INOTIFY_QUEUE = "/proc/sys/fs/inotify/max_queued_events"
# The kernel's default is 16,384 events. A file written makes two or three, so
# a queue far below that overflows on one scanner batch or one export.
SMALL_INOTIFY_QUEUE = 1024


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _check_dir(label: str, path: Path, findings: Findings) -> int | None:
    """Exists or can be created, and is writable; returns its device."""
    base = existing_ancestor(path)
    if not base.is_dir():
        findings.errors.append(f"{label} {path}: {base} is not a folder")
        return None
    if not os.access(base, os.W_OK | os.X_OK):
        what = "is not writable" if base == path else f"cannot be created ({base} is not writable)"
        findings.errors.append(f"{label} {path} {what} by this user")
        return None
    if base != path:
        findings.notes.append(f"{label} {path} does not exist yet; flowflexd will create it")
    return os.stat(base).st_dev


def _sample(root: Path, below: Template | None) -> Path:
    """Where a file claimed now at the top of the inbox would go: what check looks at."""
    try:
        return layout.placed(root, below, "sample.pdf", folder="", claimed_at=None)
    except FileRejected:
        return root  # {dir[N]}: no sample at the top; the root is what can be checked


def sticky_problem(inbox: Path) -> str | None:
    """Why a sticky inbox stops claims, or None when the inbox is not sticky."""
    try:
        info = os.stat(inbox)
    except OSError:
        return None
    if not info.st_mode & stat.S_ISVTX:
        return None
    return (
        f"inbox {inbox} has the sticky bit (mode {stat.S_IMODE(info.st_mode):04o}): "
        "flowflexd's user may then rename only the files it owns, so files the scanner or "
        f"share users write stay in the inbox (EPERM). Run: chmod o-t {inbox} "
        "(a setgid group folder, mode 2775, is what works)"
    )


def check_folder(
    folder: Folder,
    findings: Findings,
    mounts_file: str = MOUNTS,
    fstab: str | None = None,
    looker: Looker[Sight] | None = None,
) -> None:
    """What would stop or trouble the daemon at this inbox; ``looker``'s look may be begun."""
    sight = (looker or Looker(folder.path, look_into)).look()
    if isinstance(sight, NotAnswering):
        # Every other check would wait on it too.
        findings.errors.append(
            f"inbox {folder.path} does not answer: {NOT_ANSWERING}. Bring back the server "
            "or the network to it; flowflexd takes the inbox up by itself once it answers, "
            "and the other inboxes do not wait for it"
        )
        return
    share = unmounted_share(sight.real, mounts_file, fstab)
    if share is not None:
        # What else could be checked is the bare mount point on this machine's disk.
        findings.errors.append(
            f"inbox {folder.path} is on the share {FSTAB} mounts at {share}, and nothing is "
            f"mounted there now: flowflexd waits for it. Run: mount {share} (and give the "
            f"unit RequiresMountsFor={share}, so that it starts after the mount)"
        )
        return
    sticky = sticky_problem(folder.path)
    if sticky is not None:
        findings.errors.append(sticky)
    inbox_dev = _check_dir("inbox", folder.path, findings)
    check_own_folders(folder.path, findings)
    for label, path in (
        ("done", _sample(folder.done, folder.done_below)),
        ("failed", _sample(folder.failed, folder.failed_below)),
    ):
        dev = _check_dir(label, path, findings)
        if inbox_dev is not None and dev is not None and dev != inbox_dev:
            findings.errors.append(
                f"{label} {path} is on another filesystem than the inbox {folder.path}: files "
                "move by atomic rename, which cannot cross filesystems"
            )
    why = lease_problem(folder, mounts_file)
    if why is not None:
        findings.warnings.append(lease_warning(folder, why))
    for label, days, where in (
        ("keep_done_days", folder.keep_done_days, folder.done),
        ("keep_failed_days", folder.keep_failed_days, folder.failed),
    ):
        if days is not None:
            findings.notes.append(
                f"{label}: what flowflexd put in {where} is DELETED {days:g} days later; "
                "this is the one case where flowflexd deletes files"
            )
    mount = mount_of(folder.path, mounts_file)
    if mount and mount[1] in NETWORK_FILESYSTEMS and not folder.poll:
        findings.warnings.append(
            f"inbox {folder.path} is on a network filesystem ({mount[1]} at {mount[0]}) "
            "without poll: true; inotify sees no writes made by other machines there"
        )


def check_own_folders(inbox: Path, findings: Findings) -> None:
    """flowflexd's own folders in the inbox, where they exist, as the daemon would judge them.

    Root checking a service's inbox finds them the service user's: that is
    only a warning (a daemon run as root would refuse them), never advice to
    take them from the service.
    """
    home = layout.home(inbox)
    for path in (home, layout.work(inbox)):
        try:
            info = os.lstat(path)
        except OSError:
            return  # not there yet: the daemon creates them
        problem = not_ours(path, info, home)
        if problem is None:
            continue
        if os.geteuid() == 0 and stat.S_ISDIR(info.st_mode):
            owner = user_name(info.st_uid)
            findings.warnings.append(
                f"inbox {inbox}: {path} belongs to {owner}: flowflexd run as root would not "
                f"use this inbox; to check it as the user it belongs to: --as-user {owner}"
            )
        else:
            findings.errors.append(f"inbox {inbox}: {problem.message}; fix: {problem.hint}")
        return


def lease_warning(folder: Folder, why: str) -> str:
    settled = "such files are taken once settled alone"
    return f"inbox {folder.path}: {NO_LEASE} ({why}); {settled}: {NO_LEASE_FIX}"


def inotify_queue_size(queue_file: str = INOTIFY_QUEUE) -> int | None:
    """How many events inotify's queue holds on this machine; None where it cannot be read."""
    try:
        return int(Path(queue_file).read_text())
    except (OSError, ValueError):
        return None


def small_inotify_queue(queue_file: str = INOTIFY_QUEUE) -> str | None:
    """Why inotify's event queue on this machine is too small for bursts of files, or None."""
    size = inotify_queue_size(queue_file)
    if size is None or size >= SMALL_INOTIFY_QUEUE:
        return None  # unread here, an overflow still says so in the log, with the fix
    return (
        f"fs.inotify.max_queued_events is {size}: a burst of more than about {max(size // 3, 1)} "
        "files overflows the kernel's event queue, and each overflow costs a look at the "
        "whole folder, with a warning in the log once a minute (no file is lost). Run: sysctl -w "
        "fs.inotify.max_queued_events=16384, and persist it in /etc/sysctl.d/"
    )


def check(config: Config, mounts_file: str = MOUNTS, queue_file: str = INOTIFY_QUEUE) -> Findings:
    findings = Findings(warnings=list(config.warnings))
    queue = small_inotify_queue(queue_file)
    if queue is not None and not all(folder.poll for folder in config.folders):
        findings.warnings.append(queue)
    lookers = [Looker(folder.path, look_into) for folder in config.folders]
    for looker in lookers:
        looker.begin()  # a share that does not answer is waited on once, not once per inbox
    for folder, looker in zip(config.folders, lookers, strict=True):
        check_folder(folder, findings, mounts_file, looker=looker)
    if config.state_dir == SERVICE_STATE_DIR and not config.state_dir.exists():
        findings.notes.append(f"state_dir {config.state_dir}: the unit's StateDirectory creates it")
        return findings
    state = existing_ancestor(config.state_dir)
    if not os.access(state, os.W_OK | os.X_OK):
        findings.errors.append(f"state_dir {config.state_dir} is not writable by this user")
    return findings


def check_as(config: Config, user: str) -> Findings:
    """``check`` as ``user`` would see it: the service user, from a root shell.

    A child process takes on the user's uid, gid and groups and runs the
    folder checks; the configuration (and its secret) was read here, as root.
    The unit grants CAP_LEASE, so its absence in the child is not reported.
    """
    if os.geteuid() != 0:
        raise UserError(
            "--as-user needs root (it takes on another user's identity)",
            hint="run it with sudo, or drop --as-user to check as yourself",
        )
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise UserError(
            f"no user {user!r} on this machine", hint="create it first (README step 2)"
        ) from None
    # The child may not read the interpreter's own files (a home-installed
    # Python, as a service user): what it needs is loaded before the fork.
    for encoding in ("ascii", "utf-8"):
        codecs.lookup(encoding)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_end)
            os.initgroups(user, account.pw_gid)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            found = check(config)
            found.warnings = [w for w in found.warnings if "lacks CAP_LEASE" not in w]
            found.errors = [e.replace("by this user", f"by user {user}") for e in found.errors]
            with os.fdopen(write_end, "w") as out:
                json.dump(asdict(found), out)
            code = 0
        except BaseException as err:  # the child's trouble, said by the parent
            with contextlib.suppress(OSError):
                os.write(2, f"flowflexd: checking as {user!r} failed: {err!r}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        data = result.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        raise UserError(f"could not check as {user!r}", hint="run check as that user instead")
    found = json.loads(data)
    return Findings(found["errors"], found["warnings"], found["notes"])
