"""``flowflexd emulator`` as a user starts it: a real process on a real port."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import requests
from support import LoggedProcess, child_env, flowflexd_argv

from flowflexd.client import FlowFlex


def test_the_emulator_command_serves_logs_keeps_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "emulator-data"
    secret = "command-line-secret-123"
    proc = LoggedProcess(
        flowflexd_argv(
            "emulator",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--api-key",
            "cik_cli",
            "--api-secret",
            secret,
            "--integration-code",
            "ic_cli",
            "--log-format",
            "json",
        ),
        env=child_env(),
    )
    try:
        ready = proc.wait_for_log("emulator ready")
        client = FlowFlex(
            api_key="cik_cli",
            api_secret=secret,
            integration_code="ic_cli",
            base_url=ready["base_url"],
        )
        pdf = tmp_path / "INV-1.pdf"
        pdf.write_bytes(b"%PDF-1.4 cli\n%%EOF")
        result = client.send_event(
            "invoice.created",
            payload={"assetId": client.file(pdf), "n": 1},
            idempotency_key="cli-key-1",
        )

        line = proc.wait_for_log("event received", idempotency_key="cli-key-1")
        listed = requests.get(f"{ready['base_url']}/_emulator/events", timeout=10).json()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.wait_exit()
    finally:
        proc.stop()

    assert code == 0
    assert line["event_name"] == "invoice.created"
    assert line["payload"] == {"assetId": result.uploaded_assets["assetId"], "n": 1}
    assert [event["idempotency_key"] for event in listed] == ["cli-key-1"]
    assert (data_dir / "events.jsonl").exists()
    asset = data_dir / "assets" / f"{result.uploaded_assets['assetId']}.bin"
    assert asset.read_bytes() == b"%PDF-1.4 cli\n%%EOF"
    assert secret not in proc.output()


def test_the_emulator_command_injects_latency_and_failures(tmp_path: Path) -> None:
    proc = LoggedProcess(
        flowflexd_argv(
            "emulator",
            "--port",
            "0",
            "--latency-ms",
            "150",
            "--fail-rate",
            "1",
            "--log-format",
            "json",
        ),
        env=child_env(),
    )
    try:
        ready = proc.wait_for_log("emulator ready")
        res = requests.post(
            f"{ready['base_url']}/v1/events/ic_emulator",
            json={},
            auth=("cik_emulator", "emulator-secret-not-for-production"),
            headers={"x-event": "e"},
            timeout=10,
        )
        assert res.elapsed.total_seconds() >= 0.15
        assert res.status_code in (429, 503)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()


def test_a_bad_fail_rate_is_a_usage_error() -> None:
    proc = LoggedProcess(flowflexd_argv("emulator", "--fail-rate", "1.5"), env=child_env())

    assert proc.wait_exit() == 2
    assert "share between 0 and 1" in proc.output()


def run_command(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        flowflexd_argv(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(TMPDIR=str(tmp)),
        check=False,
    )


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    done = run_command("emulator", "--port", "80000", tmp=tmp_path)

    assert done.returncode == 2
    assert "argument --port: '80000' is not a port (0 to 65535)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    done = run_command("emulator", "--port", "0", "--data-dir", "/proc/nope", tmp=tmp_path)

    assert done.returncode == 1
    assert "cannot use --data-dir /proc/nope: No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_named_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run_command("emulator", "--port", port, tmp=tmp_path)

    assert done.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no ffemu-* left behind
