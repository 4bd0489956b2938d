"""The ``flowflexd`` commands as an operator runs them: real processes, real folders."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import (
    LoggedProcess,
    NotifySocket,
    block_inbox,
    child_env,
    drop,
    files_in,
    flowflexd_argv,
    folder_spec,
    read_report,
    readme_block,
    run_daemon,
    status_json,
    wait_until,
    write_config,
)

from flowflexd.config.model import STATE_FILE
from flowflexd.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
# explain never touches the network: an unreachable API proves it.
OFFLINE = SimpleNamespace(
    url="https://unreachable.invalid", api_key="k", api_secret="s", integration_code="ic"
)
PDF = {"name": "pdf", "pattern": "*.pdf", "event": "doc.received"}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        flowflexd_argv(*args),
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        cwd=cwd,
        check=False,
    )


def folder(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return folder_spec(tmp_path, extra.pop("rules", [PDF]), **extra)


# ---------------------------------------------------------------- quick start


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    command = readme_block("quickstart:run").strip()
    install, _, start = command.rpartition(" && ")
    assert install.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert start == ".venv/bin/flowflexd run --emulator -c config.example.yaml"
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.example.yaml")
    argv = start.split()
    proc = LoggedProcess(
        flowflexd_argv(*argv[1:], "--log-format", "json"), env=child_env(), cwd=tmp_path
    )
    try:
        proc.wait_for_log("flowflexd ready")
        subprocess.run(["bash", "-euc", readme_block("quickstart:drop")], cwd=tmp_path, check=True)
        received = proc.wait_for_log("event received", event_name="invoice.created")
        proc.wait_for_log("event received", event_name="document.received")
        wait_until(
            lambda: (
                files_in(tmp_path / "demo" / "done")
                == {"INV-1001.pdf", "INV-1001.json", "letter.pdf"}
            )
        )
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    payload = received["payload"]
    assert payload["invoice_no"] == "1001"
    assert payload["customer_id"] == "cust_42"
    assert payload["source"] == "demo-scanner"
    assert payload["assetId"].startswith("asset_")


# ----------------------------------------------------------------------- run


def test_run_logs_json_lines_that_carry_the_file_context(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        drop(tmp_path / "inbox", "a.pdf", b"%PDF a\n%%EOF")
        claimed = proc.wait_for_log("file claimed")
        finished = proc.wait_for_log("file done")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    [event] = emulator.events()
    for line in (claimed, finished):
        assert line["folder"] == str(tmp_path / "inbox")
        assert line["file"] == "a.pdf"
        assert line["rule"] == "pdf"
        assert line["idempotency_key"] == event["idempotency_key"]
    assert finished["attempt"] == 1
    assert finished["event_name"] == "doc.received"
    assert finished["asset_ids"] == {"file": next(iter(event["assets"]))}
    assert isinstance(finished["duration_ms"], int)
    assert emulator.api_secret not in proc.output()


def test_an_unmatched_file_is_logged_once_however_many_rescans(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)], rescan_seconds=0.2
    )
    proc = LoggedProcess(
        flowflexd_argv("run", "-c", str(config), "--log-format", "json", "--log-level", "debug"),
        env=child_env(),
    )
    try:
        proc.wait_for_log("flowflexd ready")
        drop(tmp_path / "inbox", "stray\nname.txt", b"x")
        proc.wait_for_log("no rule takes this file; it stays")
        seen = len([r for r in proc.json_lines() if r.get("event") == "rescanned"])
        wait_until(
            lambda: len([r for r in proc.json_lines() if r.get("event") == "rescanned"]) >= seen + 3
        )
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    lines = [r for r in proc.json_lines() if r.get("event") == "no rule takes this file; it stays"]
    assert len(lines) == 1
    assert lines[0]["file"] == "stray\\nname.txt"  # the newline arrives escaped


def test_run_with_a_bad_config_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("flowflex: {}\nfolders:\n  - path: x\n    rules:\n      - pattern: '*'\n")

    done = run("run", "-c", str(config))

    assert done.returncode == 2
    assert f"{config}:1: flowflex.base_url: required" in done.stderr
    assert f"{config}:5: folders[0].rules[0].event: required" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_daemon_on_the_same_inbox_is_refused(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])
    first = run_daemon(config)
    try:
        first.wait_for_log("flowflexd ready")
        second = run("run", "-c", str(config))
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait_exit() == 0
    finally:
        first.stop()

    assert second.returncode == 2
    assert "already watched by another flowflexd (pid" in second.stderr


# ---------------------------------------------------------------------- once


def test_once_processes_the_backlog_and_exits_0(tmp_path: Path, emulator: Emulator) -> None:
    (tmp_path / "inbox").mkdir()
    for i in range(20):
        drop(tmp_path / "inbox", f"f{i}.pdf", b"%PDF\n%%EOF")
    drop(tmp_path / "inbox", "notes.txt", b"not for us")
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])

    done = run("once", "-c", str(config), "--log-format", "json")

    assert done.returncode == 0, done.stderr
    assert len(files_in(tmp_path / "done")) == 20
    assert files_in(tmp_path / "inbox") == {"notes.txt"}
    assert len(emulator.events()) == 20
    assert "\r" not in done.stdout  # no progress line off a terminal


def test_once_exits_1_when_a_file_failed(tmp_path: Path, emulator: Emulator) -> None:
    (tmp_path / "inbox").mkdir()
    drop(tmp_path / "inbox", "good.pdf", b"%PDF\n%%EOF")
    drop(tmp_path / "inbox", "bad.exe", b"MZ")
    rules = [PDF, {"name": "any", "pattern": "*", "event": "x"}]
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[folder(tmp_path, rules=rules)]
    )

    done = run("once", "-c", str(config))

    assert done.returncode == 1
    assert files_in(tmp_path / "done") == {"good.pdf"}
    assert files_in(tmp_path / "failed") == {"bad.exe", "bad.exe.error.json"}


@pytest.mark.parametrize("command", ["run", "once"])
def test_a_state_dir_that_cannot_be_used_is_a_message_not_a_traceback(
    tmp_path: Path, emulator: Emulator, command: str
) -> None:
    (tmp_path / "inbox").mkdir()
    drop(tmp_path / "inbox", "kept.pdf", b"%PDF\n%%EOF")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder's parent should be")
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        folders=[folder(tmp_path)],
        state_dir=str(blocker / "state"),
    )

    done = run(command, "-c", str(config))

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot keep the journal in state_dir {blocker / 'state'}" in done.stderr
    assert "hint: give flowflexd's user a writable state_dir" in done.stderr
    assert files_in(tmp_path / "inbox") == {"kept.pdf"}  # nothing taken without a journal


def test_once_exits_2_on_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("workers: many\n")

    done = run("once", "-c", str(config))

    assert done.returncode == 2
    assert "workers: expected a whole number" in done.stderr


def on_a_terminal(argv: list[str], *, logs_too: bool) -> tuple[int, bytes]:
    """Run ``argv`` with its stdout (and stderr, with ``logs_too``) on a pseudo-terminal."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        argv,
        stdout=secondary,
        stderr=secondary if logs_too else subprocess.DEVNULL,
        env=child_env(),
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    code = proc.wait(timeout=60)
    os.close(main)
    return code, output


