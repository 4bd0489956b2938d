"""A share whose server stops answering holds its own folder alone; flowflexd says so, and goes on.

sshfs over OpenSSH's own sftp-server is a real network file system (sshfs
starts the server itself as its "ssh" command, so no sshd and no keys are
needed). SIGSTOP on that server is a server that stops answering: every call
into the mount waits, as on a hard-mounted NFS share whose server is gone.
An inbox on such a mount has a thread of its own by default (``own_thread:
auto``); with ``own_thread: never`` the main loop is held, and says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support import (
    PDF_END,
    LoggedProcess,
    NotifySocket,
    child_env,
    drop,
    files_in,
    flowflexd_argv,
    folder_spec,
    need,
    pdf,
    run_daemon,
    status_json,
    wait_until,
    write_config,
)

from field.conftest import Site
from flowflexd.emulator import Emulator

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
RULES = [{"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}]
SILENT = "inbox does not answer; other folders keep running, this one resumes when it does"
HELD = "the main loop has waited on a file system call; every folder waits with it"
STANDBY_SILENT = "standby: inbox does not answer; not waited for, it is taken up once it answers"
STANDBY_HELD = "standby: another flowflexd holds this inbox; waiting to take over when it stops"
HELD_BACK = "files of an inbox whose share does not answer wait; other folders keep every worker"
KEPT = {
    "cannot finish this file now; it stays claimed and is retried",
    "cannot make finished files durable; their claims stay in the work area and this is "
    "tried again",
}


class Share:
    """A folder mounted over sshfs, and the sftp-server process behind the mount."""

    def __init__(self, home: Path) -> None:
        need("sshfs", SFTP_SERVER, "/dev/fuse")
        home.mkdir()
        self.home = home
        self.served, self.mount = home / "served", home / "mnt"
        self.served.mkdir()
        self.mount.mkdir()
        self.server = 0
        self.device = 0
        self._mounts = 0

    def mount_it(self) -> None:
        self._mounts += 1
        pidfile = self.home / f"sftp-server-{self._mounts}.pid"
        command = self.home / f"sftp-server-{self._mounts}.sh"
        command.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec {SFTP_SERVER}\n")
        command.chmod(0o755)
        # No directory cache: every look goes to the server, as on NFS with noac.
        subprocess.run(
            [
                "sshfs",
                "-o",
                f"ssh_command={command},dir_cache=no",
                f"share:{self.served}",
                str(self.mount),
            ],
            check=True,
            timeout=30,
        )
        self.server = int(wait_until(lambda: _read(pidfile), what="the sftp-server's pid"))
        self.device = os.stat(self.mount).st_dev  # while it answers

    def stop_answering(self) -> None:
        os.kill(self.server, signal.SIGSTOP)

    def answer(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.server, signal.SIGCONT)

    def force_off(self) -> None:
        """What an operator does to go on without the share: abort its FUSE connection."""
        connections = Path("/sys/fs/fuse/connections")
        if not any(connections.iterdir()):
            # Not checked: another test may have mounted it meanwhile; the write below says.
            subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], check=False)
        (connections / str(os.minor(self.device)) / "abort").write_text("1")

    def unmount(self) -> None:
        self.answer()
        if subprocess.run(["umount", str(self.mount)], check=False).returncode:
            # Still open in the daemon (a lock on the dead share): detach it anyway.
            subprocess.run(["umount", "-l", str(self.mount)], check=False)


@contextlib.contextmanager
def sshfs_share(home: Path) -> Iterator[Share]:
    share = Share(home)
    share.mount_it()
    try:
        yield share
    finally:
        share.unmount()


def beside_local(
    site: Site, emulator: Emulator, share: Path, *, share_first: bool = False, **top: Any
) -> Path:
    """A configuration of the site's local inbox and ``share`` (polled), looked at each second.

    ``own_thread`` among ``top`` goes to the share's folder.
    """
    shared = {"path": str(share), "poll": True, "rules": RULES}
    if "own_thread" in top:
        shared["own_thread"] = top.pop("own_thread")
    folders = [folder_spec(site.root, RULES), shared]
    return write_config(
        site.root / "config.yaml",
        emulator,
        folders=folders[::-1] if share_first else folders,
        rescan_seconds=1,
        **top,
    )


@pytest.mark.parametrize("ending", ["the server answers", "the share is forced off"])
def test_a_share_that_holds_the_main_loop_is_named_and_every_folder_goes_on_after(
    site: Site, emulator: Emulator, ending: str
) -> None:
    """With ``own_thread: never`` the main loop itself waits in the share, and says so."""
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        config = beside_local(site, emulator, share, own_thread="never")
        notify = NotifySocket(site.root / "notify")
        # systemd's WatchdogSec=2s: a WATCHDOG=1 at least every second.
        proc = run_daemon(config, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")
        growing: Growing | None = None
        try:
            notify.wait_for("READY=1")
            drop(share, "before.pdf", pdf(b"before"))
            wait_until(lambda: "before.pdf" in files_in(share / "done"), timeout=30)
            # A file still being written: the loop looks at it itself at each settle step,
            # and that look into the share is the one a silent server holds.
            growing = Growing(share / "growing.pdf")
            notify.wait_for("STATUS=waiting 1,")

            mounted.stop_answering()
            held = proc.wait_for_log(
                HELD,
                timeout=60,
            )
            # Where it waits depends on what the loop did then: a look at the inbox,
            # or a commit into its done folder. Either is a folder on the share.
            assert held["folder"].startswith(str(share)), held
            assert held["waited_s"] >= 10
            assert " (flowflexd/" in held["at"], held
            assert "bring back the share" in held["fix"]
            assert held["watchdog"] == "fed while the loop is held by the share"
            said = notify.wait_for(f"STATUS=waiting on a file system call in {held['folder']}")
            # Fed while held, twice: a restart would only wait at the same folder.
            first = notify.wait_for("WATCHDOG=1", after=said + 1)
            notify.wait_for("WATCHDOG=1", after=first + 1)
            assert all(r["event"] != "the main loop runs again" for r in proc.json_lines())

            # status answers, and does not look at the share: that would wait too.
            shown = _status_text(config)
            rows = {r["path"]: r for r in status_json(config)}
            assert rows[str(share)]["held_by"] == proc.proc.pid
            assert rows[str(share)]["held_at"] == held["folder"]
            assert rows[str(site.inbox)]["held_by"] is None
            assert rows[str(site.inbox)]["daemon_pid"] == proc.proc.pid
            assert f"{share}  (NOT ANSWERING)" in shown
            assert f"has waited on {held['folder']} since" in shown

            drop(site.inbox, "meanwhile.pdf", pdf(b"meanwhile"))
            if ending == "the server answers":
                mounted.answer()
            else:
                mounted.force_off()
            again = proc.wait_for_log("the main loop runs again", timeout=30)
            assert again["waited_s"] >= held["waited_s"]
            wait_until(lambda: "meanwhile.pdf" in files_in(site.done), timeout=30)
            if ending == "the server answers":
                growing.finish()
                drop(share, "after.pdf", pdf(b"after"))
                wait_until(lambda: {"growing.pdf", "after.pdf"} <= files_in(share / "done"))
            else:
                assert wait_until(lambda: str(share) in _offline(proc), timeout=30)
            sent = sorted(e["payload"]["assetId"] for e in emulator.events())
            assert len(sent) == len(set(sent)) == (4 if ending == "the server answers" else 2)
        finally:
            mounted.answer()
            if growing is not None:
                growing.abandon()
            _stop(proc)
            notify.close()


@pytest.mark.parametrize("ending", ["the server answers", "the share is forced off"])
def test_a_busy_share_that_stops_answering_holds_its_own_folder_alone(
    site: Site, emulator: Emulator, ending: str
) -> None:
    """Its thread and two workers wait in the share; the local inbox keeps both its workers.

    A file still being written there is looked at by the share's own thread
    at each settle step, and the workers are reading two big files from it
    when its server stops. The local inbox's files go meanwhile, on threads
    the pool is lent for the two held ones, and the main loop never waits.
    """
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        config = beside_local(site, emulator, share, workers=2)
        emulator.set_faults(latency_ms=1000)  # the workers are inside their uploads at the stop
        proc = run_daemon(config)
        growing: Growing | None = None
        try:
            proc.wait_for_log("flowflexd ready", timeout=30)
            big = {f"big-{n}.pdf": pdf(os.urandom(4 << 20)) for n in range(3)}
            for name, data in big.items():
                drop(share, name, data)
            growing = Growing(share / "growing.pdf")
            wait_until(lambda: emulator.stats()["requests_by_path"].get("/_storage"), timeout=30)

            mounted.stop_answering()
            silent = proc.wait_for_log(SILENT, timeout=60, folder=str(share))
            assert "does not answer" in silent["error"], silent
            assert "force it off" in silent["hint"] or "force the share off" in silent["hint"]
            back = proc.wait_for_log(HELD_BACK, timeout=30, folder=str(share))
            assert back["workers_waiting_there"] == 2, back
            assert back["held_back"] == 1, back  # the third big file waits off the workers

            emulator.set_faults(latency_ms=0)
            for n in range(4):
                drop(site.inbox, f"local-{n}.pdf", pdf(b"local %d" % n))
            wait_until(lambda: len(files_in(site.done)) == 4, timeout=30)
            shown = _status_text(config)
            assert f"{share}  (NOT ANSWERING)" in shown

            if ending == "the server answers":
                mounted.answer()
                growing.finish()
                wanted = {*big, "growing.pdf"}
            else:
                mounted.force_off()
                assert wait_until(lambda: str(share) in _offline(proc), timeout=30)
                drop(site.inbox, "after.pdf", pdf(b"after"))
                wait_until(lambda: "after.pdf" in files_in(site.done), timeout=30)
                growing.abandon()
                mounted.unmount()
                mounted.mount_it()
                (share / "growing.pdf").unlink()  # cut short by the abort: never whole
                wanted = set(big)
            wait_until(lambda: wanted <= files_in(share / "done"), timeout=90)
            for name, data in big.items():
                assert (share / "done" / name).read_bytes() == data
            assert not files_in(share / "failed")
            sent = sorted(e["payload"]["assetId"] for e in emulator.events())
            assert len(sent) == len(set(sent)) == len(wanted) + len(files_in(site.done))
            assert not [r for r in proc.json_lines() if r["event"].startswith("the main loop")]
        finally:
            mounted.answer()
            if growing is not None:
                growing.abandon()
            _stop(proc)


def test_a_stop_does_not_wait_for_files_held_in_a_share_that_does_not_answer(
    site: Site, emulator: Emulator
) -> None:
    """Their workers cannot finish before it answers: the stop leaves their claims, at once.

    The grace period (60 s here) is for files that can finish. After the
    stop, and a start once the share answers, each file ends in done once.
    """
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        config = beside_local(site, emulator, share, workers=2, shutdown_grace_seconds=60)
        emulator.set_faults(latency_ms=1000)
        proc = run_daemon(config)
        try:
            proc.wait_for_log("flowflexd ready", timeout=30)
            big = {f"big-{n}.pdf": pdf(os.urandom(4 << 20)) for n in range(2)}
            for name, data in big.items():
                drop(share, name, data)
            wait_until(lambda: emulator.stats()["requests_by_path"].get("/_storage"), timeout=30)
            mounted.stop_answering()
            proc.wait_for_log(HELD_BACK, timeout=60, folder=str(share))

            asked = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            left = proc.wait_for_log(
                "files wait in a share that does not answer; they stay claimed there and "
                "resume at the next start",
                timeout=30,
            )
            assert left["in_flight"] == 2, left
            proc.wait_for_log("flowflexd stopped", timeout=30)
            assert time.monotonic() - asked < 20  # not the 60 s grace
            # Its last calls there (closing its lock file, FUSE's flush) end with the share's.
            mounted.answer()
            assert proc.wait_exit(timeout=60) == 0, proc.output()
        finally:
            mounted.answer()
            if proc.proc.poll() is None:
                _stop(proc)
        emulator.set_faults(latency_ms=0)

        again = run_daemon(config)
        try:
            wait_until(lambda: set(big) <= files_in(share / "done"), timeout=60)
            for name, data in big.items():
                assert (share / "done" / name).read_bytes() == data
            assert len(emulator.events()) == 2, emulator.events()
        finally:
            _stop(again)


class Growing:
    """A PDF written a little at a time into the share until ``finish``, as a slow copy.

    Written by a process of its own: a thread of the test's would hold the
    test's process with the share (a fork waits on it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"%PDF-1.7\n")
        self._writer = subprocess.Popen(
            ["sh", "-c", 'while :; do echo more; sleep 0.05; done >> "$0"', str(path)]
        )

    def finish(self) -> None:
        self.abandon()
        with self.path.open("ab") as fh:
            fh.write(PDF_END)

    def abandon(self) -> None:
        self._writer.kill()  # a wait in a FUSE share ends for SIGKILL
        self._writer.wait(timeout=30)


