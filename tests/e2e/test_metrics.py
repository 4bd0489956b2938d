"""/metrics and /healthz of the real daemon, scraped over HTTP, against what happened."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Folders,
    block_inbox,
    drop,
    files_in,
    folder_spec,
    need,
    pdf,
    readme_yaml,
    run_daemon,
    wait_until,
    write_config,
)

from flowflexd.config.model import load
from flowflexd.emulator import Emulator
from flowflexd.engine.metrics import Health, Metrics
from flowflexd.engine.snapshot import Snapshot
from flowflexd.errors import ConfigError


def config_for(tmp_path: Path, emulator: Emulator, **top: Any) -> Path:
    rule = {"name": "inv", "pattern": "*.pdf", "event": "invoice", "sidecar": "{stem}.json"}
    optional = {**rule, "sidecar_required": False, "sidecar_timeout": 0.5}
    return Folders(tmp_path).config(emulator, [optional], metrics={"listen": "127.0.0.1:0"}, **top)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_happened_and_health_says_ok(tmp_path: Path, emulator: Emulator) -> None:
    config = config_for(tmp_path, emulator)
    inbox = tmp_path / "inbox"
    proc = run_daemon(config)
    try:
        listen = proc.wait_for_log("serving /metrics and /healthz")["listen"]
        base = f"http://{listen}"
        for i in range(3):
            drop(inbox, f"INV-{i}.pdf", pdf(b"%d" % i))
        drop(inbox, "BAD.json", b"{not json")
        drop(inbox, "BAD.pdf", pdf(b"bad"))
        wait_until(lambda: len(files_in(tmp_path / "done")) == 3)
        wait_until(lambda: "BAD.pdf.error.json" in files_in(tmp_path / "failed"))
        folder = str(inbox)
        scraped: dict[Any, float] = {}

        def counted() -> bool:
            # Gauges follow the snapshot, republished within a quarter second.
            nonlocal scraped
            scraped = samples(get(f"{base}/metrics")[1])
            done = value(
                scraped,
                "flowflexd_files_total",
                folder=folder,
                rule="inv",
                destination="default",
                outcome="done",
                code="",
            )
            busy = sum(
                value(scraped, f"flowflexd_files_{stage}", folder=folder)
                for stage in ("waiting", "settling", "in_flight")
            )
            return done == 3 and busy == 0

        wait_until(counted)
        status, health = get(f"{base}/healthz")
        text = get(f"{base}/metrics")[1]
    finally:
        proc.stop()

    failed = value(
        scraped,
        "flowflexd_files_total",
        folder=folder,
        rule="inv",
        destination="default",
        outcome="failed",
        code="SIDECAR_INVALID",
    )
    assert failed == 1
    answers = value(
        scraped, "flowflexd_api_answers_total", destination="default", call="event", status="200"
    )
    assert answers == 3
    assert value(scraped, "flowflexd_upload_seconds_count") == 3
    assert value(scraped, "flowflexd_event_seconds_count") == 3
    assert (("flowflexd_files_waiting", (("folder", folder),))) in scraped
    assert value(scraped, "flowflexd_paused", destination="default", reason="config") == 0
    assert ("flowflexd_paused", (("destination", "default"), ("reason", "config"))) in scraped
    assert value(scraped, "flowflexd_journal_bytes") > 0
    assert value(scraped, "flowflexd_seconds_since_last_event") < 60
    assert value(scraped, "flowflexd_healthy") == 1
    assert status == 200
    assert json.loads(health) == {"ok": True, "reason": "sending"}
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package; CI installs it
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_an_inbox_the_daemon_cannot_use_shows_in_metrics_until_it_can(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Its files are not seen, so only this gauge tells a scrape something is wrong."""
    good, blocked = tmp_path / "good", tmp_path / "blocked"
    drop(block_inbox(blocked), "unseen.pdf", pdf(b"unseen"))
    rule = {"name": "inv", "pattern": "*.pdf", "event": "invoice"}
    config = write_config(
        tmp_path / "config.yaml",
        emulator,
        folders=[folder_spec(good, [rule]), folder_spec(blocked, [rule])],
        metrics={"listen": "127.0.0.1:0"},
    )
    proc = run_daemon(config)
    try:
        base = f"http://{proc.wait_for_log('serving /metrics and /healthz')['listen']}"

        def unavailable() -> dict[str, float]:
            scraped = samples(get(f"{base}/metrics")[1])
            return {
                str(where / "inbox"): value(
                    scraped, "flowflexd_inbox_unavailable", folder=str(where / "inbox")
                )
                for where in (good, blocked)
            }

        while_away = wait_until(lambda: (now := unavailable())[str(blocked / "inbox")] and now)
        waiting_seen = value(
            samples(get(f"{base}/metrics")[1]),
            "flowflexd_files_waiting",
            folder=str(blocked / "inbox"),
        )
        (blocked / "inbox" / ".flowflexd").unlink()
        wait_until(lambda: "unseen.pdf" in files_in(blocked / "done"), timeout=20)
        back = wait_until(lambda: (now := unavailable())[str(blocked / "inbox")] == 0 and now)
    finally:
        proc.stop()

    assert while_away == {str(good / "inbox"): 0.0, str(blocked / "inbox"): 1.0}
    assert waiting_seen == 0  # what a stuck-file alert could not have seen
    assert back == {str(good / "inbox"): 0.0, str(blocked / "inbox"): 0.0}


