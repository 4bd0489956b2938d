"""A full disk, a read-only done folder, an inbox that vanishes, inotify limits."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    NotifySocket,
    RunningDaemon,
    SpoolRun,
    block_inbox,
    claim_dirs,
    drop,
    files_in,
    folder_spec,
    run_daemon,
    wait_until,
    write_config,
)

from flowflexd.commands.preflight import inotify_queue_size
from flowflexd.config.model import STATE_FILE, load
from flowflexd.emulator import Emulator
from flowflexd.engine.notify import Notifier
from flowflexd.inbox import mounts, runtime
from flowflexd.inbox.spool import GONE_REASON, Claim, Spool, Unreadable
from flowflexd.inbox.watcher import FolderWatcher

PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc"}


def spec(base: Path) -> dict[str, Any]:
    return folder_spec(base, [PDF])


@contextlib.contextmanager
def tmpfs(path: Path, *, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (made if missing), lazily unmounted at the end.

    With few ``inodes``, creating a file there fails with ENOSPC once they run out.
    """
    path.mkdir(exist_ok=True)
    options = "size=8m" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fstab_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty mount point that the daemon's fstab mounts a share at (not mounted yet)."""
    share = tmp_path / "share"
    share.mkdir()
    table = tmp_path / "fstab"
    table.write_text(f"tmpfs {share} tmpfs size=8m 0 0\n")
    monkeypatch.setattr(mounts, "FSTAB", str(table))
    return share


@contextlib.contextmanager
def reloadable(config: Path) -> Iterator[tuple[RunningDaemon, Callable[[], None]]]:
    """The daemon, reloading ``config`` as it is on disk, and a call that reloads it
    and returns once the reload is done (READY=1 on a real sd_notify socket, which is
    how systemd learns it)."""
    notify = NotifySocket(config.parent / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path)})
    try:
        with RunningDaemon(config, notifier=notifier, reload_config=lambda: load(config)) as run:
            notify.wait_for("READY=1")

            def reload() -> None:
                done = notify.fields().count("READY=1")
                run.daemon.request_reload()
                wait_until(lambda: notify.fields().count("READY=1") > done, what="the reload done")

            yield run, reload
    finally:
        notify.close()


def fill_inodes(folder: Path) -> list[Path]:
    fillers: list[Path] = []
    for i in range(100_000):
        try:
            path = folder / f".filler-{i}"
            path.touch()
        except OSError as err:
            assert err.errno == errno.ENOSPC
            return fillers
        fillers.append(path)
    raise AssertionError("the filesystem never filled up")


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """Make a folder refuse new names, even to root (chattr +i), else by permissions."""
    if os.geteuid() == 0:
        if not shutil.which("chattr"):
            pytest.skip("root needs chattr to make a folder read-only")
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not possible here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_a_full_disk_leaves_files_in_the_inbox_until_space_returns(
    tmp_path: Path, emulator: Emulator
) -> None:
    with tmpfs(tmp_path / "fs", inodes=40) as fs:
        config = write_config(
            tmp_path / "config.yaml", emulator, folders=[spec(fs)], rescan_seconds=0.5
        )
        with RunningDaemon(config) as running:
            drop(fs / "inbox", "a.pdf", b"%PDF a\n%%EOF")
            drop(fs / "inbox", "b.pdf", b"%PDF b\n%%EOF")
            fillers = fill_inodes(fs / "inbox")
            wait_until(lambda: running.daemon.snapshot.deferred >= 1)
            assert files_in(fs / "inbox") >= {"a.pdf", "b.pdf"}
            assert files_in(fs / "done") == set()
            for filler in fillers:
                filler.unlink()
            wait_until(lambda: files_in(fs / "done") == {"a.pdf", "b.pdf"}, timeout=30)
        assert (fs / "done" / "a.pdf").read_bytes() == b"%PDF a\n%%EOF"

    assert len(emulator.events()) == 2