@pytest.mark.parametrize("moment", ["while its bytes go up", "after its event was sent"])
def test_a_file_in_flight_when_its_share_is_forced_off_is_sent_once_when_it_is_back(
    site: Site, emulator: Emulator, moment: str
) -> None:
    """A worker waits in the share with the file; the operator forces the share off, then mounts it.

    The claim lives in the share's own work area, so it is gone with the share
    and found again with it: the file is then carried on under its key, never
    set aside as failed, and FlowFlex gets its event once.
    """
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        config = write_config(
            site.root / "config.yaml",
            emulator,
            folders=[{"path": str(share), "poll": True, "rules": RULES}],
            rescan_seconds=1,
        )
        # Each answer a second away: the worker is inside the call when the share stops.
        emulator.set_faults(latency_ms=1000)
        proc = run_daemon(config)
        try:
            proc.wait_for_log("watching", timeout=30)
            data = pdf(os.urandom(4 << 20))
            drop(share, "big.pdf", data)
            if moment == "while its bytes go up":
                wait_until(
                    lambda: emulator.stats()["requests_by_path"].get("/_storage"), timeout=30
                )
            else:
                wait_until(emulator.events, timeout=30)
            mounted.stop_answering()
            # The worker waits in the share. The loop's own look gives up on it, unless the
            # loop was committing the file's move into done there: then it is held itself.
            wait_until(
                lambda: {SILENT, HELD} & {r["event"] for r in proc.json_lines()},
                timeout=60,
                what="the share found not answering",
            )
            mounted.force_off()
            # The call in the share fails, the worker's or the commit's; the claim stays.
            kept = wait_until(
                lambda: [r for r in proc.json_lines() if r["event"] in KEPT],
                timeout=30,
                what="the claim kept",
            )[0]
            assert any(e in kept["error"] for e in ("not connected", "connection abort")), kept
            assert wait_until(lambda: str(share) in _offline(proc), timeout=30)
            emulator.set_faults(latency_ms=0)

            mounted.unmount()
            mounted.mount_it()
            wait_until(lambda: "big.pdf" in files_in(share / "done"), timeout=60)
            assert (share / "done" / "big.pdf").read_bytes() == data
            assert not files_in(share / "failed")
            assert len(emulator.events()) == 1, emulator.events()
        finally:
            mounted.answer()
            _stop(proc)


