"""Prometheus metrics and a health check, served on ``metrics.listen`` (off unless set).

Counters and histograms are fed as things happen (a file finished, an API
answer, an upload timed); gauges are read at scrape time from the daemon's
snapshot, which the scheduler thread replaces whole, so a scrape never
touches the scheduler's own structures. ``/healthz`` answers 200 while every
worker and folder watch runs and FlowFlex has not refused our credentials, else
503, each with a one-line JSON reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from flowflexd.engine.outcomes import Verdict
from flowflexd.engine.snapshot import Pause, Snapshot

log = structlog.get_logger("flowflexd")

# Seconds: a presigned upload or an event across a WAN, up to FlowFlex's 25 MB.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str


class Metrics:
    """What flowflexd counts for Prometheus."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        health: Callable[[], Health],
        journal_path: str,
        destinations: Callable[[], list[str]] = lambda: ["default"],
    ) -> None:
        self.registry = CollectorRegistry()
        self._destinations = destinations
        self.snapshot = snapshot
        self.health = health
        self.journal_path = journal_path
        self.started = time.time()
        self.last_event: float | None = None  # wall clock of the last event FlowFlex accepted
        self.files = Counter(
            "flowflexd_files",
            "Files finished, by folder, rule, destination, outcome (done, failed) and failure code",
            ["folder", "rule", "destination", "outcome", "code"],
            registry=self.registry,
        )
        self.retries = Counter(
            "flowflexd_retries",
            "Attempts at a claimed file that did not finish and will be made again, by why",
            ["folder", "why"],
            registry=self.registry,
        )
        self.answers = Counter(
            "flowflexd_api_answers",
            "FlowFlex answers by destination, call (upload-url, upload, event) and HTTP status "
            '("none": no answer: network, timeout, TLS)',
            ["destination", "call", "status"],
            registry=self.registry,
        )
        self.upload_seconds = Histogram(
            "flowflexd_upload_seconds",
            "Seconds to upload one file through its presigned URL",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.event_seconds = Histogram(
            "flowflexd_event_seconds",
            "Seconds until FlowFlex answered one event",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Live(self))

    # ------------------------------------------------------ fed as it happens

    def finished(
        self, folder: str, rule: str, destination: str, verdict: Verdict, code: str
    ) -> None:
        if verdict is Verdict.DONE:
            self.files.labels(folder, rule, destination, "done", "").inc()
        elif verdict is Verdict.FAILED:
            self.files.labels(folder, rule, destination, "failed", code).inc()
        elif verdict is not Verdict.GONE:
            self.retries.labels(folder, verdict.value).inc()

    def answered(self, destination: str, call: str, status: int | None) -> None:
        self.answers.labels(destination, call, "none" if status is None else str(status)).inc()

    def timed(self, call: str, seconds: float) -> None:
        if call == "upload":
            self.upload_seconds.observe(seconds)
        elif call == "event":
            self.event_seconds.observe(seconds)
            self.last_event = time.time()

    @property
    def destinations(self) -> list[str]:
        return self._destinations()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _Live(Collector):
    """Gauges read from the daemon's snapshot at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot()
        stages = {
            "waiting": "Files complete and waiting to be taken",
            "settling": "Files still being written or settling",
            "in_flight": "Files claimed: being sent, or waiting for their next attempt",
        }
        for stage, help_text in stages.items():
            gauge = GaugeMetricFamily(f"flowflexd_files_{stage}", help_text, labels=["folder"])
            for folder in snap.by_folder:
                gauge.add_metric([folder.folder], getattr(folder, stage))
            yield gauge
        # Files in an inbox the daemon cannot use are not seen, so no other gauge shows them.
        unavailable = GaugeMetricFamily(
            "flowflexd_inbox_unavailable",
            "1 while the daemon cannot take an inbox up (gone, no write access ...); its files "
            "wait unseen: the journal and flowflexd status say why",
            labels=["folder"],
        )
        for folder in snap.by_folder:
            unavailable.add_metric([folder.folder], 1.0 if folder.folder in snap.offline else 0.0)
        yield unavailable
        yield GaugeMetricFamily(
            "flowflexd_oldest_waiting_seconds",
            "Age of the oldest file waiting to be taken (0: none); a stuck watcher shows here",
            value=snap.oldest_waiting_s(),
        )
        since = self.metrics.last_event or self.metrics.started
        yield GaugeMetricFamily(
            "flowflexd_seconds_since_last_event",
            "Seconds since FlowFlex last accepted an event (since start, before the first)",
            value=max(0.0, time.time() - since),
        )
        paused = GaugeMetricFamily(
            "flowflexd_paused",
            "1 while sending to a destination is paused, by why: outage (FlowFlex unreachable) "
            "or config (FlowFlex refuses our credentials)",
            labels=["destination", "reason"],
        )
        now_paused = dict(snap.paused_destinations)
        for destination in self.metrics.destinations:
            for kind in Pause:
                value = 1.0 if now_paused.get(destination) is kind else 0.0
                paused.add_metric([destination, kind.value], value)
        yield paused
        try:
            size = os.stat(self.metrics.journal_path).st_size
        except OSError:
            size = 0
        yield GaugeMetricFamily(
            "flowflexd_journal_bytes", "Size of the current journal file", value=size
        )
        health = self.metrics.health()
        yield GaugeMetricFamily(
            "flowflexd_healthy", "1 while /healthz answers 200", value=1.0 if health.ok else 0.0
        )


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP on one address, on threads of their own."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="flowflexd-metrics", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            health = self.metrics.health()
            body: dict[str, Any] = {"ok": health.ok, "reason": health.reason}
            self._answer(200 if health.ok else 503, json.dumps(body).encode() + b"\n")
        else:
            self._answer(404, b'{"ok": false, "reason": "try /metrics or /healthz"}\n')

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s would drown the journal