def test_a_read_only_done_folder_keeps_files_claimed_until_it_is_writable(
    tmp_path: Path, emulator: Emulator
) -> None:
    (tmp_path / "done").mkdir()
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    with RunningDaemon(config) as running:
        with unwritable(tmp_path / "done"):
            drop(tmp_path / "inbox", "ro.pdf", b"%PDF ro\n%%EOF")
            wait_until(lambda: running.daemon.snapshot.deferred >= 2, timeout=30)
            [claim_dir] = claim_dirs(tmp_path / "inbox")
            assert (claim_dir / "ro.pdf").read_bytes() == b"%PDF ro\n%%EOF"
            assert files_in(tmp_path / "failed") == set()
        wait_until(lambda: "ro.pdf" in files_in(tmp_path / "done"), timeout=30)

    # The event went out once; the retries only moved the file.
    assert len(emulator.events()) == 1
    assert emulator.stats()["event_replays"] == 0


def test_an_inbox_that_vanishes_comes_back_by_itself(tmp_path: Path, emulator: Emulator) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        folders=[spec(one), spec(two)],
        rescan_seconds=0.5,
    )
    with RunningDaemon(config) as running:
        os.rename(one / "inbox", tmp_path / "unmounted")
        wait_until(lambda: running.daemon.snapshot.offline == (str(one / "inbox"),))
        # The other folder keeps running meanwhile.
        drop(two / "inbox", "still.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "still.pdf" in files_in(two / "done"))
        drop(tmp_path / "unmounted", "while-away.pdf", b"%PDF away\n%%EOF")
        os.rename(tmp_path / "unmounted", one / "inbox")
        wait_until(lambda: running.daemon.snapshot.offline == (), timeout=20)
        drop(one / "inbox", "after.pdf", b"%PDF after\n%%EOF")
        wait_until(lambda: files_in(one / "done") == {"while-away.pdf", "after.pdf"}, timeout=20)

    assert len(emulator.events()) == 3


def test_a_reload_while_an_inbox_is_away_does_not_make_an_empty_one_in_its_place(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share unmounted when the operator reloads a changed setting: its path stays
    missing, the inbox stays away in status, and it resumes when the share is back."""
    monkeypatch.setattr(runtime, "OFFLINE_CHECK_SECONDS", 0.2)
    config = tmp_path / "config.yaml"
    write_config(config, emulator, folders=[spec(tmp_path)], rescan_seconds=0.5)
    inbox, away = tmp_path / "inbox", tmp_path / "unmounted"
    with reloadable(config) as (running, reload):
        os.rename(inbox, away)
        wait_until(lambda: running.daemon.snapshot.offline == (str(inbox),))
        drop(away, "while-away.pdf", b"%PDF away\n%%EOF")
        # A changed setting the inbox takes: it is reconfigured while away.
        write_config(config, emulator, folders=[spec(tmp_path)], rescan_seconds=0.4)
        reload()
        assert running.daemon.config.rescan_seconds == 0.4
        assert not inbox.exists()
        # Looked at again after the reload: still not there, so still away.
        checked = running.daemon.inboxes[0].next_rescan
        wait_until(lambda: running.daemon.inboxes[0].next_rescan > checked, what="a look")
        assert not inbox.exists()
        assert running.daemon.snapshot.offline == (str(inbox),)
        os.rename(away, inbox)
        wait_until(lambda: files_in(tmp_path / "done") == {"while-away.pdf"}, timeout=20)

    assert len(emulator.events()) == 1


@pytest.mark.parametrize("where", ["below the mount point", "at the mount point"])
def test_an_inbox_on_a_share_that_did_not_mount_waits_for_it_and_makes_nothing(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The NAS was down at boot: fstab's share is not mounted when the daemon starts.
    Nothing is made on the bare mount point (the machine's own disk); the inbox is
    away, saying which share; once the share is mounted it is taken up."""
    monkeypatch.setattr(runtime, "OFFLINE_CHECK_SECONDS", 0.2)
    share = fstab_share(tmp_path, monkeypatch)
    inbox = share / "inbox" if where == "below the mount point" else share
    folder = {**spec(share), "path": str(inbox)}
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder])
    with contextlib.ExitStack() as mounted:
        with RunningDaemon(config) as running:
            wait_until(lambda: running.daemon.snapshot.offline == (str(inbox),), what="away")
            assert list(share.iterdir()) == []
            trouble = running.daemon.inboxes[0].trouble
            assert trouble is not None
            assert f"its share {share} is not mounted" in trouble.reason
            assert trouble.hint is not None and f"mount {share}" in trouble.hint
            mounted.enter_context(tmpfs(share))
            wait_until(lambda: running.daemon.snapshot.offline == (), timeout=10)
            drop(inbox, "came.pdf", b"%PDF came\n%%EOF")
            wait_until(lambda: files_in(share / "done") == {"came.pdf"}, timeout=20)
        assert os.stat(share / "done").st_dev == os.stat(share).st_dev
        assert os.stat(share).st_dev != os.stat(tmp_path).st_dev  # on the share
    assert list(share.iterdir()) == []  # and still nothing on the bare mount point
    assert len(emulator.events()) == 1