def test_an_idle_share_that_stops_answering_is_set_aside_and_the_others_never_wait(
    site: Site, emulator: Emulator
) -> None:
    """The periodic look meets the silent server first: it gives up, and the loop goes on.

    A share's server going down overnight is met while the share is idle, by
    the look at the inbox. That look waits in a thread of its own, so the
    inbox beside it never waits, the watch is never held, and status stays
    off the share. The share is in the daemon's /etc/fstab, as in the field:
    the daemon then also asks where the inbox's path leads, in the share.
    """
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        config = beside_local(site, emulator, share)
        proc = run_with_fstab(site.root / "fstab", mounted.mount, config)
        try:
            proc.wait_for_log("flowflexd ready", timeout=30)
            drop(share, "before.pdf", pdf(b"before"))
            wait_until(lambda: "before.pdf" in files_in(share / "done"), timeout=30)
            # Idle: its claim is gone too, so nothing but the look goes into the share.
            wait_until(lambda: _row(config, share)["in_progress"] == 0, timeout=30)

            mounted.stop_answering()
            silent = proc.wait_for_log(
                SILENT,
                timeout=30,
                folder=str(share),
            )
            assert "does not answer" in silent["error"]
            assert "force the share off" in silent["hint"]

            drop(site.inbox, "meanwhile.pdf", pdf(b"meanwhile"))
            wait_until(lambda: "meanwhile.pdf" in files_in(site.done), timeout=30)

            shown = _status_text(config)
            assert f"{share}  (NOT ANSWERING)" in shown
            assert "it does not answer: a look at it has waited over 5 s" in shown
            assert "its counts are not shown, as looking would wait too" in shown
            row = _row(config, share)
            assert row["answering"] is False
            assert row["unavailable_to"] == proc.proc.pid
            assert _row(config, site.inbox)["daemon_pid"] == proc.proc.pid

            mounted.answer()
            proc.wait_for_log("inbox is back", timeout=30, folder=str(share))
            drop(share, "after.pdf", pdf(b"after"))
            wait_until(lambda: "after.pdf" in files_in(share / "done"), timeout=30)
            sent = sorted(e["payload"]["assetId"] for e in emulator.events())
            assert len(sent) == len(set(sent)) == 3
            assert not [r for r in proc.json_lines() if r["event"].startswith("the main loop")]
        finally:
            mounted.answer()
            _stop(proc)


def test_a_start_while_a_share_does_not_answer_takes_up_the_others_and_check_says_which(
    site: Site, emulator: Emulator
) -> None:
    """The file server is down when the machine boots: the mount is there, its server is not.

    Reading the configuration resolves each folder's links, and the start looks
    at each inbox: each gives up on the share after a few seconds, so the
    daemon comes up and takes up the inboxes that answer. The share is in
    /etc/fstab, as in the field, so each also asks where the path leads.
    """
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        share.mkdir()
        config = beside_local(site, emulator, share, share_first=True)
        mounted.stop_answering()
        # check says so while the share is down.
        said = site.root / "check.out"
        fstab = site.root / "fstab"
        checked = _check_aside(
            with_fstab(fstab, mounted.mount, flowflexd_argv("check", "-c", str(config))), said
        )
        proc: LoggedProcess | None = None
        try:
            wait_until(lambda: f"inbox {site.inbox}" in said.read_text(), timeout=60)
            text = said.read_text()
            assert f"inbox {share} does not answer: a look at it has waited over 5 s" in text
            assert "configuration is valid" in text  # the others are checked all the same

            proc = run_with_fstab(fstab, mounted.mount, config)
            proc.wait_for_log("flowflexd ready", timeout=60)
            proc.wait_for_log(SILENT, folder=str(share))
            _local_now_shared_once_back(proc, site, mounted, share)
            assert len(emulator.events()) == 2
            assert not [r for r in proc.json_lines() if r["event"].startswith("the main loop")]
            assert checked.wait(timeout=30) == 2, said.read_text()
        finally:
            mounted.answer()
            if proc is not None:
                _stop(proc)
            checked.kill()


