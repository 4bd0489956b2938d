"""``flowflexd emulator`` as a user starts it: a real process on a real port."""

from __future__ import annotations

import signal
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
