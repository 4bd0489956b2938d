"""What a file name means: which rule takes it, what travels with it, what is sent.

Pure functions, no I/O: the watcher and the pipeline ask, this module answers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowflexd.config.keys import default
from flowflexd.engine.outcomes import Code
from flowflexd.errors import FileRejected
from flowflexd.rules import metadata
from flowflexd.rules.templates import (
    MISSING,
    Context,
    Template,
    name_pattern,
    render_text,
    render_tree,
    split_name,
)

# Names that partial, temporary or desktop-metadata files carry; never taken.
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".download")
DESKTOP_FILES = frozenset({"thumbs.db", ".ds_store", "desktop.ini"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_MAX_BYTES = 255


@dataclass(frozen=True)
class Rule:
    """One rule of a folder, as the configuration defines it (templates compiled)."""

    name: str
    matcher: re.Pattern[str]
    event: Template
    pattern: str | None = None
    regex: str | None = None
    path_pattern: str | None = None  # a glob on the path below the inbox ("invoices/**")
    place: re.Pattern[str] | None = None  # path_pattern, compiled
    sidecar: Template | None = None
    sidecar_required: bool = True
    sidecar_timeout: float = default("rules[].sidecar_timeout")
    sidecar_format: str | None = None  # json, xml or csv; None: by the sidecar's extension
    sidecar_encoding: str | None = None  # None: UTF-8 (a byte order mark always wins)
    sidecar_delimiter: str | None = None  # a CSV's; None: sniffed from its header
    attach: Mapping[str, Template] = field(default_factory=dict)
    payload: Any = None  # a compiled tree (see templates.compile_tree), or None
    marker: Template | None = None  # a file whose arrival says the export is complete
    folder_marker: str | None = None  # a name whose arrival completes the whole folder
    marker_timeout: float = default("rules[].marker_timeout")
    manifest: bool = False  # the rule takes index files: one event per row
    manifest_format: str | None = None  # json, xml or csv; None: by the manifest's extension
    manifest_rows: tuple[str, ...] = ()  # where the rows are in an XML or JSON manifest
    file_column: Template | None = None  # the document a row names
    manifest_timeout: float = default("rules[].manifest_timeout")
    destination: str | None = None  # where its files go; None: the folder's destination
    verify_format: bool = default("rules[].verify_format")  # the format's trailer is checked
    incomplete_timeout: float = default("rules[].incomplete_timeout")  # then INCOMPLETE_FILE

    def companion_templates(self) -> dict[str, Template]:
        roles: dict[str, Template] = {}
        if self.sidecar is not None:
            roles["sidecar"] = self.sidecar
        for attach_name, template in self.attach.items():
            roles[f"attach.{attach_name}"] = template
        if self.marker is not None:
            roles["marker"] = self.marker
        return roles


@dataclass(frozen=True)
class Match:
    rule: Rule
    name: str
    groups: Mapping[str, str | None]
    dir: str = ""  # the folder below the inbox the file is in
    claimed_at: float | None = None

    row: Any = MISSING  # for a manifest rule: the row, and which manifest it is in
    manifest: Mapping[str, Any] = field(default_factory=dict)

    def context(
        self, *, sidecar: Any = MISSING, assets: Mapping[str, str] | None = None
    ) -> Context:
        stem, ext = split_name(self.name)
        return Context(
            name=self.name,
            stem=stem,
            ext=ext,
            match=self.groups,
            sidecar=sidecar,
            assets=assets or {},
            dir=self.dir,
            claimed_at=self.claimed_at,
            row=self.row,
            manifest=self.manifest,
        )

    def for_row(self, number: int, row: dict[str, Any], document: str = "") -> Match:
        """A manifest's match narrowed to one row: ``{name}`` is then the row's document."""
        stem = split_name(self.name)[0]
        about = {"name": self.name, "stem": stem, "row": number}
        return Match(self.rule, document or self.name, {}, self.dir, self.claimed_at, row, about)


def glob_matcher(pattern: str) -> re.Pattern[str]:
    """A glob on the file name, case-insensitive: scanners and Windows users mix cases."""
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


def is_temporary_name(name: str) -> bool:
    """Partial copies, office lock files, dotfiles and desktop metadata: never taken."""
    lower = name.lower()
    return (
        name.startswith((".", "~$")) or lower in DESKTOP_FILES or lower.endswith(TEMPORARY_SUFFIXES)
    )


def match(rules: Iterable[Rule], name: str, where: str = "") -> Match | None:
    """The first rule that takes ``name`` (a glob matches the whole name; a regex searches).

    ``where`` is the folder below the inbox the file is in; a rule with a
    ``path_pattern`` takes only files whose path below the inbox it matches.
    """
    path = f"{where}/{name}" if where else name
    for rule in rules:
        if rule.place is not None and not rule.place.match(path):
            continue
        if rule.regex is not None:
            found = rule.matcher.search(name)
            if found:
                return Match(rule, name, found.groupdict(), dir=where)
        elif rule.matcher.match(name):
            return Match(rule, name, {}, dir=where)
    return None


def check_plain_name(name: str, *, what: str) -> None:
    """A rendered name must stay a name in its folder: no path, no traversal."""
    problem = None
    if name in ("", ".", ".."):
        problem = "is empty or a directory reference"
    elif "/" in name or "\x00" in name:
        problem = "contains '/' or NUL, so it would leave the folder"
    elif len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
        problem = f"is longer than {NAME_MAX_BYTES} bytes"
    if problem:
        raise FileRejected(f"{what} {name!r} {problem}", code=Code.BAD_COMPANION_NAME)


def companions(found: Match) -> dict[str, str]:
    """The sidecar and attachment names that travel with this file, by role."""
    ctx = found.context()
    names: dict[str, str] = {}
    for role, template in found.rule.companion_templates().items():
        name = render_text(template, ctx)
        check_plain_name(name, what=f"the {role} name")
        if name == found.name:
            raise FileRejected(
                f"the {role} name {name!r} is the file's own name", code=Code.BAD_COMPANION_NAME
            )
        names[role] = name
    return names


def companion_patterns(rules: Iterable[Rule]) -> list[tuple[Rule, re.Pattern[str]]]:
    return [
        (rule, name_pattern(template))
        for rule in rules
        for template in rule.companion_templates().values()
    ]


def could_be_companion(patterns: Iterable[tuple[Rule, re.Pattern[str]]], name: str) -> Rule | None:
    """The rule whose sidecar or attachment ``name`` could be, arriving before its file."""
    for rule, pattern in patterns:
        if pattern.fullmatch(name):
            return rule
    return None


def read_sidecar(rule: Rule, raw: bytes, name: str) -> dict[str, Any]:
    """A sidecar's content as a JSON object, read as the rule says (FileRejected if it cannot)."""
    return metadata.parse(
        raw,
        f"sidecar {name}",
        fmt=metadata.format_of(name, rule.sidecar_format),
        encoding=rule.sidecar_encoding,
        delimiter=rule.sidecar_delimiter,
    )