def test_a_start_or_reload_while_several_shares_do_not_answer_gives_up_on_them_together(
    site: Site, emulator: Emulator
) -> None:
    """The file server behind several inboxes is down at boot: their looks wait at once.

    Each look gives up after 5 s. Made one after another, twenty silent shares
    held the start for 100 s, past systemd's start timeout: the unit failed
    and was started again, with the inboxes that answer never taken up. A
    reload checked where each folder's done and failed are with no limit, and
    held the loop until a silent share answered.
    """
    with contextlib.ExitStack() as stack:
        mounted = [stack.enter_context(sshfs_share(site.root / f"share{n}")) for n in range(3)]
        shares = []
        for each in mounted:
            shares.append(each.mount / "inbox")
            shares[-1].mkdir()
        folders = [{"path": str(s), "poll": True, "rules": RULES} for s in shares]
        config = write_config(
            site.root / "config.yaml",
            emulator,
            folders=[*folders, folder_spec(site.root, RULES)],
            rescan_seconds=1,
        )
        for each in mounted:
            each.stop_answering()
        said = site.root / "check.out"
        started = time.monotonic()
        checked = _check_aside(flowflexd_argv("check", "-c", str(config)), said)
        proc: LoggedProcess | None = None
        try:
            # Reading the configuration waits 5 s for the shares at most, the looks 5 s
            # more: one after another, they were 15 s.
            wait_until(lambda: f"inbox {site.inbox}" in said.read_text(), timeout=60)
            assert time.monotonic() - started < 15, said.read_text()
            text = said.read_text()
            for share in shares:
                assert f"inbox {share} does not answer" in text

            proc = run_daemon(config)
            ready = _when(proc.wait_for_log("flowflexd ready", timeout=60))
            silent = sorted(
                _when(proc.wait_for_log(SILENT, folder=str(share), timeout=30)) for share in shares
            )
            # Together: within a second of each other, where one after another was 5 s apart.
            assert silent[-1] - silent[0] < 2.5, silent
            assert ready - silent[0] < 2.5, (silent, ready)
            drop(site.inbox, "local.pdf", pdf(b"local"))
            wait_until(lambda: "local.pdf" in files_in(site.done), timeout=30)

            for each in mounted:
                each.answer()
            for share in shares:
                proc.wait_for_log("inbox is back", timeout=30, folder=str(share))
            assert len(emulator.events()) == 1
            assert checked.wait(timeout=30) == 2, said.read_text()

            # A reload that adds two folders on a share that stops answering meanwhile.
            added = [mounted[0].mount / "second", mounted[0].mount / "third"]
            for folder in added:
                folder.mkdir()
            more = [{"path": str(f), "poll": True, "rules": RULES} for f in added]
            write_config(
                config,
                emulator,
                folders=[*folders, *more, folder_spec(site.root, RULES)],
                rescan_seconds=1,
            )
            mounted[0].stop_answering()
            proc.proc.send_signal(signal.SIGHUP)
            proc.wait_for_log("configuration reloaded", timeout=60)
            silent = sorted(
                _when(proc.wait_for_log(SILENT, folder=str(f), timeout=30)) for f in added
            )
            assert silent[-1] - silent[0] < 2.5, silent
            drop(site.inbox, "after.pdf", pdf(b"after"))
            wait_until(lambda: "after.pdf" in files_in(site.done), timeout=30)
            assert len(emulator.events()) == 2
            assert not [r for r in proc.json_lines() if r["event"].startswith("the main loop")]
        finally:
            for each in mounted:
                each.answer()
            if proc is not None:
                _stop(proc)
            checked.kill()


def test_once_while_a_share_does_not_answer_sends_the_rest_and_says_which_it_left(
    site: Site, emulator: Emulator
) -> None:
    """``flowflexd once`` from cron, with the file server down: it must end, and say so.

    It waited for the silent inbox's files for ever, and counting what was
    left (a listing of each inbox) waited on the share too.
    """
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        share.mkdir()
        drop(share, "shared.pdf", pdf(b"shared"))
        drop(site.inbox, "local.pdf", pdf(b"local"))
        config = beside_local(site, emulator, share)
        mounted.stop_answering()
        with _once_beside(mounted, config) as proc:
            finished = proc.wait_for_log("once: finished", timeout=60)
            assert finished["done"] == 1
            assert finished["not_answering"] == [str(share)], finished
            assert "local.pdf" in files_in(site.done)
            assert len(emulator.events()) == 1
            # On FUSE its process ends once the share answers (NFS and CIFS waits end at once).
            mounted.answer()
            assert proc.wait_exit(timeout=30) == 1, proc.output()
        assert "shared.pdf" in os.listdir(share)  # left where it was, for the next run
        again = _once(config)
        assert again.wait_exit(timeout=60) == 0, again.output()
        assert "shared.pdf" in files_in(share / "done")
        assert len(emulator.events()) == 2