def test_a_reload_just_after_the_share_went_makes_nothing_on_the_bare_mount_point(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inbox is the mount point itself: unmounted under a running daemon, its path
    is still there (the bare point), and a reload before the next look must not make
    done, failed or a work area there."""
    share = fstab_share(tmp_path, monkeypatch)
    config = tmp_path / "config.yaml"
    folder = {**spec(share), "path": str(share)}
    write_config(config, emulator, folders=[folder], rescan_seconds=600)  # no look meanwhile
    with tmpfs(share), reloadable(config) as (run, reload):
        assert (share / "done").is_dir()  # made on the share at start
        subprocess.run(["umount", "-l", str(share)], check=True)
        write_config(config, emulator, folders=[folder], rescan_seconds=500)
        reload()
        assert list(share.iterdir()) == []
        trouble = run.daemon.inboxes[0].trouble
        assert trouble is not None and f"its share {share} is not mounted" in trouble.reason


def test_an_inbox_that_could_not_be_made_at_start_is_made_once_it_can_be(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Create it, or give flowflexd's user write access to its parent": the second
    fix works too, without a restart."""
    monkeypatch.setattr(runtime, "OFFLINE_CHECK_SECONDS", 0.2)
    parent = tmp_path / "drop"
    parent.write_text("not a folder yet")  # no mkdir below a file, even for root
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(parent)])
    with RunningDaemon(config) as running:
        wait_until(lambda: running.daemon.snapshot.offline == (str(parent / "inbox"),), what="away")
        trouble = running.daemon.inboxes[0].trouble
        assert trouble is not None and "cannot create" in trouble.reason
        parent.unlink()
        parent.mkdir(exist_ok=True)  # a look in between may make it first: that is the fix too
        wait_until(lambda: running.daemon.snapshot.offline == (), timeout=10)
        drop(parent / "inbox", "made.pdf", b"%PDF made\n%%EOF")
        wait_until(lambda: files_in(parent / "done") == {"made.pdf"}, timeout=20)


