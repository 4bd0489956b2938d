"""flowflexd as a systemd service: the unit, sd_notify, signals, reload, logs."""

from __future__ import annotations

import os
import pty
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import (
    NotifySocket,
    RunningDaemon,
    child_env,
    claim_dirs,
    drop,
    files_in,
    flowflexd_argv,
    folder_spec,
    read_claim,
    run_daemon,
    wait_until,
    write_config,
)

from flowflexd.emulator import Emulator
from flowflexd.engine.notify import Notifier

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "flowflexd.service"
SYSUSERS = ROOT / "systemd" / "flowflexd.sysusers.conf"
PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc.v1"}


def spec(base: Path, rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return folder_spec(base, rules or [PDF])


# ------------------------------------------------------------------ the unit


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_has_what_the_service_needs() -> None:
    unit = unit_settings()

    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"][0].endswith("flowflexd run --config /etc/flowflexd/config.yaml")
    assert unit["ExecReload"] == ["""/bin/sh -c 'kill -HUP "$MAINPID"'"""]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["2"]  # a config error is not retried in a loop
    assert unit["WatchdogSec"]
    assert unit["User"] == ["flowflexd"]
    assert unit["StateDirectory"] == ["flowflexd"]
    assert unit["LoadCredential"] == ["api_secret:/etc/flowflexd/api_secret"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"]
    for flag in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert unit[flag] == ["yes"], flag
    # Only what the writer probe needs: a lease on files the scanner users own.
    assert unit["CapabilityBoundingSet"] == ["CAP_LEASE"]
    assert unit["AmbientCapabilities"] == ["CAP_LEASE"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in unit["SystemCallFilter"]
    assert unit["UMask"] == ["0077"]


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed here")
    return path


# What a minimal Debian (debootstrap's minbase) is sure to have: Essential packages.
ESSENTIAL_PROGRAMS = {"/bin/sh", "/bin/sleep", "/bin/true"}


def exec_reload(pid: int, empty: Path) -> None:
    """Run the unit's ExecReload as systemd does: $MAINPID set, nothing else to lean on."""
    argv = shlex.split(unit_settings()["ExecReload"][0])
    assert argv[0] in ESSENTIAL_PROGRAMS, f"{argv[0]} may be missing on a minimal Debian"
    subprocess.run(argv, env={"MAINPID": str(pid), "PATH": str(empty)}, check=True, timeout=10)


def test_the_unit_exposure_level_is_at_most_2() -> None:
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for flowflexd\.service: (\d+\.\d+)", done.stdout)

    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


def test_the_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this install.
    installed = Path(flowflexd_argv()[0])
    unit = tmp_path / "flowflexd.service"
    unit.write_text(UNIT.read_text().replace("/opt/flowflexd/bin/flowflexd", str(installed)))

    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert "flowflexd.service" not in done.stderr, done.stderr


def test_the_sysusers_file_creates_the_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed here")
    (tmp_path / "etc").mkdir()

    done = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    [entry] = [
        line
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
        if line.startswith("flowflexd:")
    ]
    assert entry.endswith(":/var/lib/flowflexd:/usr/sbin/nologin")


# ------------------------------------------------------------------ sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_run_reports_ready_status_heartbeats_reload_and_stop(
    tmp_path: Path, emulator: Emulator, notify_socket: NotifySocket
) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    proc = run_daemon(config, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="400000")
    try:
        ready = notify_socket.wait_for("READY=1")
        assert proc.wait_for_log("flowflexd ready")
        first_beat = notify_socket.wait_for("WATCHDOG=1", after=ready)
        notify_socket.wait_for("WATCHDOG=1", after=first_beat + 1)  # it keeps beating
        drop(tmp_path / "inbox", "a.pdf", b"%PDF\n%%EOF")
        notify_socket.wait_for("STATUS=waiting 0, in flight 0, done 1, failed 0")
        before_reload = len(notify_socket.drain())
        (tmp_path / "empty").mkdir()
        exec_reload(proc.proc.pid, tmp_path / "empty")
        reloading = notify_socket.wait_for("RELOADING=1", after=before_reload)
        notify_socket.wait_for("READY=1", after=reloading + 1)
        proc.proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1")
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    # Stopping the folders' watches (at the reload and at the stop) is not an error.
    assert [line for line in proc.json_lines() if line.get("level") == "error"] == []
    reload_message = notify_socket.drain()[reloading].splitlines()
    assert reload_message[0] == "RELOADING=1"
    assert reload_message[1].startswith("MONOTONIC_USEC=")
    assert (
        "STATUS=waiting 0, in flight 0, done 0, failed 0, oldest waiting 0s"
        in notify_socket.fields()
    )


def test_no_heartbeat_when_the_watchdog_belongs_to_another_process(
    tmp_path: Path, emulator: Emulator, notify_socket: NotifySocket
) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    proc = run_daemon(
        config, NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="200000", WATCHDOG_PID="1"
    )
    try:
        notify_socket.wait_for("READY=1")
        drop(tmp_path / "inbox", "a.pdf", b"%PDF\n%%EOF")  # a second of activity
        notify_socket.wait_for("STATUS=waiting 0, in flight 0, done 1")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    assert "WATCHDOG=1" not in notify_socket.fields()


def test_an_abstract_notify_socket_works(tmp_path: Path) -> None:
    name = f"flowflexd-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        assert receiver.recv(100) == b"READY=1"
    finally:
        receiver.close()


def test_a_notify_socket_nobody_reads_never_holds_the_daemon() -> None:
    """systemd reads each message at once; a receiver that does not must not hold the loop.

    The kernel queues only net.unix.max_dgram_qlen unread datagrams (10 by
    default); a blocking send waits there for good, and the loop with it.
    """
    name = f"flowflexd-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        started = time.monotonic()
        for n in range(200):
            notifier.status(f"waiting {n}")
        assert time.monotonic() - started < 5
        receiver.settimeout(1)
        assert receiver.recv(100) == b"STATUS=waiting 0"  # the first ones are kept
    finally:
        receiver.close()


def test_the_heartbeat_stops_when_a_worker_is_gone(
    tmp_path: Path, emulator: Emulator, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    with RunningDaemon(config, notifier=Notifier()) as running:
        notify_socket.wait_for("WATCHDOG=1")
        running.daemon.scheduler.pool._jobs.put(
            None
        )  # one worker leaves: the pool is no longer whole
        wait_until(lambda: running.daemon.heartbeats_withheld >= 1)
        beats = notify_socket.fields().count("WATCHDOG=1")
        wait_until(lambda: running.daemon.heartbeats_withheld >= 4)

        assert notify_socket.fields().count("WATCHDOG=1") == beats


# -------------------------------------------------------------------- signals


def slow_setup(tmp_path: Path, latency_ms: int, **top: Any) -> tuple[Emulator, Path]:
    emulator = Emulator(data_dir=tmp_path / "emulator-data", latency_ms=latency_ms).start()
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)], **top)
    return emulator, config