def manifest_rows(rule: Rule, raw: bytes, name: str) -> list[tuple[int, dict[str, Any]]]:
    """A manifest's rows, read as the rule says (MANIFEST_INVALID when they cannot be)."""
    return metadata.manifest_rows(
        raw,
        f"manifest {name}",
        fmt=metadata.format_of(name, rule.manifest_format),
        encoding=rule.sidecar_encoding,
        delimiter=rule.sidecar_delimiter,
        rows_path=rule.manifest_rows,
    )


def document_name(found: Match, number: int, row: dict[str, Any]) -> str:
    """The document a manifest's row names (FileRejected MANIFEST_ROWS_BAD when it cannot be)."""
    assert found.rule.file_column is not None
    name = render_text(found.rule.file_column, found.for_row(number, row).context()).strip()
    try:
        check_plain_name(name, what="the document")
    except FileRejected as err:
        raise FileRejected(
            f"{err.message}; a row names a file in the manifest's own folder",
            code=Code.MANIFEST_ROWS_BAD,
        ) from err
    if name == found.name:
        raise FileRejected("it names the manifest itself", code=Code.MANIFEST_ROWS_BAD)
    return name


def event_name(found: Match, *, sidecar: Any = MISSING) -> str:
    name = render_text(found.rule.event, found.context(sidecar=sidecar))
    if not name.strip():
        raise FileRejected("the event name rendered empty", code=Code.BAD_EVENT_NAME)
    if _CONTROL.search(name):
        raise FileRejected(
            "the event name would contain control characters", code=Code.BAD_EVENT_NAME
        )
    return name


def payload(found: Match, *, sidecar: Any = MISSING, assets: Mapping[str, str]) -> Any:
    """The event body: the rule's payload rendered, or the sidecar plus the assetIds."""
    ctx = found.context(sidecar=sidecar, assets=assets)
    if found.rule.payload is not None:
        return render_tree(found.rule.payload, ctx)
    if found.rule.manifest:
        body = dict(found.row) if isinstance(found.row, dict) else {}
        body["assetId"] = assets["file"]
        return body
    body = dict(sidecar) if isinstance(sidecar, dict) else {}
    body["assetId"] = assets["file"]
    for attach_name in found.rule.attach:
        body[attach_name] = assets[f"attach.{attach_name}"]
    return body