def test_an_inbox_that_cannot_be_looked_at_is_named_for_its_error_not_called_gone(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only "not there" is gone: any other error on the inbox (here a symlink loop; on a
    share, an I/O error or a stale handle) is said as it is, and kept for status."""
    monkeypatch.setattr(runtime, "OFFLINE_CHECK_SECONDS", 0.2)
    inbox, away = tmp_path / "inbox", tmp_path / "set-aside"
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)], rescan_seconds=0.2
    )
    with RunningDaemon(config) as running:
        os.rename(inbox, away)
        inbox.symlink_to(inbox)  # ELOOP on every look (a look between the two: gone)
        loop = f"cannot take up {inbox}: Too many levels of symbolic links"

        def reason() -> str:
            trouble = running.daemon.inboxes[0].trouble
            return trouble.reason if trouble is not None else ""

        wait_until(lambda: reason().startswith(loop), what="the loop named")
        inbox.unlink()
        away.rename(inbox)
        drop(inbox, "after.pdf", b"%PDF after\n%%EOF")
        wait_until(lambda: files_in(tmp_path / "done") == {"after.pdf"}, timeout=20)


def test_an_inbox_replaced_by_another_folder_is_watched_again(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)], rescan_seconds=0.5
    )
    with RunningDaemon(config):
        replacement = tmp_path / "replacement"
        replacement.mkdir()
        drop(replacement, "came-with-it.pdf", b"%PDF\n%%EOF")
        os.rename(tmp_path / "inbox", tmp_path / "old-inbox")
        os.rename(replacement, tmp_path / "inbox")
        wait_until(lambda: "came-with-it.pdf" in files_in(tmp_path / "done"), timeout=20)
        drop(tmp_path / "inbox", "later.pdf", b"%PDF later\n%%EOF")  # the new folder's events
        wait_until(lambda: "later.pdf" in files_in(tmp_path / "done"), timeout=20)


def test_an_inbox_that_goes_just_before_its_watch_is_away_not_a_crash(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share unmounting between the daemon's look at an inbox and its watch."""
    inbox, away = tmp_path / "inbox", tmp_path / "unmounted"
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    real = FolderWatcher.start
    gone: list[bool] = []

    def start(watcher: FolderWatcher, hint: Callable[[str | None], None]) -> str:
        if not gone:
            gone.append(True)
            os.rename(inbox, away)
        return real(watcher, hint)

    monkeypatch.setattr(FolderWatcher, "start", start)
    with RunningDaemon(config) as running:
        wait_until(lambda: running.daemon.snapshot.offline == (str(inbox),))
        drop(away, "while-away.pdf", b"%PDF away\n%%EOF")
        os.rename(away, inbox)
        wait_until(lambda: "while-away.pdf" in files_in(tmp_path / "done"), timeout=20)
        assert running.daemon.snapshot.offline == ()

    assert len(emulator.events()) == 1


def test_an_inbox_that_goes_again_as_it_is_taken_up_is_not_made_anew(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share that unmounts again between the look that found it back and its take-up."""
    monkeypatch.setattr(runtime, "OFFLINE_CHECK_SECONDS", 0.2)
    inbox, away = tmp_path / "inbox", tmp_path / "unmounted"
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    real = Spool.prepare
    flap: list[bool] = []

    def prepare(spool: Spool, **how: bool) -> None:
        if flap and flap.pop():
            os.rename(inbox, away)
        real(spool, **how)

    monkeypatch.setattr(Spool, "prepare", prepare)
    with RunningDaemon(config) as running:
        os.rename(inbox, away)
        wait_until(lambda: running.daemon.snapshot.offline == (str(inbox),))
        drop(away, "while-away.pdf", b"%PDF away\n%%EOF")
        flap.append(True)
        os.rename(away, inbox)
        wait_until(lambda: not flap, what="the take-up")
        checked = running.daemon.inboxes[0].next_rescan
        wait_until(
            lambda: running.daemon.inboxes[0].next_rescan > checked or inbox.exists(),
            what="a look",
        )
        assert not inbox.exists()
        assert running.daemon.snapshot.offline == (str(inbox),)
        os.rename(away, inbox)
        wait_until(lambda: "while-away.pdf" in files_in(tmp_path / "done"), timeout=20)

    assert len(emulator.events()) == 1


def test_an_inbox_that_goes_while_its_claims_are_listed_loses_none_of_them(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims an earlier run left are found again when the inbox is back, none set aside
    as unreadable because the share flapped while they were listed."""
    run = SpoolRun(tmp_path, emulator)
    left = [run.claim("first.pdf"), run.claim("second.pdf")]
    run.spool.unlock()
    inbox, away = run.layout.inbox, tmp_path / "unmounted"
    real = Spool.pending
    gone: list[bool] = []

    def pending(spool: Spool) -> Iterator[Claim | Unreadable]:
        first = not gone
        for item in real(spool):
            yield item
            if first and not gone:
                gone.append(True)
                os.rename(inbox, away)  # after the first claim, before the second
        if first:
            os.rename(away, inbox)  # back at once: only a listing that noticed knows it went

    monkeypatch.setattr(Spool, "pending", pending)
    with RunningDaemon(tmp_path / "config.yaml") as running:
        # The listing noticed: the inbox is away (its claims with it), not its claims lost.
        wait_until(lambda: running.daemon.snapshot.offline == (str(inbox),))
        os.rename(away, inbox)
        wait_until(lambda: files_in(run.layout.done) == {"first.pdf", "second.pdf"}, timeout=20)
        wait_until(lambda: claim_dirs(inbox) == [])

    assert files_in(run.layout.failed) == set()
    keys = sorted(e["idempotency_key"] for e in emulator.events())
    assert keys == sorted(c.key for c in left)
    assert emulator.stats()["event_replays"] == 0


def test_an_inbox_is_said_back_only_once_it_is_taken_up(
    tmp_path: Path,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A share that comes back and goes again while it is taken up (still remounting)
    is not said to be back until it is, and the same trouble twice is said once."""
    monkeypatch.setattr(runtime, "OFFLINE_CHECK_SECONDS", 0.2)
    inbox, away = tmp_path / "inbox", tmp_path / "unmounted"
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)], rescan_seconds=0.2
    )
    real = Spool.pending
    flaps: list[int] = []  # take-ups still to go wrong

    def pending(spool: Spool) -> Iterator[Claim | Unreadable]:
        if flaps:
            flaps.pop()
            os.rename(inbox, away)  # gone again while it is taken up
            try:
                yield from real(spool)
            finally:
                os.rename(away, inbox)  # and there again at the next look
            return
        yield from real(spool)

    monkeypatch.setattr(Spool, "pending", pending)
    with RunningDaemon(config) as running:
        os.rename(inbox, away)
        wait_until(lambda: running.daemon.snapshot.offline == (str(inbox),))
        flaps.extend([1, 1])
        os.rename(away, inbox)
        wait_until(lambda: not flaps and running.daemon.snapshot.offline == (), timeout=20)
        drop(inbox, "after.pdf", b"%PDF after\n%%EOF")
        wait_until(lambda: files_in(tmp_path / "done") == {"after.pdf"}, timeout=20)

    said = [
        message
        for line in capsys.readouterr().out.splitlines()
        for message in ("inbox is gone", "inbox unavailable", "inbox is back")
        if message in line
    ]
    assert said == ["inbox is gone", "inbox unavailable", "inbox is back"]


def test_what_status_is_told_is_the_inbox_trouble_of_the_moment(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, gone, refused, gone again: the daemon's record for ``flowflexd status``
    names the trouble of the moment each time, not the first one of its kind."""
    monkeypatch.setattr(runtime, "OFFLINE_CHECK_SECONDS", 0.2)
    inbox, away = block_inbox(tmp_path), tmp_path / "unmounted"
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)], rescan_seconds=0.2
    )
    record = tmp_path / "state" / STATE_FILE

    def reason() -> str:
        try:
            away_now = json.loads(record.read_text()).get("unavailable", {})
        except (OSError, ValueError):
            return ""
        return str(away_now.get(str(inbox), {}).get("reason", ""))

    with RunningDaemon(config):
        wait_until(lambda: "is not a folder" in reason(), what="refused")
        for _ in range(2):
            os.rename(inbox, away)
            wait_until(lambda: reason() == GONE_REASON, what="gone")
            os.rename(away, inbox)
            wait_until(lambda: "is not a folder" in reason(), what="refused again")


