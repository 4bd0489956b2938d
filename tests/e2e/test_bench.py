"""The benchmark still runs end to end: every part, tiny sizes, no timing asserted.

Timings belong to ``bench/run.py`` itself; this only keeps it from rotting
between full runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowflexd.commands.preflight import inotify_queue_size

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def bench_part(tmp_path: Path, part: str, *args: str) -> dict[str, Any]:
    """``--only PART``: what it wrote for that part, once it exited 0."""
    out = tmp_path / f"{part}.json"
    done = bench("--only", part, *args, "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(out.read_text())[part]
    return result


def test_the_benchmark_runs_every_part_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench(
        *("--files", "20", "--repeat", "1", "--backlog", "50", "--drops", "3"),
        *("--idle-seconds", "1", "--settle", "0.5", "--json", str(out)),
    )

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    rows = result["throughput"]
    assert [(r["latency_ms"], r["workers"]) for r in rows] == [(0, 8), (0, 4), (50, 8)]
    for row in rows:
        assert row["files"] == 20
        assert row["sdk_files_per_s"] > 0 and row["flowflexd_files_per_s"] > 0
        assert row["vs_sdk"] > 0 and row["vs_floor"] > 0
    assert result["latency"]["drops"] == 3
    assert result["big_files"]["peak_rss_mb"] > 0
    assert result["idle"]["folders"] == 20
    assert result["backlog"]["files"] == 50
    assert "| 50 ms | 8 |" in done.stdout  # the table a user reads


def test_the_worker_sweep_measures_0_ms_only_at_each_count(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    done = bench(*("--sweep", "1", "2", "--files", "20", "--repeat", "1", "--json", str(out)))

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert set(result) == {"when", "machine", "inotify_max_queued_events", "throughput"}
    size = inotify_queue_size()
    assert size is not None and result["inotify_max_queued_events"] == size
    rows = result["throughput"]
    assert [(r["latency_ms"], r["workers"]) for r in rows] == [(0, 1), (0, 2)]
    assert all(r["files"] == 20 and r["flowflexd_files_per_s"] > 0 for r in rows)


def test_the_scaling_checks_run_and_report_cpu_per_file_by_quarter(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    done = bench(
        *("--only", "sidecar_backlog", "ignored_idle", "--sidecar-backlog", "300"),
        *("--ignored", "200", "--idle-seconds", "1", "--settle", "0.5", "--json", str(out)),
    )

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    drained = result["sidecar_backlog"]
    assert (drained["files"], drained["sidecars"]) == (300, True)
    assert drained["peak_rss_mb"] > 0
    assert set(drained) >= {"cpu_ms_per_file_first_quarter", "cpu_ms_per_file_last_quarter"}
    idle = result["ignored_idle"]
    assert idle["ignored_files"] == 200
    assert idle["cpu_seconds_per_minute"] >= 0


def test_the_cpu_part_measures_flowflexd_the_sdk_the_floors_the_protocol_and_the_least_daemon(
    tmp_path: Path,
) -> None:
    cpu = bench_part(tmp_path, "cpu", "--cpu-files", "40", "--repeat", "1")

    assert cpu["files"] == 40
    assert cpu["latency_ms"] == 0
    measured = cpu["cpu_ms_per_file"]
    assert set(measured) == {
        "flowflexd", "flowflexd_1_worker", "sdk", "requests", "urllib3", "http_client", "client",
        "files", "protocol", "least_daemon",
    }  # fmt: skip
    assert all(ms > 0 for ms in measured.values())
    assert set(cpu["flowflexd_vs"]) == {"sdk", "requests", "urllib3", "http_client"}
    assert cpu["client_vs_http_client"] == pytest.approx(
        measured["client"] / measured["http_client"], abs=0.01
    )
    both = cpu["http_client_and_files_ms"]
    assert both == pytest.approx(measured["http_client"] + measured["files"], abs=0.01)
    assert cpu["flowflexd_vs_http_client_and_files"] == pytest.approx(
        measured["flowflexd"] / both, abs=0.01
    )
    assert cpu["protocol_vs_http_client"] == pytest.approx(
        measured["protocol"] / measured["http_client"], abs=0.01
    )
    assert cpu["flowflexd_vs_protocol"] == pytest.approx(
        measured["flowflexd"] / measured["protocol"], abs=0.01
    )
    assert cpu["least_daemon_vs_http_client"] == pytest.approx(
        measured["least_daemon"] / measured["http_client"], abs=0.01
    )
    assert cpu["flowflexd_vs_least_daemon"] == pytest.approx(
        measured["flowflexd"] / measured["least_daemon"], abs=0.01
    )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to place processes")
def test_the_one_core_part_measures_flowflexd_and_the_floor_free_and_on_one_cpu(
    tmp_path: Path,
) -> None:
    part = bench_part(tmp_path, "one_core", "--cpu-files", "30", "--repeat", "1")

    measured = part["cpu_ms_per_file"]
    assert set(measured) == {"flowflexd", "flowflexd_one_cpu", "http_client", "http_client_one_cpu"}
    assert all(ms > 0 for ms in measured.values())
    assert part["cpus"]["emulator"] != part["cpus"]["one_cpu"]
    assert part["one_cpu_vs_free"]["cpu"] == pytest.approx(
        measured["flowflexd_one_cpu"] / measured["flowflexd"], abs=0.01
    )
    assert part["flowflexd_vs_http_client"]["one_cpu"] == pytest.approx(
        measured["flowflexd_one_cpu"] / measured["http_client_one_cpu"], abs=0.01
    )


def test_the_counts_part_counts_python_and_system_calls_per_file(tmp_path: Path) -> None:
    part = bench_part(tmp_path, "counts", "--count-files", "10")

    assert part["files"] == [10, 30]
    calls = part["python_calls_per_file"]
    assert set(calls) == {"flowflexd", "least_daemon"}
    assert all(n > 100 for n in calls.values())  # three HTTP calls alone take hundreds
    modules = part["flowflexd_python_calls_by_module"]
    assert "builtins" in modules and any(m.startswith("flowflexd/") for m in modules)
    assert set(part["switches_per_file"]) == {"flowflexd", "flowflexd_1_worker", "least_daemon"}
    for program in ("flowflexd", "flowflexd_1_worker", "least_daemon"):
        # Every file wakes a worker at least once: a switch per file or more.
        assert part["switches_per_file"][program]["voluntary"] >= 1
        assert set(part["cpu_ms_per_file"][program]) == {"user", "sys"}
    if shutil.which("strace") is None:
        assert part["syscalls_per_file"] == "strace is not installed"
        return
    syscalls = part["syscalls_per_file"]
    for program in ("flowflexd", "least_daemon"):
        kinds = syscalls[program]
        assert kinds["all"] == pytest.approx(
            kinds["futex"] + kinds["fsync"] + kinds["other"], abs=0.2
        )
    # Counted, not timed: the least daemon fsyncs exactly five times a file, by its design.
    assert syscalls["least_daemon"]["fsync"] == 5.0
    assert syscalls["flowflexd"]["fsync"] > 0
