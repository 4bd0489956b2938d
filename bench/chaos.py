"""Chaos run: drop files while FlowFlex fails calls and the daemon is SIGKILLed at random.

    python bench/chaos.py --files 10000 --kills 200

Files (some with a JSON sidecar) are dropped into a watched inbox while the
emulator answers a share of API calls with 503/429 (some after the event
fired, as a lost answer). The daemon is killed with SIGKILL at random moments
and restarted each time. At the end every file must be in done byte for
byte, the emulator must have fired exactly one event per file, and no event
may have named a missing asset. Prints a table and writes JSON; exits 1 when
anything was lost or sent twice. The test suite runs it small.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from flowflexd.emulator import Emulator
from flowflexd.inbox.spool import SPARE_PREFIX
from flowflexd.support.log import configure as configure_logging

FLOWFLEXD = str(Path(sys.executable).with_name("flowflexd"))
# The drain ends when every file is in done, or when none has reached done for
# this long. A fifth of the calls failing, and each 429 holding the destination,
# make how long the drain takes a matter of the machine's speed: a fixed limit
# (files / 10 seconds) once ended a run on a slow day while the daemon was
# still delivering, and counted the waiting files as lost.
STALL_SECONDS = 180.0


def write_config(root: Path, emulator: Emulator, workers: int, own_thread: str) -> Path:
    config = {
        "flowflex": {
            "base_url": emulator.url,
            "api_key": emulator.api_key,
            "api_secret": emulator.api_secret,
            "integration_code": emulator.integration_code,
            "timeout_seconds": 10,
        },
        "workers": workers,
        "settle_seconds": 0.2,
        "rescan_seconds": 2,
        "shutdown_grace_seconds": 5,
        "state_dir": str(root / "state"),
        "folders": [
            {
                "path": str(root / "inbox"),
                "done": str(root / "done"),
                "failed": str(root / "failed"),
                "own_thread": own_thread,
                "rules": [
                    {
                        "name": "with-sidecar",
                        "pattern": "S-*.pdf",
                        "event": "chaos.sidecar",
                        "sidecar": "{stem}.json",
                        "sidecar_timeout": 600,
                        "payload": {"assetId": "{file}", "n": "{sidecar.n}"},
                    },
                    {"name": "plain", "pattern": "*.pdf", "event": "chaos.plain"},
                ],
            }
        ],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class Producer(threading.Thread):
    """Writes the files over ``seconds``, recording what each must contain."""

    def __init__(self, inbox: Path, count: int, seconds: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.inbox = inbox
        self.count = count
        self.seconds = seconds
        self.random = random.Random(seed)
        self.expected: dict[str, str] = {}  # name -> sha256

    def run(self) -> None:
        pause = self.seconds / max(self.count, 1)
        for i in range(self.count):
            data = self.random.randbytes(self.random.randint(1, 64) * 1024) + b"\n%%EOF\n"
            with_sidecar = i % 10 == 0
            name = f"S-{i:05}.pdf" if with_sidecar else f"F-{i:05}.pdf"
            if with_sidecar:
                sidecar = json.dumps({"n": i}).encode()
                (self.inbox / f"S-{i:05}.json").write_bytes(sidecar)
                self.expected[f"S-{i:05}.json"] = hashlib.sha256(sidecar).hexdigest()
            # Write under a temporary name, then rename: what a careful exporter does.
            tmp = self.inbox / f"{name}.part"
            tmp.write_bytes(data)
            os.rename(tmp, self.inbox / name)
            self.expected[name] = hashlib.sha256(data).hexdigest()
            time.sleep(pause)


def start_daemon(config: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [FLOWFLEXD, "run", "-c", str(config), "--log-format", "json", "--log-level", "warning"],
        stdout=log,
        stderr=log,
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chaos(
    *,
    files: int,
    kills: int,
    fail_rate: float,
    workers: int,
    seed: int,
    root: Path,
    own_thread: str = "auto",
) -> dict[str, Any]:
    rng = random.Random(seed)
    (root / "inbox").mkdir(parents=True)
    started = time.monotonic()
    with Emulator(data_dir=root / "emulator", fail_rate=fail_rate, seed=seed) as emulator:
        config = write_config(root, emulator, workers, own_thread)
        # Spread the drops over the killing phase, so kills land on files in flight.
        kill_window = max(5.0, kills * 1.0)
        producer = Producer(root / "inbox", files, seconds=kill_window * 0.8, seed=seed)
        with (root / "daemon.log").open("ab") as log:
            daemon = start_daemon(config, log)
            producer.start()
            for _ in range(kills):
                time.sleep(rng.uniform(0.2, 2 * kill_window / max(kills, 1)))
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                daemon = start_daemon(config, log)
            producer.join()
            done_dir = root / "done"
            seen, progressed = -1, time.monotonic()
            while time.monotonic() - progressed < STALL_SECONDS:
                present = len(os.listdir(done_dir)) if done_dir.exists() else 0
                if daemon.poll() is not None:
                    break  # it exited by itself: nothing more will come
                if present >= len(producer.expected):
                    break
                if present != seen:
                    seen, progressed = present, time.monotonic()
                time.sleep(0.5)
            exited_by_itself = daemon.poll()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        events = emulator.events()
        stats = emulator.stats()

    expected = producer.expected
    done = {p.name: p for p in (root / "done").iterdir()} if (root / "done").exists() else {}
    intact = {
        name
        for name, digest in expected.items()
        if name in done and sha256_file(done[name]) == digest
    }
    events_per_file: dict[str, int] = {}
    for event in events:
        names = [a["filename"] for a in event["assets"].values()]
        for name in names:
            events_per_file[name] = events_per_file.get(name, 0) + 1
    main_files = [n for n in expected if n.endswith(".pdf")]
    duplicated = sum(1 for n in main_files if events_per_file.get(n, 0) > 1)
    unsent = sum(1 for n in main_files if events_per_file.get(n, 0) == 0)
    leftovers = {
        "inbox": sorted(os.listdir(root / "inbox")) if (root / "inbox").exists() else [],
        "failed": sorted(os.listdir(root / "failed")) if (root / "failed").exists() else [],
    }
    leftovers["inbox"] = [n for n in leftovers["inbox"] if n != ".flowflexd"]
    work = root / "inbox" / ".flowflexd" / "work"
    claims = (
        [work / n for n in os.listdir(work) if not n.startswith(SPARE_PREFIX)]
        if work.exists()
        else []
    )
    # A file still waiting (in the inbox, claimed, or set aside in failed) is not
    # lost: it is reported below as left over. Lost is a file that is nowhere.
    somewhere = set(leftovers["inbox"]) | set(leftovers["failed"])
    for claim in claims:
        somewhere.update(os.listdir(claim))
    return {
        "files": len(main_files),
        "sidecars": len(expected) - len(main_files),
        "kills": kills,
        "fail_rate": fail_rate,
        "lost": sum(1 for name in expected if name not in intact and name not in somewhere),
        "duplicated": duplicated,
        "unsent": unsent,
        "events": len(events),
        "asset_missing": stats["asset_missing"],
        "injected_failures": stats["injected_503"] + stats["injected_429"],
        "lost_answers": stats["injected_after_processing"],
        "replayed_answers": stats["event_replays"],
        "left_in_inbox": len(leftovers["inbox"]),
        "left_in_failed": len(leftovers["failed"]),
        # Claims still in the work area; emptied folders kept for reuse are not claims.
        "left_claimed": len(claims),
        "daemon_exited": exited_by_itself,  # its exit status, had it stopped unasked
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--fail-rate", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--own-thread",
        choices=("auto", "always", "never"),
        default="auto",
        help="the inbox's own_thread (always: its calls in a thread of its own, as on a share)",
    )
    parser.add_argument("--json", type=Path, help="write the result here too")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    configure_logging(level="warning")
    root = Path(tempfile.mkdtemp(prefix="flowflexd-chaos-"))
    result = chaos(
        files=args.files,
        kills=args.kills,
        fail_rate=args.fail_rate,
        workers=args.workers,
        seed=args.seed,
        root=root,
        own_thread=args.own_thread,
    )
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    bad = result["lost"] or result["duplicated"] or result["unsent"] or result["asset_missing"]
    bad = bad or result["left_in_inbox"] or result["left_in_failed"] or result["left_claimed"]
    bad = bad or result["daemon_exited"] is not None
    if not args.keep and not bad:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"working folder kept: {root}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
