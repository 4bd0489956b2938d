"""Where flowflexd keeps things in and beside an inbox: the one module that knows.

    <inbox>/.flowflexd/               home, owned by flowflexd's user, mode 0700
    <inbox>/.flowflexd/lock           flock of the daemon watching the inbox, and its pid
    <inbox>/.flowflexd/work/<id>/     one claim: its files and claim.jsonl
    <inbox>/.flowflexd/aside/<id>/    what was left of a claim that could not be read
    <failed>/<name>.error.json        why a file failed, beside it (also in dated folders)
    <failed>/replayed/                reports of files ``replay`` put back

A name taken in done or failed gets the claim's short id as a suffix
(``INV-1 (3f2a9c1b).pdf``), the same for the file and its companions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from flowflexd.engine.outcomes import Code
from flowflexd.errors import FileRejected
from flowflexd.rules.templates import Context, Template, render_text, split_name

HOME_NAME = ".flowflexd"
CLAIM_FILE = "claim.jsonl"
REPORT_SUFFIX = ".error.json"
REPLAYED_DIR = "replayed"


def home(inbox: Path) -> Path:
    return inbox / HOME_NAME


def work(inbox: Path) -> Path:
    """Claimed files wait here, on the inbox's own filesystem."""
    return inbox / HOME_NAME / "work"


def claim_dir(inbox: Path | str, claim_id: str) -> Path:
    return Path(inbox, HOME_NAME, "work", claim_id)


def aside(inbox: Path, claim_id: str) -> Path:
    return inbox / HOME_NAME / "aside" / claim_id


def lock_file(inbox: Path) -> Path:
    return inbox / HOME_NAME / "lock"


def owned_names(inbox: Path, done: Path, failed: Path) -> set[str]:
    """Paths below the inbox that are flowflexd's (relative, "/"-separated): never entered."""
    owned = {HOME_NAME}
    for path in (done, failed):
        if path.is_relative_to(inbox) and path != inbox:
            owned.add(path.relative_to(inbox).as_posix())
    return owned


#: Folders file servers and desktops keep for themselves (Synology, Samba, NetApp, Windows).
JUNK_FOLDERS = frozenset({"@eadir", "#recycle", ".snapshot", "$recycle.bin"})


def skipped_folder(name: str) -> bool:
    """A subfolder never entered: hidden, or a file server's own."""
    return name.startswith(".") or name.lower() in JUNK_FOLDERS


def walk(inbox: Path, owned: set[str], max_depth: int | None) -> Iterator[str]:
    """Every entry below the inbox that is not a folder, as a relative path.

    Owned, hidden and junk folders are not entered, nor folders deeper than
    ``max_depth`` levels, nor folders behind a symbolic link.
    """
    return (rel for rel, is_folder in _entries(inbox, owned, max_depth, "") if not is_folder)


def folders(inbox: Path, owned: set[str], max_depth: int | None, below: str = "") -> Iterator[str]:
    """Every folder ``walk`` enters under ``below`` (a relative path; "": the inbox)."""
    return (rel for rel, is_folder in _entries(inbox, owned, max_depth, below) if is_folder)


def entered(folder: str, owned: set[str], max_depth: int | None) -> bool:
    """Whether ``walk`` enters ``folder`` (relative, "/"-separated), as far as its path tells."""
    parts = folder.split("/")
    if max_depth is not None and len(parts) > max_depth:
        return False
    return not any(
        "/".join(parts[: i + 1]) in owned or skipped_folder(part) for i, part in enumerate(parts)
    )


def _entries(
    inbox: Path, owned: set[str], max_depth: int | None, below: str
) -> Iterator[tuple[str, bool]]:
    """(relative path, True for a folder entered) for all under ``below`` that walk sees."""
    stack = [below]
    while stack:
        at = stack.pop()
        try:
            entries = list(os.scandir(inbox / at if at else inbox))
        except OSError:
            continue
        for entry in entries:
            rel = join_path(at, entry.name)
            if entry.is_dir(follow_symlinks=False):
                if entered(rel, owned, max_depth):
                    stack.append(rel)
                    yield rel, True
            else:
                yield rel, False


def suffixed(name: str, tag: str) -> str:
    """``INV-1.pdf`` -> ``INV-1 (3f2a9c1b).pdf``, trimmed to fit the 255-byte name limit."""
    if not tag:
        return name
    stem, ext = split_name(name)
    tail = f" ({tag})" + (f".{ext}" if ext else "")
    room = 255 - len(tail.encode("utf-8", "surrogateescape"))
    raw = stem.encode("utf-8", "surrogateescape")[:room]
    return raw.decode("utf-8", "surrogateescape") + tail


def name_tags(unique: str) -> tuple[str, ...]:
    """The suffixes to try for a name, in order: none, then ones unique by construction.

    ``unique`` is a claim's id (or another random hex string), so a taken name
    costs one more try, never a search through what a folder has kept for years;
    the same claim gets the same suffix again after a crash.
    """
    return ("", unique[:8], unique)


def report_name(name: str) -> str:
    """``<name>.error.json`` beside a failed file, trimmed to fit 255 bytes."""
    room = 255 - len(REPORT_SUFFIX)
    raw = name.encode("utf-8", "surrogateescape")[:room]
    return raw.decode("utf-8", "surrogateescape") + REPORT_SUFFIX


def failure_reports(failed: Path) -> list[os.DirEntry[str]]:
    """The failure reports in failed and the dated folders below it (not those replayed)."""
    found: list[os.DirEntry[str]] = []
    folders = [failed]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not (entry.name == REPLAYED_DIR and Path(entry.path).parent == failed):
                    folders.append(Path(entry.path))
            elif entry.name.endswith(REPORT_SUFFIX) and entry.is_file(follow_symlinks=False):
                found.append(entry)
    return found


def split_path(path: str) -> tuple[str, str]:
    """``alice/2026/scan.pdf`` -> (``alice/2026``, ``scan.pdf``); ("", name) at the top."""
    folder, _, name = path.rpartition("/")
    return folder, name


def join_path(folder: str, name: str) -> str:
    """The inverse of ``split_path``: a path below the inbox."""
    return f"{folder}/{name}" if folder else name


def placed(
    root: Path, below: Template | None, name: str, *, folder: str, claimed_at: float | None
) -> Path:
    """Where done or failed puts a file: ``root``, and the folders its template renders.

    Raises FileRejected when the template cannot place this file (a
    {dir[N]} it is not deep enough for, or a path that would leave ``root``).
    """
    if below is None:
        return root
    stem, ext = split_name(name)
    rendered = render_text(below, Context(name, stem, ext, dir=folder, claimed_at=claimed_at))
    relative = os.path.normpath(rendered) if rendered else "."
    if os.path.isabs(relative) or relative.split(os.sep)[0] == "..":
        raise FileRejected(
            f"the folder would be {root / rendered}, outside {root}", code=Code.BAD_DESTINATION
        )
    return root / relative
