"""Read-only views for people: ``explain`` (what would happen to a file) and ``status``."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowflexd.config.model import STATE_FILE, Config, Folder
from flowflexd.engine import journal
from flowflexd.engine.stall import read_note
from flowflexd.errors import FileRejected
from flowflexd.inbox import layout
from flowflexd.inbox.completeness import Writers, examine, has_format_check
from flowflexd.inbox.mounts import below, share_of
from flowflexd.inbox.reading import describe_mode, read_manifest, read_regular
from flowflexd.inbox.spool import SIDECAR_MAX_BYTES, Spool
from flowflexd.rules.matching import (
    Match,
    Rule,
    companion_patterns,
    companions,
    could_be_companion,
    document_name,
    event_name,
    is_temporary_name,
    match,
    payload,
    read_sidecar,
)
from flowflexd.rules.sanitize import printable
from flowflexd.rules.templates import MISSING

# ------------------------------------------------------------------- explain


def folder_for(config: Config, path: Path) -> Folder | None:
    """The folder that takes ``path``: in its inbox, or below it when it is recursive."""
    for folder in config.folders:
        if path.parent == folder.path or (
            folder.recursive and path.parent.is_relative_to(folder.path)
        ):
            return folder
    return None


def _read_sidecar(rule: Rule, path: Path) -> Any:
    raw, _ = read_regular(path, limit=SIDECAR_MAX_BYTES, what=f"sidecar {path.name}")
    return read_sidecar(rule, raw, path.name)


def explain(folder: Folder, path: Path) -> list[str]:
    """What flowflexd would do with ``path`` in ``folder``, as lines of text, no network."""
    name = path.name
    shown = printable(name)
    out = [f"{printable(str(path))}:"]
    if is_temporary_name(name):
        return [*out, "  never taken: a temporary, hidden or desktop-metadata name"]
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        out.append("  (not there now; explained by its name alone)")
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = describe_mode(info.st_mode)
        return [*out, f"  set aside to failed unread: it is a {kind}, not a regular file"]
    if info is not None and info.st_size == 0:
        out.append("  empty: waits until it has content (0-byte files are never taken)")
    found = _match_at(folder, path)
    if found is None:
        companion_of = could_be_companion(companion_patterns(folder.rules), name)
        if companion_of is not None:
            return [
                *out,
                f"  a sidecar or attachment of rule {companion_of.name!r}: "
                "it travels with its file and is never sent alone",
            ]
        tried = ", ".join(r.pattern or r.regex or r.name for r in folder.rules)
        fate = "goes to failed" if folder.unmatched == "fail" else "stays in the inbox"
        return [
            *out,
            f"  no rule takes it (tried: {tried}); it {fate} (unmatched: {folder.unmatched})",
        ]
    rule = found.rule
    out.extend(_about_rule(found, path, info))
    if rule.manifest:
        return [*out, *_manifest(found, path)]
    try:
        wanted = companions(found)
        sidecar: Any = MISSING
        assets = {"file": f"<assetId of {shown}>"}
        for role, cname in wanted.items():
            there = (path.parent / cname).exists()
            need = "required" if role != "sidecar" or rule.sidecar_required else "optional"
            waits = rule.marker_timeout if role == "marker" else rule.sidecar_timeout
            out.append(
                f"  {role}: {printable(cname)} ({need}, {'present' if there else 'not there yet'}; "
                f"waits up to {waits:g} s)"
            )
            if role.startswith("attach."):
                assets[role] = f"<assetId of {printable(cname)}>"
            elif role == "sidecar" and there:
                sidecar = _read_sidecar(rule, path.parent / cname)
        event = event_name(found, sidecar=sidecar)
        body = payload(found, sidecar=sidecar, assets=assets)
    except FileRejected as err:
        return [*out, f"  would fail: {err.code}: {err.message}"]
    out.append(f"  event: {printable(event)}")
    out.append("  payload:")
    text = json.dumps(body, indent=2, ensure_ascii=False)
    out.extend(f"    {line}" for line in text.splitlines())
    return out


ROWS_SHOWN = 5


def _about_rule(found: Match, path: Path, info: os.stat_result | None) -> list[str]:
    """The rule that takes a file, and the checks it must pass before it is taken."""
    out: list[str] = []
    rule = found.rule
    how = f"regex {rule.regex}" if rule.regex else f"pattern {rule.pattern}"
    if rule.manifest:
        how = f"manifest {rule.pattern}"
    out.append(f"  rule: {rule.name} ({how})")
    if found.groups:
        out.append(f"  groups: {json.dumps(dict(found.groups), ensure_ascii=False)}")
    if info is not None and info.st_size > 0:
        out.extend(_wholeness(path, rule))
    if rule.folder_marker is not None:
        there = (path.parent / rule.folder_marker).is_file()
        out.append(
            f"  folder marker: {printable(rule.folder_marker)} "
            f"({'present' if there else 'not there yet'}; waits up to {rule.marker_timeout:g} s)"
        )
    return out


def _manifest(found: Match, path: Path) -> list[str]:
    """A manifest's rows: the document each names, and what the first one's event would be."""
    try:
        rows, _ = read_manifest(found.rule, path, path.name)
    except FileRejected as err:
        return [f"  would fail: {err.code}: {err.message}"]
    except FileNotFoundError:
        return ["  a manifest: its rows are read once it is there"]
    out = [f"  a manifest of {len(rows)} rows, one event each (up to {ROWS_SHOWN} shown):"]
    for number, row in rows[:ROWS_SHOWN]:
        try:
            name = document_name(found, number, row)
        except FileRejected as err:
            out.append(f"    row {number}: bad: {err.message}")
            continue
        there = "present" if (path.parent / name).is_file() else "not there yet"
        out.append(f"    row {number}: {printable(name)} ({there})")
        if number == 1:
            one = found.for_row(number, row, name)
            try:
                body = payload(one, assets={"file": f"<assetId of {printable(name)}>"})
                out.append(f"    row 1's event: {printable(event_name(one))}")
                out.extend(f"      {line}" for line in json.dumps(body, indent=2).splitlines())
            except FileRejected as err:
                out.append(f"    row 1 would fail: {err.code}: {err.message}")
    return out


def _match_at(folder: Folder, path: Path) -> Match | None:
    """The rule that takes ``path``, knowing which folder below the inbox it is in."""
    where = "" if path.parent == folder.path else path.parent.relative_to(folder.path).as_posix()
    return match(folder.rules, path.name, where)


def _wholeness(path: Path, rule: Rule) -> list[str]:
    """Whether the file is whole by each check the daemon makes before taking it."""
    seen = examine(path, verify_format=rule.verify_format)
    if seen is None:
        return ["  whole: cannot open it to check (gone, unreadable, or a link)"]
    later = f"fails as INCOMPLETE_FILE after {rule.incomplete_timeout:g} s (incomplete_timeout)"
    writer = {
        Writers.NONE: "no other process has it open for writing",
        Writers.OPEN: "NO: another process still has it open for writing; it waits until closed",
        Writers.UNKNOWN: f"cannot tell ({seen.writer.why}); settling alone decides",
    }[seen.writer.writers]
    if seen.unwritten:
        end = f"NO: its last {seen.unwritten:,} bytes were never written; it waits, then {later}"
    else:
        end = "written to its last byte"
    if not rule.verify_format:
        form = "not checked (verify_format: false)"
    elif not has_format_check(path.name):
        form = "no check for this type"
    elif seen.format_problem:
        form = f"NO: {seen.format_problem}; it waits, then {later}"
    elif seen.unwritten:
        form = "checked once its end is written"
    else:
        form = "its trailer is there"
    return ["  whole:", f"    writers: {writer}", f"    end: {end}", f"    format: {form}"]


# -------------------------------------------------------------------- status


@dataclass
class FolderStatus:
    path: Path
    online: bool
    waiting: int = 0
    unmatched: int = 0
    oldest_waiting_s: float | None = None
    in_progress: int = 0
    done: int = 0
    failed: int = 0
    failed_now: int = 0  # files in the failed folder now (failed: the journal's history)
    daemon_pid: int | None = None  # the flowflexd holding the inbox's lock, if one runs
    paused: str | None = None  # that daemon's pause: "config" or "outage"
    paused_reason: str | None = None
    paused_since: str | None = None
    destination: str | None = None  # the paused destination, named when there are several
    # A running daemon that cannot take this inbox up (no write access, gone ...): its
    # pid, why, the fix and since when. It holds no lock there, so daemon_pid is None.
    unavailable_to: int | None = None
    unavailable_reason: str | None = None
    unavailable_hint: str | None = None
    unavailable_since: str | None = None
    # A running daemon held by a share that does not answer, this folder on it: its pid,
    # the folder it waits on and since when (wall clock). Nothing here is looked at.
    held_by: int | None = None
    held_at: str | None = None
    held_since: float | None = None
    # False: the running daemon found this folder's share not answering; nothing here is
    # looked at, as that would wait too (the reason is unavailable_reason).
    answering: bool = True
    latest_failures: list[dict[str, Any]] = field(default_factory=list)
    by_folder: dict[str, int] = field(default_factory=dict)  # waiting per subfolder ("" top)


def _outcomes(state_dir: Path) -> dict[str, dict[str, str]]:
    """folder -> claim id -> last outcome, from the journal (a claim may repeat after a crash)."""
    seen: dict[str, dict[str, str]] = {}
    for entry in journal.read(state_dir):
        folder, claim, outcome = entry.get("folder"), entry.get("claim"), entry.get("outcome")
        # A retention deletion is no outcome: the file was done (or failed) all the same.
        if isinstance(folder, str) and isinstance(claim, str) and outcome in ("done", "failed"):
            seen.setdefault(folder, {})[claim] = outcome
    return seen


def _latest_reports(failed: Path, count: int) -> list[dict[str, Any]]:
    reports = layout.failure_reports(failed)
    reports.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    out = []
    for entry in reports[:count]:
        try:
            data = json.loads(Path(entry.path).read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def _count_reports(failed: Path) -> int:
    return len(layout.failure_reports(failed))


def lock_holder(lock: Path, locks_file: str = "/proc/locks") -> int | None:
    """The pid holding ``lock`` (a daemon's inbox lock), from the kernel's lock table.

    Read, never taken: a status must not make a daemon starting that moment
    think the inbox is already watched. An entry matches by inode, and by the
    pid the daemon wrote into the lock file where that is readable, else by
    device too (on overlayfs the table shows the upper layer's device).
    """
    try:
        info = os.stat(lock)
        with open(locks_file, encoding="ascii", errors="replace") as handle:
            table = handle.read().splitlines()
    except OSError:
        return None
    try:
        written = int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        written = 0
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    for line in table:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146645 0 EOF" ("->" marks a waiter)
        if "->" in fields or fields[1:2] != ["FLOCK"] or len(fields) < 6:
            continue
        pid, (where, _, inode) = fields[4], fields[5].rpartition(":")
        if not pid.isdigit() or inode != str(info.st_ino):
            continue
        if int(pid) == written or (not written and where == device):
            return int(pid)
    return None


def folder_status(
    folder: Folder, outcomes: dict[str, str], now: float, locks_file: str = "/proc/locks"
) -> FolderStatus:
    status = FolderStatus(path=folder.path, online=folder.path.is_dir())
    if not status.online:
        return status
    spool = Spool(folder)
    files = spool.waiting()
    patterns = companion_patterns(folder.rules)
    taken_along: set[str] = set()
    oldest: float | None = None
    for path, info in files:
        below, name = layout.split_path(path)
        found = match(folder.rules, name, below)
        if found is None:
            continue
        status.waiting += 1
        status.by_folder[below] = status.by_folder.get(below, 0) + 1
        # ctime: when it arrived here; a copy keeps its source's mtime, decades old maybe.
        oldest = info.st_ctime if oldest is None else min(oldest, info.st_ctime)
        with contextlib.suppress(FileRejected):
            taken_along.update(layout.join_path(below, c) for c in companions(found).values())
    status.unmatched = sum(
        1
        for path, _ in files
        if match(folder.rules, *reversed(layout.split_path(path))) is None
        and path not in taken_along
        and could_be_companion(patterns, layout.split_path(path)[1]) is None
    )
    status.oldest_waiting_s = round(now - oldest) if oldest is not None else None
    status.in_progress = spool.claimed_count()
    status.done = sum(1 for o in outcomes.values() if o == "done")
    status.failed = sum(1 for o in outcomes.values() if o == "failed")
    status.failed_now = _count_reports(folder.failed)
    status.daemon_pid = lock_holder(layout.lock_file(folder.path), locks_file)
    status.latest_failures = _latest_reports(folder.failed, 5)
    return status


def status(config: Config, now: float | None = None) -> list[FolderStatus]:
    now = time.time() if now is None else now
    outcomes = _outcomes(config.state_dir)
    held = _held(config.state_dir)
    state = _daemon_state(config.state_dir)
    silent = _silent_shares(state)
    rows = [
        _held_status(f, held)
        if held is not None and _on_share(f, held["share"])
        else FolderStatus(path=f.path, online=True, answering=False)
        if any(_on_share(f, share) for share in silent)
        else folder_status(f, outcomes.get(str(f.path), {}), now)
        for f in config.folders
    ]
    several = len(config.destinations) > 1
    for row, folder in zip(rows, config.folders, strict=True):
        if state is None:
            continue
        unavailable = state.get("unavailable")
        away = unavailable.get(str(folder.path)) if isinstance(unavailable, dict) else None
        if row.daemon_pid is None and isinstance(away, dict) and _alive(state.get("pid")):
            row.unavailable_to = state["pid"]
            row.unavailable_reason = away.get("reason")
            row.unavailable_hint = away.get("hint")
            row.unavailable_since = away.get("since")
        if row.daemon_pid != state.get("pid"):
            continue
        # The pause of the destination this folder sends to (older daemons: the one pause).
        paused = state.get("destinations", {}).get(folder.destination, state)
        if isinstance(paused, dict) and paused.get("paused"):
            row.paused = str(paused["paused"])
            row.paused_reason = paused.get("reason")
            row.paused_since = paused.get("paused_since")
            row.destination = folder.destination if several else None
    return rows


def _held(state_dir: Path) -> dict[str, Any] | None:
    """What a running daemon held by a share noted, with the share's mount."""
    note = read_note(state_dir)
    if note is None or not _alive(note.get("pid")):
        return None  # killed while held: nothing holds it now
    return {**note, "share": share_of(Path(note["folder"])) or note["folder"]}


def _silent_shares(state: dict[str, Any] | None) -> set[str]:
    """The shares of the inboxes a running daemon found not answering: never looked at."""
    if state is None or not _alive(state.get("pid")):
        return set()
    unavailable = state.get("unavailable")
    if not isinstance(unavailable, dict):
        return set()
    return {
        share_of(Path(path)) or path
        for path, away in unavailable.items()
        if isinstance(away, dict) and away.get("answering") is False
    }


def _on_share(folder: Folder, share: str) -> bool:
    """Whether the inbox, its done or its failed folder is on ``share``, by name alone."""
    return any(below(str(path), share) for path in (folder.path, folder.done, folder.failed))


def _held_status(folder: Folder, held: dict[str, Any]) -> FolderStatus:
    since = held.get("since")
    return FolderStatus(
        path=folder.path,
        online=True,
        held_by=held["pid"],
        held_at=held["folder"],
        held_since=since if isinstance(since, int | float) else None,
    )


def _daemon_state(state_dir: Path) -> dict[str, Any] | None:
    """The daemon's own record (its pid and any pause), while it says it runs."""
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("running") else None


def _alive(pid: object) -> bool:
    """Whether ``pid`` is a running flowflexd: a killed daemon's state still says it runs."""
    if not isinstance(pid, int):
        return False
    try:
        return b"flowflexd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # hidden from this user (hidepid): there, it said so itself


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _folder_mark(row: FolderStatus) -> str:
    if row.held_by or not row.answering:
        return "  (NOT ANSWERING)"
    if not row.online:
        return "  (MISSING)"
    return "  (NOT WATCHED)" if row.unavailable_to else ""


def _daemon_cell(row: FolderStatus) -> str:
    if row.held_by:
        return f"pid {row.held_by}, held by it"
    if row.daemon_pid:
        return f"pid {row.daemon_pid}"
    return f"pid {row.unavailable_to}, cannot use it" if row.unavailable_to else "not running"


def render_status(rows: Iterable[FolderStatus]) -> list[str]:
    rows = list(rows)
    header = (
        "folder",
        "daemon",
        "waiting",
        "oldest",
        "in progress",
        "done",
        "failed",
        "in failed now",
        "unmatched",
    )
    table = [header] + [
        (
            str(r.path) + _folder_mark(r),
            _daemon_cell(r),
            str(r.waiting),
            _age(r.oldest_waiting_s),
            str(r.in_progress),
            str(r.done),
            str(r.failed),
            str(r.failed_now),
            str(r.unmatched),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    ]
    for r in rows:
        if r.held_by:
            lines.append("")
            since = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.held_since))
                if r.held_since
                else "?"
            )
            lines.append(
                f"{r.path} is on a share that does not answer: flowflexd (pid {r.held_by}) "
                f"has waited on {printable(str(r.held_at))} since {since}, and every folder "
                "with it; its counts are not shown, as looking would wait too"
            )
            lines.append(
                "  hint: bring the share's server back, or force it off (umount -f; for FUSE, "
                "abort its connection): the others go on at once"
            )
        if r.unavailable_to:
            lines.append("")
            lines.append(
                f"flowflexd (pid {r.unavailable_to}) cannot use {r.path} since "
                f"{r.unavailable_since}: {printable(str(r.unavailable_reason))}"
            )
            if r.unavailable_hint:
                lines.append(f"  hint: {printable(r.unavailable_hint)}")
        if not r.answering:
            if not r.unavailable_to:
                lines.append("")
                lines.append(f"{r.path} is on a share a running flowflexd found not answering")
            lines.append("  its counts are not shown, as looking would wait too")
        if r.paused:
            lines.append("")
            what = "FlowFlex refuses the configuration" if r.paused == "config" else "unreachable"
            where = f" (destination {r.destination})" if r.destination else ""
            lines.append(
                f"sending to FlowFlex{where} is PAUSED for {r.path} since {r.paused_since} "
                f"({what}): {printable(str(r.paused_reason))}"
            )
        if r.latest_failures:
            lines.append("")
            lines.append(f"latest failures in {r.path}:")
            for report in r.latest_failures:
                lines.append(
                    f"  {report.get('time', '?')}  {printable(str(report.get('file')))}: "
                    f"{report.get('code')}: {printable(str(report.get('reason')))}"
                )
    return lines