def test_sigterm_lets_a_file_in_flight_finish_and_leaves_the_rest(tmp_path: Path) -> None:
    emulator, config = slow_setup(tmp_path, 400, workers=1)
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        for i in range(5):
            drop(tmp_path / "inbox", f"f{i}.pdf", b"%PDF\n%%EOF")
        proc.wait_for_log("file claimed")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()
        emulator.stop()

    events = [r["event"] for r in proc.json_lines()]
    assert events.index("file done") < events.index("flowflexd stopped")
    done = files_in(tmp_path / "done")
    assert len(done) == 1
    # The others were never touched: still in the inbox, none claimed.
    assert files_in(tmp_path / "inbox") == {f"f{i}.pdf" for i in range(5)} - done
    assert claim_dirs(tmp_path / "inbox") == []


def test_a_second_signal_exits_at_once_and_the_file_resumes_next_time(tmp_path: Path) -> None:
    emulator, config = slow_setup(tmp_path, 5000)
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        drop(tmp_path / "inbox", "slow.pdf", b"%PDF slow\n%%EOF")
        proc.wait_for_log("file claimed")
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for_log("stopping: no new files are taken; waiting for files in flight")
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit() == 0
        assert time.monotonic() - started < 3
    finally:
        proc.stop()
    [claim_dir] = claim_dirs(tmp_path / "inbox")
    key = read_claim(claim_dir)["key"]

    emulator.set_faults(latency_ms=0)
    restarted = run_daemon(config)
    try:
        wait_until(lambda: "slow.pdf" in files_in(tmp_path / "done"), timeout=30)
        restarted.proc.send_signal(signal.SIGTERM)
        assert restarted.wait_exit() == 0
    finally:
        restarted.stop()
        events = emulator.events()
        emulator.stop()

    assert [e["idempotency_key"] for e in events] == [key]