def test_once_when_a_share_stops_answering_mid_run_ends_and_the_next_run_sends_its_files_once(
    site: Site, emulator: Emulator
) -> None:
    """Its workers wait in the share: ``once`` does not wait for them, and names the inbox."""
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        config = beside_local(site, emulator, share)
        share.mkdir()
        big = {f"big-{n}.pdf": pdf(os.urandom(4 << 20)) for n in range(2)}
        for name, data in big.items():
            drop(share, name, data)
        drop(site.inbox, "local.pdf", pdf(b"local"))
        emulator.set_faults(latency_ms=1000)  # the workers are inside their uploads at the stop
        with _once_beside(mounted, config) as proc:
            wait_until(lambda: emulator.stats()["requests_by_path"].get("/_storage"), timeout=30)
            mounted.stop_answering()
            emulator.set_faults(latency_ms=0)
            finished = proc.wait_for_log("once: finished", timeout=60)
            assert finished["not_answering"] == [str(share)], finished
            assert "local.pdf" in files_in(site.done)
            mounted.answer()
            assert proc.wait_exit(timeout=60) == 1, proc.output()
        again = _once(config)
        assert again.wait_exit(timeout=60) == 0, again.output()
        assert set(big) <= files_in(share / "done")
        for name, data in big.items():
            assert (share / "done" / name).read_bytes() == data
        assert not files_in(share / "failed")
        sent = [e["idempotency_key"] for e in emulator.events()]
        assert len(sent) == len(set(sent)) == 3, emulator.events()


def _once(config: Path) -> LoggedProcess:
    return LoggedProcess(
        flowflexd_argv("once", "-c", str(config), "--log-format", "json"), env=child_env()
    )


@contextlib.contextmanager
def _once_beside(share: Share, config: Path) -> Iterator[LoggedProcess]:
    """``once`` running beside ``share``; after, the share answers and the process is gone.

    The share is made to answer first: a FUSE call of the process ends only then.
    """
    proc = _once(config)
    try:
        yield proc
    finally:
        share.answer()
        if proc.proc.poll() is None:
            proc.proc.kill()


