"""The append-only record of outcomes: one JSON line per file, fsynced.

Each line: time, outcome (done or failed), folder, file, sha256, rule, event,
idempotency key, assetIds, and the API's answer or the error. A line that a
crash cut short is skipped by readers; a claim finished again after a crash
may appear twice, with the same claim id.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"


class Journal:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / JOURNAL_NAME
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        # A journal created just now must survive a power cut with its name.
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        data = line.encode("utf-8", "surrogateescape")
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def outcomes_in_tail(path: Path, claims: set[str], tail_bytes: int = 16 << 20) -> dict[str, Any]:
    """The last record of each of ``claims`` within the journal's last ``tail_bytes``.

    Claims left by a crash are recent, so their records, if written at all,
    are near the end; reading only the tail keeps a start after a crash fast
    however long the journal has grown.
    """
    found: dict[str, Any] = {}
    if not claims:
        return found
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - tail_bytes))
            data = handle.read()
    except FileNotFoundError:
        return found
    for raw in data.splitlines():
        try:
            entry = json.loads(raw.decode("utf-8", "surrogateescape"))
        except ValueError:
            continue  # a partial first line, or one a crash cut short
        if isinstance(entry, dict) and entry.get("claim") in claims:
            found[entry["claim"]] = entry
    return found


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every whole record in a journal, oldest first."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            try:
                entry = json.loads(raw.decode("utf-8", "surrogateescape"))
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry
