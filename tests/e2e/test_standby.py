"""A standby: two real daemons on one inbox; the active one is killed, the standby finishes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from support import (
    Folders,
    LoggedProcess,
    child_env,
    claims_in,
    drop,
    files_in,
    flowflexd_argv,
    pdf,
    run_daemon,
    wait_until,
)

from flowflexd.emulator import Emulator


def standby(config: Path) -> LoggedProcess:
    argv = flowflexd_argv("run", "-c", str(config), "--log-format", "json", "--standby")
    return LoggedProcess(argv, env=child_env())


def config_for(tmp_path: Path, emulator: Emulator) -> Path:
    return Folders(tmp_path).config(
        emulator, [{"name": "scan", "pattern": "*.pdf", "event": "scan"}]
    )


def test_the_standby_takes_over_when_the_active_daemon_is_killed(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = config_for(tmp_path, emulator)  # one configuration, one state_dir: a cluster's
    names = [f"scan-{i:02}.pdf" for i in range(40)]
    emulator.set_faults(latency_ms=40)  # slow enough that the kill lands mid-stream
    active = run_daemon(config)
    active.wait_for_log("flowflexd ready")
    second = standby(config)  # started second: it finds the inbox held
    try:
        waiting = second.wait_for_log(
            "standby: another flowflexd holds this inbox; waiting to take over when it stops"
        )
        assert waiting["holder_pid"] == str(active.proc.pid)
        assert waiting["folder"] == str(tmp_path / "inbox")
        for name in names:
            drop(tmp_path / "inbox", name, pdf(name.encode()))
        wait_until(lambda: len(emulator.events()) >= 8, timeout=30)
        assert not any(r.get("event") == "flowflexd ready" for r in second.json_lines())

        active.proc.send_signal(signal.SIGKILL)
        assert active.wait_exit() == -signal.SIGKILL
        killed_at = time.monotonic()
        work = tmp_path / "inbox" / ".flowflexd" / "work"
        # Claims that took their file: one killed before its rename is undone at the
        # start and its file claimed anew (nothing was sent under that key).
        left_claimed = {
            c["members"]["file"]: c["key"]
            for c in claims_in(tmp_path / "inbox")
            if (work / c["id"] / c["members"]["file"]).exists()
        }
        assert left_claimed  # workers were mid-file: the standby has claims to resume

        second.wait_for_log("flowflexd ready", timeout=10)
        took = time.monotonic() - killed_at
        emulator.set_faults(latency_ms=0)
        wait_until(lambda: files_in(tmp_path / "done") == set(names), timeout=60)
    finally:
        for proc in (active, second):
            proc.stop()

    assert took < 3, f"the standby took {took:.1f} s to take over"
    events = emulator.events()
    by_file = {}
    for event in events:
        [asset] = event["assets"].values()
        by_file.setdefault(asset["filename"], []).append(event)
    assert sorted(by_file) == names
    assert all(len(sent) == 1 for sent in by_file.values())  # one event per file
    for name, key in left_claimed.items():  # claims resumed with their keys
        assert by_file[name][0]["idempotency_key"] == key
    assert files_in(tmp_path / "inbox") == set()


def test_a_standby_stops_cleanly_while_it_waits(tmp_path: Path, emulator: Emulator) -> None:
    config = config_for(tmp_path, emulator)
    active = run_daemon(config)
    active.wait_for_log("flowflexd ready")
    second = standby(config)  # started second: it finds the inbox held
    try:
        second.wait_for_log(
            "standby: another flowflexd holds this inbox; waiting to take over when it stops"
        )
        second.proc.terminate()
        assert second.wait_exit(timeout=10) == 0
        drop(tmp_path / "inbox", "a.pdf", pdf(b"a"))
        wait_until(lambda: files_in(tmp_path / "done") == {"a.pdf"})  # the active one is unharmed
    finally:
        for proc in (active, second):
            proc.stop()
    assert "flowflexd stopped while on standby" in second.output()