def falls_back_to_polling(
    tmp_path: Path,
    emulator: Emulator,
    use_up: Callable[[list[int]], None],
    *,
    below: str = "",
    **folder: Any,
) -> dict[str, Any]:
    """Start the daemon while ``use_up`` holds inotify descriptors (it appends
    them to the list); check it polls and delivers (into ``below``, a subfolder)
    once they are released, and return its log line about the limit."""
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[{**spec(tmp_path), **folder}]
    )
    taken: list[int] = []
    proc = None
    try:
        use_up(taken)
        proc = run_daemon(config)
        line = proc.wait_for_log("inotify limit reached; this folder falls back to polling")
        proc.wait_for_log("watching", mode="polling (inotify limit)")
        for fd in taken:
            os.close(fd)
        taken.clear()
        where = tmp_path / "inbox" / below
        where.mkdir(parents=True, exist_ok=True)
        drop(where, "polled.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "polled.pdf" in files_in(tmp_path / "done"), timeout=20)
        proc.proc.terminate()
        assert proc.wait_exit() == 0
    finally:
        for fd in taken:
            os.close(fd)
        if proc is not None:
            proc.stop()
    return line


def watch_hog(tmp_path: Path) -> Callable[[list[int]], None]:
    """Something that uses up every inotify watch this user may have."""
    limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    libc = ctypes.CDLL(None, use_errno=True)
    # Watches count per user: a few instances each watching the same files
    # use them all up while leaving instances for the daemon.
    targets = tmp_path / "targets"
    targets.mkdir()
    instances = 64
    per_instance = limit // instances + 1
    for i in range(per_instance):
        (targets / str(i)).touch()

    def use_up(taken: list[int]) -> None:
        for _ in range(instances):
            fd = libc.inotify_init1(os.O_CLOEXEC)
            assert fd >= 0, os.strerror(ctypes.get_errno())
            taken.append(fd)
            for i in range(per_instance):
                if libc.inotify_add_watch(fd, str(targets / str(i)).encode(), 0x2) < 0:
                    assert ctypes.get_errno() == errno.ENOSPC
                    break

    return use_up


@pytest.mark.alone
def test_the_inotify_watch_limit_falls_back_to_polling(tmp_path: Path, emulator: Emulator) -> None:
    line = falls_back_to_polling(tmp_path, emulator, watch_hog(tmp_path))

    assert "fs.inotify.max_user_watches" in line["fix"]


@pytest.mark.alone
def test_a_tree_over_the_watch_limit_falls_back_to_polling_it_whole(
    tmp_path: Path, emulator: Emulator
) -> None:
    for i in range(20):  # a watch per folder, more than are left
        (tmp_path / "inbox" / f"user-{i}").mkdir(parents=True)
    line = falls_back_to_polling(
        tmp_path, emulator, watch_hog(tmp_path), below="user-7", recursive=True
    )

    assert "fs.inotify.max_user_watches" in line["fix"]


@pytest.mark.alone
def test_a_tree_that_outgrows_the_watch_limit_says_so_and_polls(
    tmp_path: Path, emulator: Emulator
) -> None:
    (tmp_path / "inbox" / "alice").mkdir(parents=True)
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[{**spec(tmp_path), "recursive": True}]
    )
    use_up = watch_hog(tmp_path)
    taken: list[int] = []
    proc = run_daemon(config)
    try:
        proc.wait_for_log("watching", mode="inotify")
        use_up(taken)
        (tmp_path / "inbox" / "bob").mkdir()  # no watch left for it
        line = proc.wait_for_log(
            "inotify limit reached for a new subfolder; this folder's watch starts again"
        )
        assert "fs.inotify.max_user_watches" in line["fix"]
        proc.wait_for_log("this folder's watch stopped; watching it again")
        proc.wait_for_log("watching", mode="polling (inotify limit)")
        for fd in taken:
            os.close(fd)
        taken.clear()
        drop(tmp_path / "inbox" / "bob", "grown.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "grown.pdf" in files_in(tmp_path / "done"), timeout=20)
        assert not any("inbox is back" in line for line in proc.snapshot())
        proc.proc.terminate()
        assert proc.wait_exit() == 0
    finally:
        for fd in taken:
            os.close(fd)
        proc.stop()


@pytest.mark.alone
def test_the_inotify_instance_limit_falls_back_to_polling(
    tmp_path: Path, emulator: Emulator
) -> None:
    libc = ctypes.CDLL(None, use_errno=True)

    def use_up(taken: list[int]) -> None:
        while len(taken) < 100_000:
            fd = libc.inotify_init1(os.O_CLOEXEC)
            if fd < 0:
                break
            taken.append(fd)

    line = falls_back_to_polling(tmp_path, emulator, use_up)

    assert "fs.inotify.max_user_instances" in line["fix"]


def fill_inotify_queue(folder: Path) -> None:
    """Queue more events on ``folder`` than the kernel keeps, with a dotfile renamed to and fro.

    Each rename is two events with their own cookie, which the kernel never
    merges; a dotfile is a name the daemon never takes. Nothing global is
    changed: a test that lowered fs.inotify.max_queued_events and was killed
    before putting it back would leave every later inotify user on the
    machine losing events.
    """
    size = inotify_queue_size()
    assert size is not None, "fs.inotify.max_queued_events cannot be read"
    if size > 200_000:
        pytest.skip(f"fs.inotify.max_queued_events is {size}: too many events to fill quickly")
    a, b = folder / ".churn-a", folder / ".churn-b"
    a.touch()
    for _ in range(size // 4 + 100):  # two renames, four events, each time round
        os.rename(a, b)
        os.rename(b, a)


def test_events_lost_to_a_full_inotify_queue_are_caught_up_at_once(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Files whose events the kernel dropped, its queue being full, are sent at once.

    The daemon is stopped (SIGSTOP) while the queue is filled and the files
    are written, so their events are lost whatever the machine's speed; when
    it runs again it reads the overflow and looks at the whole folder, not at
    the next periodic rescan an hour later. It happens twice: both times the
    folder is looked at, and the warning is said once, not once per overflow
    (nor again by watchdog).
    """
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)], rescan_seconds=3600
    )
    proc = run_daemon(config)
    try:
        proc.wait_for_log("watching", mode="inotify")
        sent: set[str] = set()
        for burst in range(2):
            names = {f"burst{burst}-{i:03}.pdf" for i in range(30)}
            with proc.held_still():
                fill_inotify_queue(tmp_path / "inbox")
                for name in sorted(names):
                    drop(tmp_path / "inbox", name, b"%PDF\n%%EOF")
            sent.update(names)
            wait_until(lambda: sent <= files_in(tmp_path / "done"), timeout=60)
        said = [
            r
            for r in proc.json_lines()
            if "overflow" in r.get("event", "").lower() and r.get("level") == "warning"
        ]
        assert [(r["event"], r.get("overflows")) for r in said] == [
            ("inotify's queue overflowed, events were lost; looking at the whole folder", 1)
        ]
        assert said[0]["folder"] == str(tmp_path / "inbox")
        assert ".churn-a" in files_in(tmp_path / "inbox")  # never taken
        proc.proc.terminate()
        assert proc.wait_exit() == 0
    finally:
        proc.stop()


def test_retention_leaves_an_inbox_that_is_away_for_its_next_pass(
    tmp_path: Path, emulator: Emulator
) -> None:
    """An inbox away may be on a share whose server is down: the daily pass goes past it.

    Here it is away for a plainer reason (a file stands where it should be), so
    that its done folder can be seen to keep what the pass would have deleted.
    The inbox beside it is swept in the same pass, which shows the pass ran.
    """
    keep = {"keep_done_days": 0.00002}  # about 2 s
    away = {**folder_spec(tmp_path / "b", [PDF]), **keep}
    here = {**folder_spec(tmp_path / "a", [PDF]), **keep}
    # The inbox away comes first: once the other is swept, the pass has been past it.
    config = write_config(tmp_path / "config.yaml", emulator, folders=[away, here])
    with RunningDaemon(config):
        drop(tmp_path / "b" / "inbox", "b.pdf", b"%PDF b\n%%EOF")
        drop(tmp_path / "a" / "inbox", "a.pdf", b"%PDF a\n%%EOF")
        wait_until(lambda: files_in(tmp_path / "b" / "done") == {"b.pdf"}, timeout=20)
        wait_until(lambda: files_in(tmp_path / "a" / "done") == {"a.pdf"}, timeout=20)
    wait_until(lambda: time.time() - (tmp_path / "state" / "journal.jsonl").stat().st_mtime > 2)
    (tmp_path / "b" / "inbox").rename(tmp_path / "b" / "inbox-moved")
    (tmp_path / "b" / "inbox").write_text("not a folder")

    with RunningDaemon(config) as running:  # its first tick is a retention pass
        wait_until(lambda: files_in(tmp_path / "a" / "done") == set(), what="a's done swept")
        wait_until(lambda: running.daemon.snapshot.offline == (str(tmp_path / "b" / "inbox"),))
        assert files_in(tmp_path / "b" / "done") == {"b.pdf"}