def test_a_standby_is_not_held_by_a_share_that_does_not_answer(
    site: Site, emulator: Emulator
) -> None:
    """It follows the daemon holding its local inbox, and stops when told, share or no share.

    Taking an inbox's lock opens a file there: on the silent share the standby
    waited for ever, neither taking over when the holder died nor stopping.
    """
    with sshfs_share(site.root / "share") as mounted:
        share = mounted.mount / "inbox"
        share.mkdir()
        config = beside_local(site, emulator, share, share_first=True)
        # The active daemon serves the local inbox alone (a node that never had the share).
        active_config = write_config(
            site.root / "active.yaml", emulator, folders=[folder_spec(site.root, RULES)]
        )
        active = run_daemon(active_config)
        waiting: LoggedProcess | None = None
        second: LoggedProcess | None = None
        try:
            active.wait_for_log("flowflexd ready", timeout=30)
            mounted.stop_answering()

            waiting = _standby(config)
            waiting.wait_for_log(STANDBY_HELD, timeout=30, folder=str(site.inbox))
            waiting.wait_for_log(STANDBY_SILENT, timeout=1, folder=str(share))
            waiting.proc.terminate()
            # Stopped at once; on FUSE its process ends once the share answers, as ever.
            waiting.wait_for_log("flowflexd stopped while on standby", timeout=10)

            second = _standby(config)
            second.wait_for_log(STANDBY_HELD, timeout=30, folder=str(site.inbox))
            active.proc.send_signal(signal.SIGKILL)
            active.wait_exit()
            second.wait_for_log("flowflexd ready", timeout=30)
            _local_now_shared_once_back(second, site, mounted, share)
            assert len(emulator.events()) == 2
            assert waiting.wait_exit(timeout=30) == 0, waiting.output()
            _stop(second)
        finally:
            mounted.answer()
            for proc in (active, waiting, second):
                if proc is not None and proc.proc.poll() is None:
                    proc.proc.kill()


def _local_now_shared_once_back(
    proc: LoggedProcess, site: Site, mounted: Share, share: Path
) -> None:
    """The local inbox's file goes while the share is silent; once it answers, its own does."""
    drop(site.inbox, "local.pdf", pdf(b"local"))
    wait_until(lambda: "local.pdf" in files_in(site.done), timeout=30)
    mounted.answer()
    proc.wait_for_log("inbox is back", timeout=30, folder=str(share))
    drop(share, "shared.pdf", pdf(b"shared"))
    wait_until(lambda: "shared.pdf" in files_in(share / "done"), timeout=30)


def _standby(config: Path) -> LoggedProcess:
    argv = flowflexd_argv("run", "-c", str(config), "--log-format", "json", "--standby")
    return LoggedProcess(argv, env=child_env())


def _check_aside(argv: list[str], said: Path) -> subprocess.Popen[bytes]:
    """``flowflexd check`` in the background, what it says in ``said``.

    Its process ends only once a silent share answers: a look held by a FUSE
    server waits out a kill too (NFS and CIFS waits end).
    """
    with said.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env())


def _when(record: dict[str, Any]) -> float:
    """A log line's time, in seconds."""
    return datetime.fromisoformat(record["timestamp"]).timestamp()


def with_fstab(table: Path, share: Path, argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace of its own, where /etc/fstab mounts the sshfs ``share``."""
    need("unshare")
    table.write_text(f"share: {share} fuse.sshfs defaults 0 0\n")
    bind = 'mount --bind "$0" /etc/fstab && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind, str(table), *argv]


def run_with_fstab(table: Path, share: Path, config: Path) -> LoggedProcess:
    """``flowflexd run``, with ``share`` in its /etc/fstab as in the field."""
    argv = flowflexd_argv("run", "-c", str(config), "--log-format", "json")
    return LoggedProcess(with_fstab(table, share, argv), env=child_env())


def _status_text(config: Path) -> str:
    """``flowflexd status`` as people read it; it must answer while a share does not."""
    shown = subprocess.run(
        flowflexd_argv("status", "-c", str(config)),
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def _row(config: Path, folder: Path) -> dict[str, Any]:
    return {r["path"]: r for r in status_json(config)}[str(folder)]


def _offline(proc: LoggedProcess) -> set[str]:
    """The inboxes the daemon has said are away."""
    away = ("inbox is gone", "inbox unavailable")
    return {r.get("folder", "") for r in proc.json_lines() if str(r.get("event")).startswith(away)}


def _read(path: Path) -> str | None:
    return path.read_text().strip() or None if path.exists() else None


def _stop(proc: LoggedProcess) -> None:
    if proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait_exit(timeout=60) == 0, proc.output()
