"""Several FlowFlex destinations, each with its own client and breaker; rate limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from support import RunningDaemon, drop, files_in, pdf, wait_until

from flowflexd.commands.views import render_status, status
from flowflexd.config.model import STATE_FILE, load
from flowflexd.emulator import Emulator
from flowflexd.emulator.state import error
from flowflexd.engine.snapshot import Pause


def destination(emulator: Emulator, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": emulator.url,
        "api_key": emulator.api_key,
        "api_secret": emulator.api_secret,
        "integration_code": emulator.integration_code,
        "timeout_seconds": 5,
        **extra,
    }


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


def folder(root: Path, name: str, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    (root / name).mkdir(exist_ok=True)
    return {
        "path": str(root / name),
        "done": str(root / f"{name}-done"),
        "failed": str(root / f"{name}-failed"),
        "rules": rules,
        **extra,
    }


def one_inbox(tmp_path: Path, destinations: dict[str, Any], workers: int) -> Path:
    """A configuration with ``destinations`` and one inbox of PDFs."""
    return write(
        tmp_path / "config.yaml",
        {
            **destinations,
            "workers": workers,
            "settle_seconds": 0.2,
            "state_dir": str(tmp_path / "state"),
            "folders": [folder(tmp_path, "inbox", [{"pattern": "*.pdf", "event": "doc"}])],
        },
    )


def test_refused_credentials_pause_only_the_folders_that_send_there(
    tmp_path: Path, emulator: Emulator
) -> None:
    with Emulator(data_dir=tmp_path / "support-emulator") as support:
        good = {"sales": destination(emulator), "support": destination(support)}
        wrong = {**good, "support": {**good["support"], "api_secret": "not-the-secret"}}
        rules = [
            {
                "name": "escalation",
                "pattern": "ESC-*.pdf",
                "event": "escalated",
                "destination": "support",
            },
            {"name": "sale", "pattern": "*.pdf", "event": "sale"},
        ]
        base: dict[str, Any] = {
            "workers": 4,
            "settle_seconds": 0.3,
            "state_dir": str(tmp_path / "state"),
            "folders": [
                folder(tmp_path, "sales", rules, destination="sales"),
                folder(
                    tmp_path,
                    "support",
                    [{"pattern": "*.pdf", "event": "ticket"}],
                    destination="support",
                ),
            ],
        }
        config = write(tmp_path / "config.yaml", {**base, "destinations": wrong})
        fixed = write(tmp_path / "fixed.yaml", {**base, "destinations": good})
        with RunningDaemon(config, reload_config=lambda: load(fixed)) as running:
            daemon = running.daemon
            drop(tmp_path / "support", "T-1.pdf", pdf(b"ticket 1"))
            wait_until(lambda: daemon.scheduler.lane("support").gate.kind is Pause.CONFIG)
            # Sales keeps sending while support is paused.
            for name in ("S-1.pdf", "S-2.pdf", "ESC-1.pdf"):
                drop(tmp_path / "sales", name, pdf(name.encode()))
            wait_until(lambda: files_in(tmp_path / "sales-done") == {"S-1.pdf", "S-2.pdf"})
            assert daemon.scheduler.lane("sales").gate.open
            assert [e["event"] for e in emulator.events()] == ["sale", "sale"]
            assert support.events() == []
            assert files_in(tmp_path / "support-failed") == set()  # waiting, not failed
            health = daemon.health()
            assert not health.ok
            assert "(support)" in health.reason
            assert "not-the-secret" not in health.reason
            text = daemon.snapshot.text()
            assert "PAUSED (support): FlowFlex refuses the configuration" in text
            state = json.loads((tmp_path / "state" / STATE_FILE).read_text())
            assert state["destinations"]["support"]["paused"] == "config"
            assert state["destinations"]["sales"]["paused"] is None
            shown = "\n".join(render_status(status(load(config))))
            assert "sending to FlowFlex (destination support) is PAUSED for" in shown
            assert "destination sales" not in shown

            daemon.request_reload()  # the right secret: support resumes by itself
            wait_until(lambda: files_in(tmp_path / "support-done") == {"T-1.pdf"})
            wait_until(lambda: "ESC-1.pdf" in files_in(tmp_path / "sales-done"))

    assert sorted(e["event"] for e in support.events()) == ["escalated", "ticket"]
    assert len(emulator.events()) == 2  # sales got only its own


def test_a_rate_limit_is_kept_at_the_emulator_and_its_quota_never_answers_429(
    tmp_path: Path,
) -> None:
    with Emulator(data_dir=tmp_path / "emulator", quota_per_second=10) as limited:
        config = one_inbox(
            tmp_path, {"destinations": {"crm": destination(limited, max_events_per_second=10)}}, 8
        )
        for i in range(40):
            drop(tmp_path / "inbox", f"d-{i:02}.pdf", pdf(b"%d" % i))
        with RunningDaemon(config):
            wait_until(lambda: len(files_in(tmp_path / "inbox-done")) == 40, timeout=30)
        stats = limited.stats()
        times = sorted(e["received_at"] for e in limited.events())

    assert stats["quota_refused"] == 0
    # Measured where the quota is counted. Sends are spaced 1/10 s apart; arrival
    # jitter may bring one more into a given second, never a burst.
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 11, busiest
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 9.5 <= rate <= 10.5, rate  # the limit, within 5 %


def test_a_429_slows_the_whole_destination_and_fails_nothing(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path / "emulator", quota_per_second=5) as limited:
        # No limit configured: FlowFlex has one, and says so with 429s.
        config = one_inbox(tmp_path, {"flowflex": destination(limited)}, 4)
        for i in range(20):
            drop(tmp_path / "inbox", f"d-{i:02}.pdf", pdf(b"%d" % i))
        with RunningDaemon(config) as running:
            wait_until(lambda: len(files_in(tmp_path / "inbox-done")) == 20, timeout=60)
            throttled = running.daemon.limits["default"].throttled
            paused_ever = running.daemon.gate.pauses > 0
            totals = running.daemon.totals
        refused = limited.stats()["quota_refused"]

    assert totals.failed == 0 and totals.done == 20
    assert files_in(tmp_path / "inbox-failed") == set()
    assert len(limited.events()) == 20
    assert refused >= 1 and throttled == refused  # each 429 held the destination
    assert paused_ever is False  # a quota is not an outage: the breaker never opened


def test_a_429_that_outlasts_the_client_retries_is_no_outage(
    tmp_path: Path, emulator: Emulator
) -> None:
    config = one_inbox(tmp_path, {"flowflex": destination(emulator)}, 2)
    slow_down = error(429, "RATE_LIMITED", "over quota", **{"Retry-After": "1"})
    emulator.answer_next(4, slow_down, only="event")  # more than the client's 3 attempts
    drop(tmp_path / "inbox", "a.pdf", pdf(b"a"))
    drop(tmp_path / "inbox", "b.pdf", pdf(b"b"))
    with RunningDaemon(config) as running:
        wait_until(lambda: files_in(tmp_path / "inbox-done") == {"a.pdf", "b.pdf"}, timeout=30)
        gate = running.daemon.gate
        throttled = running.daemon.limits["default"].throttled

    assert gate.pauses == 0  # never paused as if FlowFlex were down
    assert throttled == 4
    assert files_in(tmp_path / "inbox-failed") == set()
    assert len(emulator.events()) == 2
