"""flowflexd as a service user meets the field: files owned by other users (the scanner
users), with and without CAP_LEASE, and folders it may not change. The real command runs
as nobody through setpriv, the way the unit's User= and AmbientCapabilities= start it."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    NOBODY,
    LoggedProcess,
    as_nobody,
    child_env,
    drop,
    files_in,
    flowflexd_argv,
    folder_spec,
    pdf,
    reachable_folder,
    skip_unless_nobody_runs,
    status_json,
    wait_until,
    write_config,
)

from flowflexd.config.model import load
from flowflexd.emulator import Emulator
from flowflexd.inbox.spool import FolderUnavailable, Spool

PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}
NO_LEASE = "cannot tell whether another process still writes files here"
UNAVAILABLE = (
    "inbox unavailable; other folders keep running, this one is looked at again every few seconds"
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (util-linux) to run flowflexd as another user",
)


@pytest.fixture(scope="module", autouse=True)
def nobody_can_run_flowflexd() -> None:
    skip_unless_nobody_runs(flowflexd_argv("--help"))


@pytest.fixture
def base() -> Iterator[Path]:
    with reachable_folder("flowflexd-probe-") as path:
        yield path


def service_config(base: Path, emulator: Emulator) -> Path:
    for name in ("inbox", "done", "failed", "state"):
        (base / name).mkdir()
        os.chown(base / name, NOBODY, NOBODY)
    spec = folder_spec(base, [PDF])
    config = write_config(base / "config.yaml", emulator, folders=[spec], settle_seconds=0.3)
    os.chown(config, NOBODY, NOBODY)
    return config


def run_as_nobody(config: Path, *, cap_lease: bool) -> LoggedProcess:
    argv = flowflexd_argv("run", "-c", str(config), "--log-format", "json")
    return LoggedProcess([*as_nobody(cap_lease=cap_lease), *argv], env=child_env(HOME="/"))


def command_as_nobody(*args: str, cap_lease: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_nobody(cap_lease=cap_lease), *flowflexd_argv(*args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(HOME="/"),
        check=False,
    )


def check_as_nobody(config: Path, *, cap_lease: bool) -> str:
    done = command_as_nobody("check", "-c", str(config), cap_lease=cap_lease)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_check_says_when_the_service_user_cannot_probe_for_writers(
    base: Path, emulator: Emulator
) -> None:
    config = service_config(base, emulator)

    without = check_as_nobody(config, cap_lease=False)
    with_cap = check_as_nobody(config, cap_lease=True)

    assert f"warning: inbox {base / 'inbox'}: {NO_LEASE} (flowflexd's user lacks CAP_LEASE" in (
        without
    )
    assert NO_LEASE not in with_cap


def test_without_cap_lease_files_go_on_settling_alone_said_once(
    base: Path, emulator: Emulator
) -> None:
    config = service_config(base, emulator)
    proc = run_as_nobody(config, cap_lease=False)
    try:
        said = proc.wait_for_log(f"{NO_LEASE}; files are taken once settled alone")
        for i in range(3):
            drop(base / "inbox", f"scan-{i}.pdf", pdf(b"%d" % i))  # owned by root
        wait_until(lambda: len(files_in(base / "done")) == 3)
    finally:
        proc.stop()

    assert said["folder"] == str(base / "inbox")
    assert "lacks CAP_LEASE" in said["reason"]
    warnings = [line for line in proc.json_lines() if line.get("event", "").startswith(NO_LEASE)]
    assert len(warnings) == 1


WRITER = """
import sys
with open(sys.argv[1], "wb") as fh:
    fh.write(b"%PDF-1.7 first page\\n")
    fh.flush()
    print("open", flush=True)
    sys.stdin.readline()
    fh.write(b"second page\\n%%EOF\\n")