def test_once_shows_a_progress_line_on_a_terminal(tmp_path: Path, emulator: Emulator) -> None:
    (tmp_path / "inbox").mkdir()
    drop(tmp_path / "inbox", "f.pdf", b"%PDF\n%%EOF")
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])
    code, output = on_a_terminal(
        flowflexd_argv("once", "-c", str(config), "--log-format", "json"), logs_too=False
    )

    assert code == 0
    assert b"done 1  failed 0  waiting 0" in output
    assert b"files/s" in output


# --------------------------------------------------------------------- check


def test_check_accepts_a_good_configuration(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])

    done = run("check", "-c", str(config))

    assert done.returncode == 0, done.stdout
    assert "configuration is valid" in done.stdout
    assert "does not exist yet; flowflexd will create it" in done.stdout
    assert emulator.api_secret not in done.stdout + done.stderr


def test_check_says_plainly_when_retention_deletes_files(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = {**folder(tmp_path), "keep_done_days": 90}
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])

    done = run("check", "-c", str(config))

    assert done.returncode == 0, done.stdout
    assert f"keep_done_days: what flowflexd put in {tmp_path / 'done'} is DELETED 90 days" in (
        done.stdout
    )
    assert "the one case where flowflexd deletes files" in done.stdout
    assert "keep_failed_days" not in done.stdout  # not set: nothing said, nothing deleted


