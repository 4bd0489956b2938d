"""``flowflexd replay``: failed files back into their inbox, their reports set aside."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from flowflexd.config.model import Config, Folder
from flowflexd.errors import UserError
from flowflexd.inbox.layout import (
    REPLAYED_DIR,
    REPORT_SUFFIX,
    name_tags,
    report_name,
    suffixed,
)
from flowflexd.rules.sanitize import printable
from flowflexd.support.durable import fsync_dir, move_no_replace


def _move_free(src: Path, folder: Path, name: str) -> Path:
    for tag in name_tags(uuid.uuid4().hex):
        dst = folder / suffixed(name, tag)
        try:
            move_no_replace(src, dst)
        except FileExistsError:
            continue
        return dst
    raise OSError(f"no free name for {name} in {folder}")


def _folder_of(config: Config, path: Path) -> Folder:
    for folder in config.folders:
        if (
            path.parent.is_relative_to(folder.failed)
            and REPLAYED_DIR not in (path.parent.relative_to(folder.failed).parts[:1])
        ):
            return folder
    raise UserError(
        f"{printable(str(path))} is not in a failed folder of this configuration",
        hint="give the path of a file inside a folder's failed folder",
    )


def _home(folder: Folder, report: dict[str, Any]) -> Path:
    """The folder the file came from: its subfolder of the inbox, made again if gone."""
    below = report.get("dir")
    if not isinstance(below, str) or not below:
        return folder.path
    parts = below.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return folder.path  # not a plain path below the inbox: the inbox itself
    home = folder.path.joinpath(*parts)
    home.mkdir(parents=True, exist_ok=True)
    return home


def _report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def replay_one(config: Config, given: Path) -> list[str]:
    """Move one failed file (and what travelled with it) back; returns what moved."""
    path = Path(os.path.abspath(given))
    if path.name.endswith(REPORT_SUFFIX):
        report_path = path
        report = _report(report_path)
        path = path.with_name(
            str(report.get("files", {}).get("file") or path.name[: -len(REPORT_SUFFIX)])
        )
    else:
        report_path = path.with_name(report_name(path.name))
        report = _report(report_path)
    folder = _folder_of(config, path)
    if not os.path.lexists(path):
        raise UserError(f"{printable(str(path))} does not exist")
    files = report.get("files") if isinstance(report.get("files"), dict) else None
    raw_originals = report.get("members")
    originals: dict[str, Any] = raw_originals if isinstance(raw_originals, dict) else {}
    members: dict[str, str] = dict(files) if files else {"file": path.name}
    moved: list[str] = []
    # Companions first, so the file never waits for a sidecar that is still in failed.
    home = _home(folder, report)
    for role in sorted(members, key=lambda r: r == "file"):
        src = path.parent / members[role]
        if not os.path.lexists(src):
            continue
        dst = _move_free(src, home, str(originals.get(role, members[role])))
        moved.append(f"{printable(str(src))} -> {printable(str(dst))}")
    fsync_dir(home)
    if os.path.lexists(report_path):
        aside = folder.failed / REPLAYED_DIR
        aside.mkdir(exist_ok=True)
        dst = _move_free(report_path, aside, report_path.name)
        moved.append(f"{printable(str(report_path))} -> {printable(str(dst))}")
    fsync_dir(path.parent)
    return moved