"""


def test_with_cap_lease_a_scanner_users_open_file_waits_for_its_writer(
    base: Path, emulator: Emulator
) -> None:
    config = service_config(base, emulator)
    proc = run_as_nobody(config, cap_lease=True)
    writer = subprocess.Popen(  # root: another user than the service's
        [sys.executable, "-c", WRITER, str(base / "inbox" / "scan.pdf")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    try:
        proc.wait_for_log("flowflexd ready")
        assert writer.stdout.readline() == "open\n"
        waiting = proc.wait_for_log("settled but not whole yet; waiting", file="scan.pdf")
        assert waiting["check"] == "writer"
        assert emulator.events() == []
        writer.stdin.write("go\n")
        writer.stdin.close()
        assert writer.wait(timeout=10) == 0
        wait_until(lambda: "scan.pdf" in files_in(base / "done"))
    finally:
        if writer.poll() is None:
            writer.kill()
        proc.stop()

    assert (base / "done" / "scan.pdf").read_bytes() == b"%PDF-1.7 first page\nsecond page\n%%EOF\n"
    assert len(emulator.events()) == 1
    assert not any(line.get("event", "").startswith(NO_LEASE) for line in proc.json_lines())


def test_once_exits_1_when_a_file_could_not_be_claimed(base: Path, emulator: Emulator) -> None:
    """A sticky inbox: nobody may not rename the scanner's (here root's) file away."""
    config = service_config(base, emulator)
    inbox = base / "inbox"
    os.chown(inbox, 0, 0)
    inbox.chmod(0o1777)
    drop(inbox, "scan.pdf", pdf(b"scanned"))  # owned by root, not by the service user
    done = command_as_nobody("once", "-c", str(config), "--log-format", "json", cap_lease=True)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "could not claim a file; it stays in the inbox" in done.stdout + done.stderr
    assert '"left_in_inbox": 1' in done.stdout + done.stderr
    assert (inbox / "scan.pdf").exists()
    assert emulator.events() == []


def test_a_config_the_service_user_cannot_read_names_the_user_and_the_fix(
    base: Path, emulator: Emulator
) -> None:
    config = service_config(base, emulator)
    os.chown(config, 0, 0)
    config.chmod(0o640)  # root:root 0640, as the README's step 4 once left it

    done = command_as_nobody("run", "-c", str(config), cap_lease=False)

    assert done.returncode == 2
    assert "cannot read the configuration: Permission denied (flowflexd runs as nobody)" in (
        done.stderr
    )
    group = grp.getgrgid(NOBODY).gr_name  # nogroup on Debian
    assert f"chgrp {group} {config} && chmod 640 {config}" in done.stderr


def test_an_inbox_the_service_user_may_not_write_is_named_and_taken_once_it_may(
    base: Path, emulator: Emulator
) -> None:
    """The install steps' likeliest slip: an inbox flowflexd's user may not write in. The
    daemon says which and what to do, once; the other inboxes keep running; and the inbox
    is taken up by itself once the user may write there (no restart)."""
    scans = base / "scans"
    for folder in (base, scans):
        for name in ("inbox", "done", "failed"):
            (folder / name).mkdir(parents=True)
            os.chown(folder / name, NOBODY, NOBODY)
    (base / "state").mkdir()
    os.chown(base / "state", NOBODY, NOBODY)
    os.chown(scans / "inbox", 0, 0)  # root's, mode 755: nobody may read it, not write in it
    folders = [folder_spec(base, [PDF]), folder_spec(scans, [PDF])]
    config = write_config(base / "config.yaml", emulator, folders=folders)
    os.chown(config, NOBODY, NOBODY)
    drop(scans / "inbox", "waited.pdf", pdf(b"waited"))

    proc = run_as_nobody(config, cap_lease=True)
    try:
        said = proc.wait_for_log(UNAVAILABLE)
        drop(base / "inbox", "meanwhile.pdf", pdf(b"meanwhile"))
        wait_until(lambda: files_in(base / "done") == {"meanwhile.pdf"})
        # What the operator sees, as root: the daemon runs, and cannot use this one.
        rows = wait_until(lambda: status_rows(config, refused=scans / "inbox"))
        os.chown(scans / "inbox", NOBODY, NOBODY)  # the fix
        proc.wait_for_log("inbox is back", folder=str(scans / "inbox"), timeout=20)
        wait_until(lambda: files_in(scans / "done") == {"waited.pdf"}, timeout=20)
        assert proc.proc.poll() is None
    finally:
        proc.stop()

    assert said["folder"] == str(scans / "inbox")
    assert said["error"] == (
        f"flowflexd's user may not write in {scans / 'inbox'}: Permission denied "
        f"({scans / 'inbox' / '.flowflexd'})"
    )
    assert "give flowflexd's user write access to the inbox" in said["hint"]
    assert "flowflexd check --as-user" in said["hint"]
    unavailable = [line for line in proc.json_lines() if line.get("event") == UNAVAILABLE]
    assert len(unavailable) == 1  # said once, not at every look
    assert len(emulator.events()) == 2
    held, refused = rows[str(base / "inbox")], rows[str(scans / "inbox")]
    assert held["daemon_pid"] is not None and refused["daemon_pid"] is None
    assert refused["unavailable_to"] == held["daemon_pid"]  # the same daemon, not "not running"
    assert refused["unavailable_reason"] == said["error"]
    assert refused["unavailable_hint"] == said["hint"]
    assert refused["waiting"] == 1  # waited.pdf, counted while it waits


def test_an_inbox_the_service_user_can_no_longer_reach_is_named_not_called_gone(
    base: Path, emulator: Emulator
) -> None:
    """Someone tightens a folder above a running inbox (chmod 700): the inbox is still
    there, so the journal says the user may not reach it, and how to fix that, rather
    than that it was unmounted or removed; it is taken up again once it may."""
    scans = base / "scans"
    scans.mkdir()  # root's, 755 for now
    for name in ("inbox", "done", "failed"):
        (scans / name).mkdir()
        os.chown(scans / name, NOBODY, NOBODY)
    (base / "state").mkdir()
    os.chown(base / "state", NOBODY, NOBODY)
    spec = folder_spec(scans, [PDF])
    config = write_config(base / "config.yaml", emulator, folders=[spec], rescan_seconds=0.5)
    os.chown(config, NOBODY, NOBODY)

    proc = run_as_nobody(config, cap_lease=True)
    try:
        proc.wait_for_log("flowflexd ready")
        scans.chmod(0o700)  # nobody may no longer pass through it
        said = proc.wait_for_log(UNAVAILABLE, timeout=20)
        drop(scans / "inbox", "waited.pdf", pdf(b"waited"))  # root still may
        scans.chmod(0o755)  # the fix
        proc.wait_for_log("inbox is back", folder=str(scans / "inbox"), timeout=20)
        wait_until(lambda: files_in(scans / "done") == {"waited.pdf"}, timeout=20)
    finally:
        proc.stop()

    assert said["error"] == f"flowflexd's user may not reach {scans / 'inbox'}: Permission denied"
    assert "access to the inbox and to each folder above it" in said["hint"]
    assert not [line for line in proc.json_lines() if "inbox is gone" in line.get("event", "")]
    assert len(emulator.events()) == 1


def status_rows(config: Path, *, refused: Path) -> dict[str, dict[str, object]]:
    """``flowflexd status --json`` by folder, once it names ``refused`` as not usable; else {}."""
    rows = {row["path"]: row for row in status_json(config)}
    return rows if rows[str(refused)]["unavailable_to"] else {}


def test_check_as_the_service_user_sees_what_that_user_may_write(
    base: Path, emulator: Emulator
) -> None:
    """check from a root shell proves nothing for the service user unless it checks as it."""
    config = service_config(base, emulator)
    os.chown(config, 0, 0)  # root reads it, as in the README (root:flowflexd 0640)
    os.chown(base / "done", 0, 0)  # a folder the service user may not write

    as_root = subprocess.run(
        flowflexd_argv("check", "-c", str(config)), capture_output=True, text=True, check=False
    )
    as_service = subprocess.run(
        flowflexd_argv("check", "--as-user", "nobody", "-c", str(config)),
        capture_output=True,
        text=True,
        check=False,
    )

    assert as_root.returncode == 0, as_root.stdout
    assert as_service.returncode == 2, as_service.stdout + as_service.stderr
    assert "folders checked as user nobody" in as_service.stdout
    assert f"error: done {base / 'done'} is not writable by user nobody" in as_service.stdout
    assert "lacks CAP_LEASE" not in as_service.stdout  # the unit grants it


def test_a_work_area_root_left_is_named_with_chown_and_its_claim_resumed_once_handed_over(
    base: Path, emulator: Emulator
) -> None:
    """The quick start run as root first, then the service: root's claim waits in a work
    area nobody may not use. check and the daemon say whose it is and how to hand it over,
    and once it is, the claim goes out under root's key, once."""
    config = service_config(base, emulator)
    spool = Spool(load(config).folders[0])
    spool.prepare()  # as root: .flowflexd and its work area are root's
    drop(base / "inbox", "claimed-by-root.pdf", pdf(b"root's"))
    left = spool.claim({"file": "claimed-by-root.pdf"}, rule="pdf")
    assert left is not None
    spool.unlock()  # root's daemon killed mid-flight
    home = base / "inbox" / ".flowflexd"

    checked = subprocess.run(
        flowflexd_argv("check", "--as-user", "nobody", "-c", str(config)),
        capture_output=True,
        text=True,
        check=False,
    )
    proc = run_as_nobody(config, cap_lease=True)
    try:
        said = proc.wait_for_log(UNAVAILABLE)
        subprocess.run(["chown", "-R", "nobody", str(home)], check=True)  # the fix, as said
        proc.wait_for_log("inbox is back", folder=str(base / "inbox"), timeout=20)
        wait_until(lambda: files_in(base / "done") == {"claimed-by-root.pdf"}, timeout=20)
    finally:
        proc.stop()
    # Root's own check, and a daemon tried as root, beside the service: neither takes its work.
    as_root = subprocess.run(
        flowflexd_argv("check", "-c", str(config)), capture_output=True, text=True, check=False
    )
    with pytest.raises(FolderUnavailable) as refused:
        Spool(load(config).folders[0]).prepare()

    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert f"{home} belongs to root, not to flowflexd's user (nobody)" in checked.stdout
    assert f"chown -R nobody {home}" in checked.stdout
    assert said["error"] == f"{home} belongs to root, not to flowflexd's user (nobody)"
    assert f"chown -R nobody {home}" in said["hint"]
    [event] = emulator.events()
    assert event["idempotency_key"] == left.key  # root's key: not a new claim, not sent twice
    assert as_root.returncode == 0, as_root.stdout + as_root.stderr
    assert f"{home} belongs to nobody: flowflexd run as root would not use" in as_root.stdout
    assert "--as-user nobody" in as_root.stdout and "chown" not in as_root.stdout
    assert refused.value.message == f"{home} belongs to nobody, not to flowflexd's user (root)"
    assert str(refused.value.hint).startswith(
        "this inbox is nobody's flowflexd's (the service?): run flowflexd as nobody; "
        "to move its work to root instead: chown -R root"
    )