def test_check_looks_at_where_a_dated_done_folder_would_put_a_file_now(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = {**folder(tmp_path), "done": str(tmp_path / "done" / "{date:%Y}")}
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])

    done = run("check", "-c", str(config))

    year = time.strftime("%Y")
    assert done.returncode == 0, done.stdout
    assert f"done {tmp_path / 'done' / year} does not exist yet" in done.stdout


def test_check_refuses_done_on_another_filesystem(tmp_path: Path, emulator: Emulator) -> None:
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary folder")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        spec = folder(tmp_path, done=elsewhere)
        config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])

        done = run("check", "-c", str(config))
        started = run("once", "-c", str(config))

    assert done.returncode == 2
    assert "is on another filesystem than the inbox" in done.stdout
    assert started.returncode == 2
    assert "another filesystem" in started.stderr


def test_check_fails_on_a_folder_that_cannot_be_created(tmp_path: Path, emulator: Emulator) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[folder(tmp_path, done=str(blocker / "done"))]
    )

    done = run("check", "-c", str(config))

    assert done.returncode == 2
    assert f"error: done {blocker / 'done'}: {blocker} is not a folder" in done.stdout


# ------------------------------------------------------------------- explain


def test_explain_shows_rule_event_and_payload_without_network(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "INV-7.pdf", b"%PDF\n%%EOF")
    drop(inbox, "INV-7.json", b'{"customer": {"id": 9}}')
    drop(inbox, "notes.txt", b"x")
    rules = [
        {
            "name": "invoice",
            "regex": r"^INV-(?P<n>\d+)\.pdf$",
            "event": "invoice.created",
            "sidecar": "{stem}.json",
            "payload": {"assetId": "{file}", "n": "{match.n}", "c": "{sidecar.customer.id}"},
        }
    ]
    config = write_config(
        tmp_path / "config.yaml", OFFLINE, folders=[folder(tmp_path, rules=rules)]
    )

    done = run("explain", "-c", str(config), str(inbox / "INV-7.pdf"), str(inbox / "notes.txt"))

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "rule: invoice (regex ^INV-(?P<n>\\d+)\\.pdf$)" in out
    assert "sidecar: INV-7.json (required, present" in out
    assert "event: invoice.created" in out
    assert '"assetId": "<assetId of INV-7.pdf>"' in out
    assert '"n": "7"' in out
    assert '"c": 9' in out
    assert "notes.txt:\n  no rule takes it (tried: ^INV-" in out


def test_explain_says_whether_a_file_is_whole_by_each_check(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "whole.pdf", b"%PDF\n%%EOF")
    drop(inbox, "cut.pdf", b"%PDF half of it")
    with (inbox / "sized.pdf").open("wb") as fh:
        fh.truncate(1024 * 1024)  # the size set first, nothing written yet
        fh.write(b"%PDF")
    rules = [{**PDF, "incomplete_timeout": 90}]
    config = write_config(
        tmp_path / "config.yaml", OFFLINE, folders=[folder(tmp_path, rules=rules)]
    )

    done = run("explain", "-c", str(config), *(str(inbox / n) for n in ("whole.pdf", "cut.pdf")))
    sized = run("explain", "-c", str(config), str(inbox / "sized.pdf"))

    assert done.returncode == 0, done.stderr
    whole, cut = done.stdout.split("\n\n")
    assert "    writers: no other process has it open for writing" in whole
    assert "    end: written to its last byte" in whole
    assert "    format: its trailer is there" in whole
    assert (
        "    format: NO: a PDF ends with %%EOF within its last 1,024 bytes; this one does not; "
        "it waits, then fails as INCOMPLETE_FILE after 90 s (incomplete_timeout)"
    ) in cut
    assert "    end: NO: its last " in sized.stdout
    assert "bytes were never written" in sized.stdout


def test_explain_says_why_a_file_would_fail(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "a.pdf", b"%PDF\n%%EOF")
    drop(inbox, "a.json", b"{broken")
    rules = [{**PDF, "sidecar": "{stem}.json"}]
    config = write_config(
        tmp_path / "config.yaml", OFFLINE, folders=[folder(tmp_path, rules=rules)]
    )

    done = run("explain", "-c", str(config), str(inbox / "a.pdf"))

    assert "would fail: SIDECAR_INVALID: sidecar a.json is not valid JSON" in done.stdout


# ------------------------------------------------------- status and replay


def test_status_and_replay(tmp_path: Path, emulator: Emulator) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "ok.pdf", b"%PDF\n%%EOF")
    drop(inbox, "lonely.pdf", b"%PDF\n%%EOF")
    drop(inbox, "lonely.txt", b"unmatched")
    rules = [
        {"name": "ok", "pattern": "ok.pdf", "event": "ok"},
        {
            "name": "needs",
            "pattern": "lonely.pdf",
            "event": "x",
            "sidecar": "{stem}.json",
            "sidecar_timeout": 0.2,
        },
    ]
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[folder(tmp_path, rules=rules)]
    )
    assert run("once", "-c", str(config)).returncode == 1
    drop(inbox, "waiting.pdf", b"%PDF\n%%EOF")

    table = run("status", "-c", str(config))
    as_json = json.loads(run("status", "-c", str(config), "--json").stdout)

    assert table.returncode == 0
    assert as_json[0]["done"] == 1
    assert as_json[0]["failed"] == 1
    assert as_json[0]["waiting"] == 0  # waiting.pdf matches no rule
    assert as_json[0]["unmatched"] == 2
    assert as_json[0]["failed_now"] == 1
    assert as_json[0]["daemon_pid"] is None
    assert "lonely.pdf: SIDECAR_MISSING: lonely.json did not arrive within 0.2 s" in table.stdout

    drop(inbox, "lonely.json", b"{}")
    replayed = run("replay", "-c", str(config), str(tmp_path / "failed" / "lonely.pdf"))
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed" in replayed.stdout
    assert run("once", "-c", str(config)).returncode == 0
    assert files_in(tmp_path / "done") == {"ok.pdf", "lonely.pdf", "lonely.json"}
    assert files_in(tmp_path / "failed" / "replayed") == {"lonely.pdf.error.json"}
    report = json.loads((tmp_path / "failed" / "replayed" / "lonely.pdf.error.json").read_text())
    assert report["code"] == "SIDECAR_MISSING"
    [after] = json.loads(run("status", "-c", str(config), "--json").stdout)
    assert (after["failed"], after["failed_now"]) == (1, 0)  # history, and the folder now


def test_replay_of_a_file_outside_failed_is_refused(tmp_path: Path, emulator: Emulator) -> None:
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])
    (tmp_path / "elsewhere.pdf").write_bytes(b"%PDF\n%%EOF")

    done = run("replay", "-c", str(config), str(tmp_path / "elsewhere.pdf"))

    assert done.returncode == 1
    assert "is not in a failed folder of this configuration" in done.stderr
    assert (tmp_path / "elsewhere.pdf").exists()