def test_health_is_503_with_the_reason_while_flowflex_refuses_the_credentials(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = config_for(tmp_path, emulator, secret="not-the-secret")
    proc = run_daemon(config)
    try:
        base = "http://" + proc.wait_for_log("serving /metrics and /healthz")["listen"]
        # 503 "starting" comes first, until the daemon is ready.
        wait_until(lambda: "paused" in get(f"{base}/healthz")[1])
        status, body = get(f"{base}/healthz")
        scraped = samples(get(f"{base}/metrics")[1])
    finally:
        proc.stop()

    answer = json.loads(body)
    assert status == 503
    assert answer["ok"] is False
    assert answer["reason"].startswith("paused: FlowFlex refuses our configuration")
    assert "\n" not in body.strip()  # one line
    assert "not-the-secret" not in body
    assert value(scraped, "flowflexd_paused", destination="default", reason="config") == 1
    assert value(scraped, "flowflexd_healthy") == 0


def test_a_metrics_port_in_use_is_a_clear_start_error(tmp_path: Path, emulator: Emulator) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    config = config_for(tmp_path, emulator)
    text = config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}")
    config.write_text(text)
    try:
        proc = run_daemon(config)
        try:
            # 1, not 2: systemd restarts it, as the port may be freed by an old instance.
            assert proc.wait_exit(timeout=15) == 1
            assert f"cannot serve metrics on 127.0.0.1:{port}" in proc.output()
        finally:
            proc.stop()
    finally:
        taken.close()


@pytest.mark.parametrize("listen", ["9464", "host:port", "127.0.0.1:70000"])
def test_a_bad_listen_address_is_refused_at_load(
    tmp_path: Path, emulator: Emulator, listen: str
) -> None:
    config = config_for(tmp_path, emulator)
    config.write_text(config.read_text().replace("127.0.0.1:0", listen))
    with pytest.raises(ConfigError, match=r"metrics\.listen: expected host:port"):
        load(config)


def exported_names() -> set[str]:
    """Every metric family the daemon exports, from a real scrape of a fresh registry."""
    metrics = Metrics(Snapshot, lambda: Health(True, "sending"), "/nonexistent")
    return {family.name for family in text_string_to_metric_families(metrics.exposition().decode())}


def test_the_readme_alert_rules_use_what_flowflexd_exports_and_promtool_accepts_them(
    tmp_path: Path,
) -> None:
    rules = readme_yaml("prometheus-rules")
    alerts = yaml.safe_load(rules)["groups"][0]["rules"]
    assert [a["alert"] for a in alerts] == [
        "FlowflexdFileStuck",
        "FlowflexdFailuresRising",
        "FlowflexdPaused",
        "FlowflexdInboxUnavailable",
    ]
    names = exported_names()
    for alert in alerts:
        used = set(re.findall(r"flowflexd_[a-z_]+", alert["expr"]))
        assert used, alert
        assert {n.removesuffix("_total") for n in used} <= names, (used, names)
    need("promtool")
    (tmp_path / "rules.yml").write_text(rules)
    scrape = tmp_path / "prometheus.yml"
    scrape.write_text(readme_yaml("prometheus-scrape") + "rule_files: [rules.yml]\n")
    for args in (["check", "rules", str(tmp_path / "rules.yml")], ["check", "config", str(scrape)]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_stuck_file_alert_fires_on_what_a_stuck_daemon_exports(tmp_path: Path) -> None:
    """promtool's rule unit test: the README's alert, fed the series a stuck inbox shows."""
    need("promtool")
    (tmp_path / "rules.yml").write_text(readme_yaml("prometheus-rules"))
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {
                                # A file waiting since minute 0: 60 s more each minute.
                                "series": 'flowflexd_oldest_waiting_seconds{instance="fs1"}',
                                "values": "0+60x30",
                            },
                            {
                                "series": 'flowflexd_paused{instance="fs1",destination="sales",'
                                'reason="config"}',
                                "values": "0x5 1x20",
                            },
                            {
                                "series": 'flowflexd_inbox_unavailable{instance="fs1",'
                                'folder="/srv/scans"}',
                                "values": "0x10 1x20",
                            },
                        ],
                        "alert_rule_test": [
                            {
                                "eval_time": "10m",
                                "alertname": "FlowflexdFileStuck",
                                "exp_alerts": [],
                            },
                            {
                                "eval_time": "25m",
                                "alertname": "FlowflexdFileStuck",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {"severity": "warning", "instance": "fs1"},
                                        "exp_annotations": {
                                            "summary": "flowflexd on fs1: a file has waited over "
                                            "15 minutes",
                                            "description": "Paused, a watcher problem or "
                                            "permissions: read the journal; flowflexd explain "
                                            "FILE.",
                                        },
                                    }
                                ],
                            },
                            {
                                "eval_time": "14m",  # unavailable since 11m: not 5m yet
                                "alertname": "FlowflexdInboxUnavailable",
                                "exp_alerts": [],
                            },
                            {
                                "eval_time": "20m",
                                "alertname": "FlowflexdInboxUnavailable",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {
                                            "severity": "critical",
                                            "instance": "fs1",
                                            "folder": "/srv/scans",
                                        },
                                        "exp_annotations": {
                                            "summary": "flowflexd on fs1 cannot use /srv/scans",
                                            "description": "Its files wait unseen: flowflexd "
                                            "status and the journal's inbox unavailable line say "
                                            "why and the fix.",
                                        },
                                    }
                                ],
                            },
                            {
                                "eval_time": "20m",
                                "alertname": "FlowflexdPaused",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {
                                            "severity": "critical",
                                            "instance": "fs1",
                                            "destination": "sales",
                                            "reason": "config",
                                        },
                                        "exp_annotations": {
                                            "summary": "flowflexd on fs1 has paused sending to "
                                            "sales (config)",
                                            "description": "config: fix the credentials and "
                                            "reload; outage: FlowFlex or the network is down.",
                                        },
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        )
    )
    result = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
