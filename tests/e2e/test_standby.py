"""A standby: two real daemons on one inbox; the active one is killed, the standby finishes."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from support import (
    Folders,
    LoggedProcess,
    child_env,
    claim_dirs,
    drop,
    files_in,
    flowflexd_argv,
    pdf,
    read_claim,
    run_daemon,
    wait_until,
)

from flowflexd.emulator import Emulator
from flowflexd.inbox.layout import CLAIM_FILE


def standby(config: Path) -> LoggedProcess:
    argv = flowflexd_argv("run", "-c", str(config), "--log-format", "json", "--standby")
    return LoggedProcess(argv, env=child_env())


def config_for(tmp_path: Path, emulator: Emulator) -> Path:
    return Folders(tmp_path).config(
        emulator, [{"name": "scan", "pattern": "*.pdf", "event": "scan"}]
    )


def claims_that_took_their_file(inbox: Path) -> dict[str, str]:
    """File name to idempotency key, for the claims a killed daemon left holding their
    file. One killed before its rename is undone at the start and its file claimed
    anew (nothing was sent under that key); one killed before its claim line was
    written holds nothing."""
    left = {}
    for folder in claim_dirs(inbox):
        record = folder / CLAIM_FILE
        if not record.is_file() or record.stat().st_size == 0:
            continue
        claim = read_claim(folder)
        if (folder / claim["members"]["file"]).exists():
            left[claim["members"]["file"]] = claim["key"]
    return left


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

        # The standby is held still while the killed daemon's claims are read: it
        # polls the lock every second, and one that takes over at once would be
        # resuming (and releasing) the very claims being read.
        with second.held_still():
            active.proc.send_signal(signal.SIGKILL)
            assert active.wait_exit() == -signal.SIGKILL
            left_claimed = claims_that_took_their_file(tmp_path / "inbox")
        free_at = time.monotonic()
        assert left_claimed  # workers were mid-file: the standby has claims to resume

        second.wait_for_log("flowflexd ready", timeout=10)
        took = time.monotonic() - free_at
        emulator.set_faults(latency_ms=0)
        wait_until(lambda: files_in(tmp_path / "done") == set(names), timeout=60)
    finally:
        for proc in (active, second):
            proc.stop()

    assert took < 3, f"the standby took {took:.1f} s to take over"
    events = emulator.events()
    by_file: dict[str, list[dict[str, Any]]] = {}
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