def test_read_report_helper_matches_the_format(tmp_path: Path, emulator: Emulator) -> None:
    (tmp_path / "inbox").mkdir()
    drop(tmp_path / "inbox", "x.zip", b"PK")
    rules = [{"name": "any", "pattern": "*", "event": "e"}]
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[folder(tmp_path, rules=rules)]
    )

    assert run("once", "-c", str(config)).returncode == 1

    report = read_report(tmp_path / "failed", "x.zip")
    assert report["code"] == "UPLOAD_REFUSED" or report["code"] == "MIME_NOT_ALLOWED"
    assert "x.zip" in report["reason"]


def test_status_into_a_pipe_closed_early_exits_without_a_traceback(tmp_path: Path) -> None:
    """`flowflexd status --json | head -c 1`: the reader leaves before the output ends."""
    config = write_config(
        tmp_path / "config.yaml",
        OFFLINE,
        folders=[folder(tmp_path / f"f{i}") for i in range(2000)],  # past a pipe buffer
    )
    proc = subprocess.Popen(
        flowflexd_argv("status", "--json", "-c", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(1)  # what `head -c 1` takes, then it exits
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)

    assert first == b"["
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 128 + signal.SIGPIPE


def test_read_only_commands_need_no_api_secret(tmp_path: Path) -> None:
    """The operator's status, explain and replay read folders and the journal only."""
    config = write_config(
        tmp_path / "config.yaml",
        OFFLINE,
        folders=[folder(tmp_path)],
        secret="${FLOWFLEX_API_SECRET}",  # unset here, as in the operator's shell
    )
    (tmp_path / "failed").mkdir()
    drop(tmp_path / "failed", "r.pdf", b"%PDF\n%%EOF")
    drop(tmp_path / "failed", "r.pdf.error.json", b'{"code": "HTTP_500", "reason": "x"}')
    (tmp_path / "inbox").mkdir()

    status = run("status", "-c", str(config))
    explain = run("explain", "-c", str(config), str(tmp_path / "inbox" / "a.pdf"))
    replay = run("replay", "-c", str(config), str(tmp_path / "failed" / "r.pdf"))
    check = run("check", "-c", str(config))

    assert (status.returncode, explain.returncode, replay.returncode) == (0, 0, 0), (
        status.stderr + explain.stderr + replay.stderr
    )
    assert "rule: pdf" in explain.stdout
    assert (tmp_path / "inbox" / "r.pdf").exists()
    assert check.returncode == 2  # check does need it, and says so
    assert "FLOWFLEX_API_SECRET" in check.stdout + check.stderr


def test_check_refuses_a_sticky_inbox(tmp_path: Path, emulator: Emulator) -> None:
    """A sticky inbox lets the service user rename only its own files: every claim fails."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox").chmod(0o3775)
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])

    done = run("check", "-c", str(config))

    assert done.returncode == 2, done.stdout
    assert f"error: inbox {tmp_path / 'inbox'} has the sticky bit (mode 3775)" in done.stdout
    assert f"chmod o-t {tmp_path / 'inbox'}" in done.stdout


def test_check_refuses_a_base_url_that_run_would_refuse(tmp_path: Path) -> None:
    api = SimpleNamespace(
        url="http://files.example.com",
        api_key="cik_x",
        api_secret="s",
        integration_code="ic_x",
    )
    config = write_config(tmp_path / "config.yaml", api, folders=[folder(tmp_path)])

    done = run("check", "-c", str(config))

    assert done.returncode == 2
    assert "https" in done.stderr
    assert "configuration is valid" not in done.stdout


def test_check_online_proves_the_credentials_and_the_integration_firing_nothing(
    tmp_path: Path, emulator: Emulator
) -> None:
    good = write_config(tmp_path / "good.yaml", emulator, folders=[folder(tmp_path)])
    wrong_secret = write_config(
        tmp_path / "secret.yaml", emulator, folders=[folder(tmp_path)], secret="not-the-secret"
    )
    code = SimpleNamespace(**{**vars_of(emulator), "integration_code": "ic_nope"})
    wrong_code = write_config(tmp_path / "code.yaml", code, folders=[folder(tmp_path)])

    accepted = run("check", "--online", "-c", str(good))
    refused = run("check", "--online", "-c", str(wrong_secret))
    unknown = run("check", "--online", "-c", str(wrong_code))

    assert accepted.returncode == 0, accepted.stdout
    assert "note: FlowFlex accepts the credentials and the integration code" in accepted.stdout
    assert refused.returncode == 2
    assert "error: FlowFlex refuses them:" in refused.stdout
    assert "(HTTP 401)" in refused.stdout
    assert "not-the-secret" not in refused.stdout + refused.stderr
    assert unknown.returncode == 2
    assert "(HTTP 404)" in unknown.stdout
    assert emulator.events() == []


def vars_of(emulator: Emulator) -> dict[str, str]:
    return {
        "url": emulator.url,
        "api_key": emulator.api_key,
        "api_secret": emulator.api_secret,
        "integration_code": emulator.integration_code,
    }


def with_a_wrong_secret(tmp_path: Path, emulator: Emulator) -> Path:
    return write_config(
        tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)], secret="not-the-secret"
    )


def test_run_says_at_start_when_flowflex_refuses_the_credentials(
    tmp_path: Path, emulator: Emulator
) -> None:
    proc = run_daemon(with_a_wrong_secret(tmp_path, emulator))
    try:
        proc.wait_for_log("flowflexd ready")
        paused = proc.wait_for_log(
            "FlowFlex refuses our configuration; sending is paused and files stay where they are"
        )
    finally:
        proc.stop()

    assert "(HTTP 401)" in paused["reason"]
    assert "not-the-secret" not in proc.output()
    assert emulator.events() == []


def visible_lines(output: bytes) -> list[str]:
    """What a terminal shows line by line: each carriage return starts the line over."""
    lines = []
    for raw in output.decode(errors="replace").replace("\r\n", "\n").split("\n"):
        shown = raw.split("\r")[-1].replace("\x1b[K", "")
        lines.append(re.sub(r"\x1b\[[0-9;]*m", "", shown))  # colours
    return lines


def test_once_on_a_terminal_keeps_log_lines_and_the_progress_line_apart(
    tmp_path: Path, emulator: Emulator
) -> None:
    (tmp_path / "inbox").mkdir()
    for i in range(5):
        drop(tmp_path / "inbox", f"f{i}.pdf", b"%PDF\n%%EOF")
    emulator.set_faults(latency_ms=150)  # a run of a few seconds: many redraws between lines
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)], workers=1)
    # Logs and progress on one terminal, as an operator runs it.
    code, output = on_a_terminal(flowflexd_argv("once", "-c", str(config)), logs_too=True)

    assert code == 0
    lines = visible_lines(output)
    logged = [line for line in lines if "file done" in line]
    assert len(logged) == 5
    assert all("files/s" not in line for line in logged), logged
    assert any(line.startswith("done 5  failed 0  waiting 0  ") for line in lines), lines


def test_status_names_the_running_daemon_and_why_it_paused(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = with_a_wrong_secret(tmp_path, emulator)
    proc = run_daemon(config)
    try:
        proc.wait_for_log(
            "FlowFlex refuses our configuration; sending is paused and files stay where they are"
        )
        table = run("status", "-c", str(config))
        [row] = json.loads(run("status", "-c", str(config), "--json").stdout)
    finally:
        proc.stop()
    [stopped] = json.loads(run("status", "-c", str(config), "--json").stdout)

    assert row["daemon_pid"] == proc.proc.pid
    assert row["paused"] == "config"
    assert "(HTTP 401)" in row["paused_reason"]
    assert f"pid {proc.proc.pid}" in table.stdout
    assert "sending to FlowFlex is PAUSED" in table.stdout
    assert "FlowFlex refuses the configuration" in table.stdout
    assert (stopped["daemon_pid"], stopped["paused"]) == (None, None)


def status_table(config: Path, text: str, *, present: bool = True) -> str:
    """``flowflexd status`` as printed, once ``text`` is in it (or not in it); else ""."""
    out = run("status", "-c", str(config)).stdout
    return out if (text in out) == present else ""


def test_status_names_an_inbox_the_running_daemon_cannot_use_and_why(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Not "not running": the daemon runs, holds the other inbox, and says what is wrong here."""
    good, blocked = tmp_path / "good", tmp_path / "blocked"
    drop(block_inbox(blocked), "waits.pdf", b"%PDF waits\n%%EOF")
    config = write_config(
        tmp_path / "config.yaml", emulator, folders=[folder(good), folder(blocked)]
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = run_daemon(config, NOTIFY_SOCKET=str(notify.path))
    try:
        proc.wait_for_log("flowflexd ready")
        table = wait_until(lambda: status_table(config, "cannot use"), what="cannot use")
        said = wait_until(  # what systemctl status shows
            lambda: [f for f in notify.fields() if f.startswith("STATUS=") and "inbox" in f]
        )
        rows = status_json(config)
        (blocked / "inbox" / ".flowflexd").unlink()  # moved aside, as the hint says
        proc.wait_for_log("inbox is back", folder=str(blocked / "inbox"), timeout=20)
        wait_until(lambda: "waits.pdf" in files_in(blocked / "done"), timeout=20)
        after = wait_until(lambda: status_table(config, "cannot", present=False))
    finally:
        proc.stop()
        notify.close()

    assert said[0].endswith(f"; inbox unavailable: {blocked / 'inbox'}")
    by_path = {row["path"]: row for row in rows}
    held, refused = by_path[str(good / "inbox")], by_path[str(blocked / "inbox")]
    assert held["daemon_pid"] == proc.proc.pid and held["unavailable_to"] is None
    assert (refused["daemon_pid"], refused["unavailable_to"]) == (None, proc.proc.pid)
    assert "is not a folder: someone else's file" in refused["unavailable_reason"]
    assert refused["unavailable_hint"] == "move it aside; flowflexd recreates it"
    assert refused["waiting"] == 1
    assert f"{blocked / 'inbox'}  (NOT WATCHED)" in table
    assert f"pid {proc.proc.pid}, cannot use it" in table
    assert f"flowflexd (pid {proc.proc.pid}) cannot use {blocked / 'inbox'} since" in table
    assert "  hint: move it aside; flowflexd recreates it" in table
    assert "NOT WATCHED" not in after and after.count(f"pid {proc.proc.pid}") == 2


def test_status_trusts_no_killed_daemon_with_an_inbox_it_could_not_use(
    tmp_path: Path, emulator: Emulator
) -> None:
    """SIGKILL leaves the daemon's record saying it runs; status looks at the process."""
    block_inbox(tmp_path)
    config = write_config(tmp_path / "config.yaml", emulator, folders=[folder(tmp_path)])
    proc = run_daemon(config)
    try:
        wait_until(lambda: status_table(config, "cannot use"), what="cannot use")
        proc.proc.kill()
        proc.proc.wait(timeout=10)
    finally:
        proc.stop()

    [row] = status_json(config)
    assert (row["daemon_pid"], row["unavailable_to"]) == (None, None)
    table = run("status", "-c", str(config)).stdout
    assert "not running" in table and "cannot use" not in table
    record = tmp_path / "state" / STATE_FILE  # and one an older or damaged daemon left
    record.write_text(json.dumps({**json.loads(record.read_text()), "unavailable": ["?"]}))
    damaged = run("status", "-c", str(config))
    assert damaged.returncode == 0, damaged.stderr
    assert "not running" in damaged.stdout
