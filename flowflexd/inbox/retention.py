"""Keeping done and failed for a set number of days: the one place flowflexd deletes files.

Off unless ``keep_done_days`` or ``keep_failed_days`` is set. A pass deletes
only what flowflexd itself put there, by its own record of it: in done, the
files a journal record placed (same name, or the name with its claim's
suffix, and the same size and mtime as when they were sent); in failed, the
files a failure report lists, with the report, once the report is old
enough. Anything else in those folders is never touched. Each deletion is
journalled, and dated folders left empty are removed (never the folder
itself).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flowflexd.config.model import Folder
from flowflexd.inbox.layout import failure_reports, name_tags, suffixed

DAY = 86400.0
Record = Callable[[dict[str, Any]], None]


def _iso_seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _same(path: Path, seen: Any) -> bool:
    """The file there is the one flowflexd moved: same size and mtime as when it was sent."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return isinstance(seen, list) and [info.st_size, info.st_mtime_ns] == seen[:2]


def sweep_done(
    folder: Folder, records: Iterable[dict[str, Any]], *, now: float, record: Record
) -> list[str]:
    """Delete from done what journal records placed there more than keep_done_days ago."""
    if folder.keep_done_days is None:
        return []
    cutoff = now - folder.keep_done_days * DAY
    deleted: list[str] = []
    for entry in records:
        placed = entry.get("placed")
        when = _iso_seconds(entry.get("time"))
        if (
            entry.get("outcome") != "done"
            or entry.get("folder") != str(folder.path)
            or not isinstance(placed, dict)
            or when is None
            or when > cutoff
            or not isinstance(entry.get("claim"), str)
        ):
            continue
        target = Path(str(placed.get("folder")))
        if not target.is_relative_to(folder.done):
            continue  # the folder changed since: not ours to judge
        seen = placed.get("seen")
        gone = []
        for name, signature in seen.items() if isinstance(seen, dict) else []:
            for tag in name_tags(entry["claim"]):
                path = target / suffixed(str(name), tag)
                if _same(path, signature):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        gone.append(str(path))
                    break
        if gone:
            record(_deletion(folder, entry, gone))
            deleted += gone
    _remove_emptied(folder.done, deleted)
    return deleted


def sweep_failed(folder: Folder, *, now: float, record: Record) -> list[str]:
    """Delete from failed the files and reports whose report is older than keep_failed_days."""
    if folder.keep_failed_days is None:
        return []
    cutoff = now - folder.keep_failed_days * DAY
    deleted: list[str] = []
    for report_path in (Path(e.path) for e in failure_reports(folder.failed)):
        try:
            report = json.loads(report_path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError):
            continue
        when = _iso_seconds(report.get("time")) if isinstance(report, dict) else None
        if when is None or when > cutoff or not isinstance(report.get("claim"), str):
            continue
        files = report.get("files")
        gone = []
        for name in files.values() if isinstance(files, dict) else []:
            path = report_path.parent / str(name)
            if "/" in str(name) or not path.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                gone.append(str(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(report_path)
            gone.append(str(report_path))
        record(_deletion(folder, report, gone))
        deleted += gone
    _remove_emptied(folder.failed, deleted)
    return deleted


def _deletion(folder: Folder, source: dict[str, Any], gone: list[str]) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "outcome": "deleted",
        "folder": str(folder.path),
        "file": source.get("file"),
        "claim": source.get("claim"),
        "deleted": gone,
    }


def _remove_emptied(root: Path, deleted: list[str]) -> None:
    """Remove the folders below ``root`` that these deletions left empty; never ``root``."""
    for emptied in sorted({Path(p).parent for p in deleted}, key=lambda p: -len(p.parts)):
        folder = emptied
        while folder != root and folder.is_relative_to(root):
            try:
                os.rmdir(folder)  # only an empty folder goes
            except OSError:
                break
            folder = folder.parent