def test_a_file_slower_than_the_grace_period_stays_claimed(tmp_path: Path) -> None:
    emulator, config = slow_setup(tmp_path, 4000, shutdown_grace_seconds=0.5)
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        drop(tmp_path / "inbox", "g.pdf", b"%PDF\n%%EOF")
        proc.wait_for_log("file claimed")
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
        assert time.monotonic() - started < 3
    finally:
        proc.stop()
        emulator.stop()

    proc.wait_for_log(
        "grace period over; files still in flight stay claimed and resume at the next start"
    )
    assert len(claim_dirs(tmp_path / "inbox")) == 1


# --------------------------------------------------------------------- reload


def test_sighup_swaps_folders_and_rules_without_dropping_a_file_in_flight(tmp_path: Path) -> None:
    emulator, config = slow_setup(tmp_path, 1500)
    second = tmp_path / "second"
    second.mkdir()
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        drop(tmp_path / "inbox", "in-flight.pdf", b"%PDF\n%%EOF")
        proc.wait_for_log("file claimed")
        data = yaml.safe_load(config.read_text())
        data["folders"][0]["rules"][0]["event"] = "doc.v2"
        data["folders"].append(spec(second))
        config.write_text(yaml.safe_dump(data))
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("configuration reloaded")
        proc.wait_for_log("watching", folder=str(second / "inbox"))
        emulator.set_faults(latency_ms=0)
        drop(tmp_path / "inbox", "after.pdf", b"%PDF\n%%EOF")
        drop(second / "inbox", "new-folder.pdf", b"%PDF\n%%EOF")
        wait_until(
            lambda: files_in(tmp_path / "done") == {"in-flight.pdf", "after.pdf"}, timeout=30
        )
        wait_until(lambda: "new-folder.pdf" in files_in(second / "done"), timeout=30)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()
        events = emulator.events()
        emulator.stop()

    by_file = {next(iter(e["assets"].values()))["filename"]: e["event"] for e in events}
    # The file in flight kept its rule; the changed rule applies after the reload;
    # the added folder has its own rules.
    assert by_file == {"in-flight.pdf": "doc.v1", "after.pdf": "doc.v2", "new-folder.pdf": "doc.v1"}


def test_an_invalid_config_on_sighup_is_logged_and_the_running_one_stays(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    good = config.read_text()
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        config.write_text(good + "workers: [not, a, number]\n")
        proc.proc.send_signal(signal.SIGHUP)
        failed = proc.wait_for_log("reload failed; the running configuration stays")
        drop(tmp_path / "inbox", "still.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "still.pdf" in files_in(tmp_path / "done"))
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    assert "workers: expected a whole number" in failed["error"]
    assert f"{config}:" in failed["error"]


# ----------------------------------------------------------------------- logs


def test_logs_are_readable_lines_on_a_terminal(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        flowflexd_argv("run", "-c", str(config)),
        stdout=secondary,
        stderr=secondary,
        env=child_env(),
    )
    os.close(secondary)
    output = b""
    try:
        deadline = time.monotonic() + 15
        while b"flowflexd ready" not in output and time.monotonic() < deadline:
            output += os.read(main, 4096)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)

    line = next(line for line in output.decode().splitlines() if "flowflexd ready" in line)
    assert not line.lstrip().startswith("{")
    assert "info" in line


def test_log_level_warning_hides_info(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    (tmp_path / "inbox").mkdir()
    drop(tmp_path / "inbox", "a.pdf", b"%PDF\n%%EOF")

    done = subprocess.run(
        flowflexd_argv("once", "-c", str(config), "--log-format", "json", "--log-level", "warning"),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )

    assert done.returncode == 0
    assert done.stderr.strip() == ""


def test_the_secret_can_come_from_a_systemd_credential(tmp_path: Path, emulator: Emulator) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api_secret").write_text(emulator.api_secret + "\n")
    (credentials / "api_secret").chmod(0o400)
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec(tmp_path)])
    data = yaml.safe_load(config.read_text())
    del data["flowflex"]["api_secret"]
    config.write_text(yaml.safe_dump(data))
    (tmp_path / "inbox").mkdir()
    drop(tmp_path / "inbox", "a.pdf", b"%PDF\n%%EOF")

    done = subprocess.run(
        flowflexd_argv("once", "-c", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_env(CREDENTIALS_DIRECTORY=str(credentials)),
    )

    assert done.returncode == 0, done.stderr
    assert len(emulator.events()) == 1
