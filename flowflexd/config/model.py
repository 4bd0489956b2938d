"""The configuration file: YAML with line marks -> defaults -> validation -> frozen dataclasses.

Every problem is collected with its file, line and key (``config.yaml:14:
folders[0].rules[1].event: required ...``) and raised once as a
``ConfigError``. ``${VAR}`` and ``${VAR:-default}`` read the environment in
any string; ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import difflib
import grp
import os
import pwd
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from flowflexd.config import keys
from flowflexd.config.keys import Setting, default
from flowflexd.errors import ConfigError
from flowflexd.inbox.answering import NotAnswering, all_within
from flowflexd.rules.matching import Rule, glob_matcher
from flowflexd.rules.templates import (
    MANIFEST_KINDS,
    NAME_KINDS,
    PLACE_KINDS,
    Placeholder,
    Template,
    TemplateError,
    compile_tree,
    parse,
    tree_placeholders,
)

Key = tuple[str | int, ...]
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ATTACH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

TOP_KEYS = keys.names("")
API_KEYS = keys.names("flowflex")
METRICS_KEYS = keys.names("metrics")
FOLDER_KEYS = keys.names("folders[]")
RULE_KEYS = keys.names("rules[]")
STATE_FILE = "daemon.json"  # in state_dir: the running daemon's pid and pause, for status


@dataclass(frozen=True)
class ApiSettings:
    base_url: str
    api_key: str
    integration_code: str
    api_secret: str = field(repr=False)
    timeout_seconds: float = default("flowflex.timeout_seconds")


DEFAULT_DESTINATION = "default"  # what the top-level flowflex: block is called


@dataclass(frozen=True)
class Destination:
    """One FlowFlex integration files are sent to: its API settings and its rate limits."""

    name: str
    api: ApiSettings
    max_events_per_second: float | None = None
    max_uploads_per_second: float | None = None


@dataclass(frozen=True)
class Folder:
    path: Path
    done: Path
    failed: Path
    rules: tuple[Rule, ...]
    poll: bool = default("folders[].poll")
    poll_interval: float = default("folders[].poll_interval")
    own_thread: str = default("folders[].own_thread")
    unmatched: str = default("folders[].unmatched")
    order: str = default("folders[].order")
    recursive: bool = default("folders[].recursive")
    max_depth: int | None = None  # with recursive: levels of subfolders; None: all
    keep_done_days: float | None = None
    keep_failed_days: float | None = None
    # Folders below done and failed, from placeholders ({date:%Y}/{dir}); None: the root.
    done_below: Template | None = None
    failed_below: Template | None = None
    destination: str = DEFAULT_DESTINATION  # where its files go, unless a rule says otherwise

    def destination_of(self, rule_name: str) -> str:
        """The destination a file taken by the rule named ``rule_name`` is sent to."""
        for rule in self.rules:
            if rule.name == rule_name:
                return rule.destination or self.destination
        return self.destination


@dataclass(frozen=True)
class Config:
    source: Path
    api: ApiSettings
    folders: tuple[Folder, ...]
    state_dir: Path
    workers: int = default("workers")
    settle_seconds: float = default("settle_seconds")
    rescan_seconds: float = default("rescan_seconds")
    shutdown_grace_seconds: float = default("shutdown_grace_seconds")
    metrics_listen: tuple[str, int] | None = None  # host, port; None: no metrics served
    warnings: tuple[str, ...] = ()
    # Every FlowFlex integration files go to, by name; ``api`` is the first one's
    # (the top-level flowflex: block, named "default", when there is one).
    destinations: tuple[Destination, ...] = ()

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)


# ------------------------------------------------------------------ YAML -> data


def _dotted(key: Key) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class _Loader(yaml.SafeLoader):
    """YAML with only ``true`` and ``false`` as booleans, as YAML 1.2 has it.

    PyYAML follows YAML 1.1, where ``yes``, ``no``, ``on``, ``off``, ``y`` and
    ``n`` are booleans too: a payload key ``no`` was sent as ``"False"``.
    """

    # PyYAML's own class attribute, replaced (not mutated) for this subclass.
    yaml_implicit_resolvers = {  # noqa: RUF012 - PyYAML declares and reads it so
        first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _Document:
    """Plain Python data from YAML, with the line of every key and item."""

    def __init__(self, text: str, source: Path) -> None:
        self.source = source
        self.lines: dict[Key, int] = {}
        self.problems: list[str] = []
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            self.data = None if node is None else self._build(loader, node, ())
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            line = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
            problem = err.problem or err.context or "invalid YAML"
            raise ConfigError([f"{source}:{line}: not valid YAML: {problem}"]) from err
        except yaml.YAMLError as err:
            raise ConfigError([f"{source}: not valid YAML: {err}"]) from err
        finally:
            loader.dispose()

    def _build(self, loader: _Loader, node: yaml.Node, key: Key) -> Any:
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                # A key is the text written (payload keys become JSON keys): "1",
                # "no" and "null" stay what they say, not 1, False or None.
                if isinstance(key_node, yaml.ScalarNode):
                    name = str(key_node.value)
                else:
                    name = str(loader.construct_object(key_node, deep=True))
                line = key_node.start_mark.line + 1
                if name in out:
                    self.problems.append(
                        f"{self.source}:{line}: {_dotted((*key, name))}: given twice; keep one"
                    )
                self.lines[(*key, name)] = line
                out[name] = self._build(loader, value_node, (*key, name))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, (*key, i)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    def where(self, key: Key) -> str:
        probe = key
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        return f"{self.source}:{line}" if line else str(self.source)


# ------------------------------------------------------------------- checking


class _Checker:
    """Reads values out of the document, noting every problem with its place."""

    def __init__(self, doc: _Document, environ: Mapping[str, str]) -> None:
        self.doc = doc
        self.environ = environ
        self.problems: list[str] = list(doc.problems)
        self.warnings: list[str] = []

    def fail(self, key: Key, message: str) -> None:
        self.problems.append(f"{self.doc.where(key)}: {_dotted(key)}: {message}")

    def warn(self, key: Key, message: str) -> None:
        self.warnings.append(f"{self.doc.where(key)}: {_dotted(key)}: {message}")

    def mapping(self, value: Any, key: Key, known: tuple[str, ...]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping of keys ({', '.join(known)}), got {_kind(value)}")
            return None
        for name in value:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = (
                    f"; did you mean '{close[0]}'?"
                    if close
                    else f"; known keys: {', '.join(known)}"
                )
                self.fail((*key, name), f"unknown key{hint}")
        return value

    def expand(self, text: str, key: Key) -> str:
        def replace(found: re.Match[str]) -> str:
            if found.group(0) == "$${":
                return "${"
            name, default = found.group(1), found.group(2)
            value = self.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                self.fail(
                    key, f"environment variable {name} is not set (set it, or write the value here)"
                )
                return ""
            return value

        return _ENV.sub(replace, text)

    def text(
        self, section: dict[str, Any], name: str, key: Key, *, required: bool = False
    ) -> str | None:
        if name not in section or section[name] is None:
            if required:
                self.fail((*key, name), "required")
            return None
        value = section[name]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail((*key, name), f"expected text, got {_kind(value)}")
            return None
        before = len(self.problems)
        expanded = self.expand(str(value), (*key, name))
        if len(self.problems) > before:
            return None
        if required and not expanded.strip():
            self.fail((*key, name), "must not be empty")
        return expanded

    def number(
        self,
        section: dict[str, Any],
        name: str,
        key: Key,
        *,
        default: float,
        minimum: float,
        integer: bool = False,
        above: bool = False,
    ) -> float:
        if name not in section:
            return default
        value = section[name]
        if isinstance(value, str):
            value = self.expand(value, (*key, name))
            with contextlib.suppress(ValueError):
                value = int(value) if integer else float(value)
        kind = "a whole number" if integer else "a number"
        bound = f"above {minimum:g}" if above else f"{minimum:g} or more"
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            self.fail((*key, name), f"expected {kind} {bound}, got {_kind(value)} {value!r}")
            return default
        if value < minimum or (above and value == minimum):
            self.fail((*key, name), f"expected {kind} {bound}, got {value!r}")
            return default
        return int(value) if integer else float(value)

    def boolean(self, section: dict[str, Any], name: str, key: Key, *, default: bool) -> bool:
        if name not in section:
            return default
        value = section[name]
        if not isinstance(value, bool):
            self.fail((*key, name), f"expected true or false, got {_kind(value)} {value!r}")
            return default
        return value

    def choice(
        self,
        section: dict[str, Any],
        name: str,
        key: Key,
        *,
        options: tuple[str, ...],
        default: str,
    ) -> str:
        if name not in section:
            return default
        value = section[name]
        if value not in options:
            self.fail((*key, name), f"expected one of {' | '.join(options)}, got {value!r}")
            return default
        return str(value)

    def setting(self, section: dict[str, Any], setting: Setting, key: Key) -> Any:
        """A scalar key read as its table row says: type, default, bounds, choices."""
        if setting.options:
            return self.choice(
                section, setting.name, key, options=setting.options, default=setting.default
            )
        if isinstance(setting.default, bool):
            return self.boolean(section, setting.name, key, default=setting.default)
        if setting.default is None and setting.name not in section:
            return None  # an optional number, off unless set
        assert setting.minimum is not None, setting.key
        return self.number(
            section,
            setting.name,
            key,
            default=setting.default,
            minimum=setting.minimum,
            integer=setting.integer,
            above=setting.above,
        )

    def path(self, value: str, base: Path) -> Path:
        return Path(os.path.normpath(base / os.path.expanduser(value)))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


# -------------------------------------------------------------------- secrets


def read_secret_file(path: Path) -> str:
    """The one-line secret in ``path``; refuses a file other users can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ValueError(
                f"{path} can be read by every user (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run: chmod 600 {path}"
            )
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    if len(lines) != 1 or not lines[0].strip():
        raise ValueError(f"{path} must hold the secret on exactly one line")
    return lines[0].strip()


def _secret(
    check: _Checker,
    section: dict[str, Any],
    key: Key,
    base: Path,
    source_mode: int,
    *,
    credential_name: str = "api_secret",
) -> str:
    """api_secret, api_secret_file, or the systemd credential (api_secret, NAME.api_secret)."""
    if "api_secret" in section and "api_secret_file" in section:
        check.fail((*key, "api_secret_file"), "give api_secret or api_secret_file, not both")
        return ""
    if "api_secret_file" in section:
        secret_path = check.text(section, "api_secret_file", key, required=True)
        if not secret_path:
            return ""
        try:
            return read_secret_file(check.path(secret_path, base))
        except ValueError as err:
            check.fail((*key, "api_secret_file"), str(err))
            return ""
    if "api_secret" in section:
        literal = section.get("api_secret")
        if isinstance(literal, str) and "${" not in literal and source_mode & stat.S_IROTH:
            check.warn(
                (*key, "api_secret"),
                "the secret is written in a file every user can read; run chmod 600 on it, or "
                "use api_secret: ${FLOWFLEX_API_SECRET} or api_secret_file",
            )
        return check.text(section, "api_secret", key, required=True) or ""
    credentials = check.environ.get("CREDENTIALS_DIRECTORY")
    credential = Path(credentials) / credential_name if credentials else None
    if credential is None or not credential.exists():
        check.fail(
            (*key, "api_secret"),
            "required: api_secret (e.g. ${FLOWFLEX_API_SECRET}), api_secret_file, "
            f"or a systemd credential named {credential_name}",
        )
        return ""
    try:
        return read_secret_file(credential)
    except ValueError as err:
        check.fail((*key, "api_secret"), f"systemd credential: {err}")
        return ""


TIMEOUT = keys.BY_KEY["flowflex.timeout_seconds"]


def _api_settings(
    check: _Checker,
    raw: Any,
    key: Key,
    base: Path,
    source_mode: int,
    *,
    emulator: bool,
    name: str = DEFAULT_DESTINATION,
) -> Destination:
    if emulator:
        # The emulator supplies its own address and credentials; only the
        # timeout and limits of this section are used, so unset ${VAR}s are no error.
        section = check.mapping(raw, key, API_KEYS) if raw is not None else {}
        timeout = check.setting(section or {}, TIMEOUT, key)
        return _limited(check, section or {}, key, name, ApiSettings("", "", "", "", timeout))
    section = check.mapping(raw, key, API_KEYS) if raw is not None else None
    if section is None:
        if raw is None:
            check.fail(
                key, "required: the FlowFlex base_url, api_key, api_secret and integration_code"
            )
        return Destination(name, ApiSettings("", "", "", ""))
    base_url = check.text(section, "base_url", key, required=True) or ""
    api_key = check.text(section, "api_key", key, required=True) or ""
    code = check.text(section, "integration_code", key, required=True) or ""
    timeout = check.setting(section, TIMEOUT, key)
    if base_url and not re.match(r"https?://", base_url):
        check.fail((*key, "base_url"), f"expected an https:// URL, got {base_url!r}")
    credential = "api_secret" if name == DEFAULT_DESTINATION else f"{name}.api_secret"
    secret = _secret(check, section, key, base, source_mode, credential_name=credential)
    return _limited(
        check, section, key, name, ApiSettings(base_url, api_key, code, secret, timeout)
    )


def _limited(
    check: _Checker, section: dict[str, Any], key: Key, name: str, api: ApiSettings
) -> Destination:
    events = check.setting(section, keys.BY_KEY["flowflex.max_events_per_second"], key)
    uploads = check.setting(section, keys.BY_KEY["flowflex.max_uploads_per_second"], key)
    return Destination(name, api, events, uploads)


_DESTINATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _destinations(
    check: _Checker, top: dict[str, Any], base: Path, source_mode: int, *, emulator: bool
) -> tuple[Destination, ...]:
    """The top-level flowflex: block (named "default") and each of destinations:."""
    found: list[Destination] = []
    raw_named = top.get("destinations")
    if "flowflex" in top or raw_named is None:
        found.append(
            _api_settings(
                check, top.get("flowflex"), ("flowflex",), base, source_mode, emulator=emulator
            )
        )
    if raw_named is None:
        return tuple(found)
    if not isinstance(raw_named, dict) or not raw_named:
        check.fail(
            ("destinations",),
            "expected a mapping of names to FlowFlex settings, e.g. sales: {base_url: ...}",
        )
        return tuple(found)
    for name, raw in raw_named.items():
        key: Key = ("destinations", str(name))
        if not isinstance(name, str) or not _DESTINATION_NAME.fullmatch(name):
            check.fail(
                key,
                "a destination's name is letters, digits, _ and - (it names a systemd credential)",
            )
            continue
        if name == DEFAULT_DESTINATION and "flowflex" in top:
            check.fail(key, "the flowflex: block is the destination named default already")
            continue
        found.append(
            _api_settings(check, raw, key, base, source_mode, emulator=emulator, name=name)
        )
    return tuple(found)


def _destination_name(
    check: _Checker, section: dict[str, Any], key: Key, known: tuple[str, ...]
) -> str | None:
    """A folder's or rule's ``destination``, checked against those configured."""
    name = check.text(section, "destination", key)
    if name is not None and known and name not in known:
        check.fail(
            (*key, "destination"), f"no destination named {name!r} (have: {', '.join(known)})"
        )
    return name


# ---------------------------------------------------------------------- rules


def _template(check: _Checker, value: Any, key: Key) -> Template | None:
    if not isinstance(value, str):
        check.fail(key, f"expected text, got {_kind(value)}")
        return None
    try:
        return parse(check.expand(value, key))
    except TemplateError as err:
        check.fail(key, str(err))
        return None


@dataclass(frozen=True)
class _Scope:
    """What a rule's templates may name: its regex groups, attachments, sidecar."""

    groups: set[str] | None
    attach: set[str]
    has_sidecar: bool

    def check(self, check: _Checker, template: Any, key: Key, allowed: frozenset[str]) -> None:
        for ph in tree_placeholders(template):
            problem = self._problem(ph, allowed)
            if problem:
                check.fail(key, problem)

    def _problem(self, ph: Placeholder, allowed: frozenset[str]) -> str | None:
        if ph.kind not in allowed:
            return f"{ph.text} cannot be used here; allowed: {', '.join(sorted(allowed))}"
        if ph.kind == "match":
            if self.groups is None:
                return f"{ph.text} needs a regex rule with named groups; this rule uses pattern"
            if ph.key not in self.groups:
                known = ", ".join(sorted(self.groups)) or "none"
                return f"{ph.text}: the regex has no group named {ph.key!r} (groups: {known})"
        if ph.kind == "attach" and ph.key not in self.attach:
            known = ", ".join(sorted(self.attach)) or "none"
            return f"{ph.text}: no attachment named {ph.key!r} under attach (have: {known})"
        if ph.kind == "sidecar" and not self.has_sidecar:
            return f'{ph.text} needs a sidecar: set sidecar, e.g. "{{stem}}.json"'
        return None


def _matcher(
    check: _Checker, section: dict[str, Any], key: Key
) -> tuple[re.Pattern[str] | None, set[str] | None, str | None, str | None]:
    """The rule's compiled glob or regex, its named groups, and both texts."""
    pattern = check.text(section, "pattern", key)
    regex_text = check.text(section, "regex", key)
    manifest = check.text(section, "manifest", key)
    if manifest and (pattern or regex_text):
        check.fail((*key, "manifest"), "give manifest or pattern or regex, one of them")
    elif manifest:
        return glob_matcher(manifest), None, manifest, None
    if pattern and regex_text:
        check.fail((*key, "regex"), "give pattern or regex, not both")
    elif pattern:
        return glob_matcher(pattern), None, pattern, None
    elif regex_text:
        try:
            compiled = re.compile(regex_text)
        except re.error as err:
            check.fail((*key, "regex"), f"not a valid regular expression: {err}")
        else:
            return compiled, set(compiled.groupindex), None, regex_text
    else:
        check.fail(key, 'needs pattern (a glob such as "INV-*.pdf"), regex, or manifest')
    return None, None, pattern, regex_text


def _attachments(check: _Checker, section: dict[str, Any], key: Key) -> dict[str, Template]:
    raw = section.get("attach")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        check.fail(
            (*key, "attach"), 'expected a mapping of names to file names, e.g. label: "{stem}.png"'
        )
        return {}
    attach: dict[str, Template] = {}
    for name, value in raw.items():
        if not _ATTACH_NAME.fullmatch(name):
            check.fail((*key, "attach", name), "attachment names are letters, digits, _ and -")
            continue
        template = _template(check, value, (*key, "attach", name))
        if template is not None:
            attach[name] = template
    return attach


def _payload(check: _Checker, section: dict[str, Any], key: Key) -> Any:
    raw = section.get("payload")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        check.fail((*key, "payload"), "expected a mapping: FlowFlex events carry a JSON object")
        return None
    try:
        return compile_tree(_expand_tree(check, raw, (*key, "payload")))
    except TemplateError as err:
        check.fail((*key, "payload"), str(err))
        return None


def _encoding(check: _Checker, section: dict[str, Any], key: Key) -> str | None:
    name = check.text(section, "sidecar_encoding", key)
    if name is None:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        check.fail(
            (*key, "sidecar_encoding"), f"unknown encoding {name!r}; e.g. utf-8, cp1252, latin-1"
        )
        return None


def _delimiter(check: _Checker, section: dict[str, Any], key: Key) -> str | None:
    value = check.text(section, "sidecar_delimiter", key)
    if value is None:
        return None
    if value in ("\\t", "tab"):
        return "\t"
    if len(value) != 1 or value in ('"', "\n", "\r"):
        check.fail((*key, "sidecar_delimiter"), 'expected one character, e.g. ";" or "\\t" for tab')
        return None
    return value


@dataclass(frozen=True)
class _Manifest:
    file_column: Template
    rows: tuple[str, ...]


def _manifest(check: _Checker, section: dict[str, Any], key: Key) -> _Manifest | None:
    """A manifest rule's own keys, checked; None for a rule that takes files by name."""
    if "manifest" not in section:
        for name in ("file_column", "manifest_rows"):
            if name in section:
                check.fail((*key, name), "only a manifest rule has it; set manifest")
        return None
    for name in ("sidecar", "attach", "marker"):
        if name in section:
            check.fail(
                (*key, name),
                "a manifest rule takes its metadata from the manifest's rows; use {row.COLUMN}",
            )
    rows_text = check.text(section, "manifest_rows", key) or ""
    rows = tuple(rows_text.split(".")) if rows_text else ()
    if any(not step for step in rows):
        check.fail(
            (*key, "manifest_rows"), "expected a dotted path such as Batch.Documents.Document"
        )
    if "file_column" not in section:
        check.fail(
            (*key, "file_column"),
            'required with manifest: the document a row names, e.g. "{row.File}"',
        )
        return None
    column = _template(check, section["file_column"], (*key, "file_column"))
    if column is None:
        return None
    for ph in column.placeholders():
        if ph.kind not in MANIFEST_KINDS:
            check.fail((*key, "file_column"), f"{ph.text} cannot be used here; use {{row.COLUMN}}")
    return _Manifest(column, rows)


def _folder_marker(check: _Checker, section: dict[str, Any], key: Key) -> str | None:
    name = check.text(section, "folder_marker", key)
    if name is None:
        return None
    if "marker" in section:
        check.fail((*key, "folder_marker"), "give marker (per file) or folder_marker, not both")
    if not name or "/" in name or name in (".", "..") or "{" in name:
        check.fail((*key, "folder_marker"), "expected a plain file name such as READY")
        return None
    return name


def _rule(check: _Checker, raw: Any, key: Key, known: tuple[str, ...] = ()) -> Rule | None:
    section = check.mapping(raw, key, RULE_KEYS)
    if section is None:
        return None
    destination = _destination_name(check, section, key, known)
    matcher, groups, pattern, regex_text = _matcher(check, section, key)
    path_pattern = check.text(section, "path_pattern", key)
    name = check.text(section, "name", key) or pattern or regex_text or f"rule {key[-1]}"
    event = None
    if "event" not in section:
        check.fail((*key, "event"), "required: the event name to fire, e.g. invoice.created")
    else:
        event = _template(check, section["event"], (*key, "event"))
    sidecar = (
        _template(check, section["sidecar"], (*key, "sidecar")) if "sidecar" in section else None
    )
    required = check.boolean(section, "sidecar_required", key, default=sidecar is not None)
    if "sidecar_required" in section and sidecar is None:
        check.warn((*key, "sidecar_required"), "has no effect without sidecar")
    timeout = check.setting(section, keys.BY_KEY["rules[].sidecar_timeout"], key)
    sidecar_format = check.setting(section, keys.BY_KEY["rules[].sidecar_format"], key)
    encoding = _encoding(check, section, key)
    delimiter = _delimiter(check, section, key)
    for needs_sidecar in ("sidecar_format", "sidecar_encoding"):
        if needs_sidecar in section and sidecar is None and "manifest" not in section:
            check.warn((*key, needs_sidecar), "has no effect without sidecar or manifest")
    marker = _template(check, section["marker"], (*key, "marker")) if "marker" in section else None
    marker_timeout = check.setting(section, keys.BY_KEY["rules[].marker_timeout"], key)
    folder_marker = _folder_marker(check, section, key)
    verify_format = check.setting(section, keys.BY_KEY["rules[].verify_format"], key)
    incomplete_timeout = check.setting(section, keys.BY_KEY["rules[].incomplete_timeout"], key)
    attach = _attachments(check, section, key)
    payload = _payload(check, section, key)
    scope = _Scope(groups, set(attach), sidecar is not None)
    manifest = _manifest(check, section, key)
    fed_by = {"sidecar"} if manifest is None else MANIFEST_KINDS
    scope.check(check, event, (*key, "event"), NAME_KINDS | PLACE_KINDS | fed_by)
    scope.check(check, sidecar, (*key, "sidecar"), NAME_KINDS)
    scope.check(check, marker, (*key, "marker"), NAME_KINDS)
    for attach_name, template in attach.items():
        scope.check(check, template, (*key, "attach", attach_name), NAME_KINDS)
    scope.check(
        check, payload, (*key, "payload"), NAME_KINDS | PLACE_KINDS | fed_by | {"file", "attach"}
    )
    if matcher is None or event is None:
        return None
    return Rule(
        name=name,
        matcher=matcher,
        event=event,
        pattern=pattern,
        regex=regex_text,
        path_pattern=path_pattern,
        place=glob_matcher(path_pattern) if path_pattern else None,
        sidecar=sidecar,
        sidecar_required=required,
        sidecar_timeout=timeout,
        sidecar_format=sidecar_format,
        sidecar_encoding=encoding,
        sidecar_delimiter=delimiter,
        attach=attach,
        payload=payload,
        marker=marker,
        marker_timeout=marker_timeout,
        folder_marker=folder_marker,
        verify_format=verify_format,
        incomplete_timeout=incomplete_timeout,
        manifest=manifest is not None,
        manifest_format=check.setting(section, keys.BY_KEY["rules[].manifest_format"], key),
        manifest_rows=manifest.rows if manifest else (),
        file_column=manifest.file_column if manifest else None,
        manifest_timeout=check.setting(section, keys.BY_KEY["rules[].manifest_timeout"], key),
        destination=destination,
    )


def _expand_tree(check: _Checker, value: Any, key: Key) -> Any:
    if isinstance(value, str):
        return check.expand(value, key)
    if isinstance(value, dict):
        return {k: _expand_tree(check, v, (*key, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tree(check, v, (*key, i)) for i, v in enumerate(value)]
    return value


# -------------------------------------------------------------------- folders


def _folder(
    check: _Checker, raw: Any, key: Key, base: Path, known: tuple[str, ...] = ()
) -> Folder | None:
    section = check.mapping(raw, key, FOLDER_KEYS)
    if section is None:
        return None
    path_text = check.text(section, "path", key, required=True)
    done_text = check.text(section, "done", key)
    failed_text = check.text(section, "failed", key)
    poll = check.setting(section, keys.BY_KEY["folders[].poll"], key)
    interval = check.setting(section, keys.BY_KEY["folders[].poll_interval"], key)
    own_thread = check.setting(section, keys.BY_KEY["folders[].own_thread"], key)
    unmatched = check.setting(section, keys.BY_KEY["folders[].unmatched"], key)
    order = check.setting(section, keys.BY_KEY["folders[].order"], key)
    recursive = check.setting(section, keys.BY_KEY["folders[].recursive"], key)
    max_depth = check.setting(section, keys.BY_KEY["folders[].max_depth"], key)
    if max_depth is not None and not recursive:
        check.warn((*key, "max_depth"), "has no effect without recursive: true")
    keep_done = check.setting(section, keys.BY_KEY["folders[].keep_done_days"], key)
    keep_failed = check.setting(section, keys.BY_KEY["folders[].keep_failed_days"], key)
    rules: list[Rule] = []
    raw_rules = section.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        check.fail(
            (*key, "rules"), "required: a list of rules, each with pattern or regex and event"
        )
    else:
        for i, raw_rule in enumerate(raw_rules):
            rule = _rule(check, raw_rule, (*key, "rules", i), known)
            if rule is not None:
                rules.append(rule)
    if unmatched == "fail" and any(rule.manifest for rule in rules):
        check.fail(
            (*key, "unmatched"),
            "fail would set aside the documents a manifest names before the manifest comes; "
            "leave it at ignore for a folder with a manifest rule",
        )
    if not path_text:
        return None
    path = check.path(path_text, base)
    done, done_below = _destination(check, done_text, (*key, "done"), base, path / "done")
    failed, failed_below = _destination(check, failed_text, (*key, "failed"), base, path / "failed")
    for label, value in (("done", done), ("failed", failed)):
        if value == path:
            check.fail((*key, label), "must be another folder than the inbox itself")
    if done == failed:
        check.fail((*key, "failed"), "must be another folder than done")
    return Folder(
        path=path,
        done=done,
        failed=failed,
        rules=tuple(rules),
        poll=poll,
        poll_interval=interval,
        own_thread=own_thread,
        unmatched=unmatched,
        order=order,
        done_below=done_below,
        failed_below=failed_below,
        keep_done_days=keep_done,
        keep_failed_days=keep_failed,
        recursive=recursive,
        max_depth=None if max_depth is None else int(max_depth),
        destination=_folder_destination(check, section, key, known),
    )


def _folder_destination(
    check: _Checker, section: dict[str, Any], key: Key, known: tuple[str, ...]
) -> str:
    """A folder's destination: as given; else default, or the only one there is."""
    name = _destination_name(check, section, key, known)
    if name is not None:
        return name
    if DEFAULT_DESTINATION in known or len(known) != 1:
        if len(known) > 1 and DEFAULT_DESTINATION not in known:
            check.fail(
                (*key, "destination"),
                f"required with several destinations: one of {', '.join(known)}",
            )
        return DEFAULT_DESTINATION
    return known[0]


def _destination(
    check: _Checker, text: str | None, key: Key, base: Path, fallback: Path
) -> tuple[Path, Template | None]:
    """A done or failed folder: its root, and the template of the folders below it.

    The root is what comes before the first folder with a placeholder; it is
    created and checked at start like a plain folder. Below it only the
    file's place and claim time may vary ({dir}, {date:...}), and a literal
    ``..`` could climb out, so it is refused.
    """
    if not text:
        return fallback, None
    segments = text.split("/")
    first = next((i for i, part in enumerate(segments) if "{" in part.replace("{{", "")), None)
    if first is None:
        return check.path(text.replace("{{", "{").replace("}}", "}"), base), None
    if first == 0:
        check.fail(key, "needs a folder before its first placeholder, e.g. done/{date:%Y}")
        return fallback, None
    root = check.path("/".join(segments[:first]) or "/", base)
    below_text = "/".join(part for part in segments[first:] if part)
    if any(part in ("..", ".") for part in below_text.split("/")):
        check.fail(key, "may not climb out of its folder with . or ..")
        return root, None
    template = _template(check, below_text, key)
    if template is not None:
        for ph in template.placeholders():
            if ph.kind not in ("date", "dir"):
                check.fail(
                    key,
                    f"{ph.text} cannot be used here; allowed: {{dir}} {{dir[N]}} {{date:FORMAT}}",
                )
    return root, template


def _user_and_group() -> tuple[str, str]:
    """This process's user name and primary group name (numbers where unnamed)."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    try:
        group = grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        group = str(os.getegid())
    return user, group


SERVICE_STATE_DIR = Path("/var/lib/flowflexd")  # the unit's StateDirectory=flowflexd


def default_state_dir(environ: Mapping[str, str], euid: int | None = None) -> Path:
    """systemd's StateDirectory; for root the service's; else the XDG state directory.

    Root's commands (the operator's ``status`` beside the service) read the
    service's journal: inside the unit $STATE_DIRECTORY names it, outside it
    does not, and root's own home would hold an empty one.
    """
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if (os.geteuid() if euid is None else euid) == 0:
        return SERVICE_STATE_DIR
    home = environ.get("HOME") or os.path.expanduser("~")
    xdg = environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return Path(xdg) / "flowflexd"


# ------------------------------------------------------------------------ load


def _real_names(parsed: list[tuple[int, Folder]], *, offline: bool) -> list[str]:
    """Where each folder leads: a link or another spelling is the same inbox.

    Resolving a link looks into the folder's file system, and a share whose
    server is down would hold the start there: a folder that does not answer
    within a few seconds goes by its name, and is then set aside as not
    answering. A command that only reads (status) goes by the names at once:
    it must answer while such a share holds the daemon.
    """
    names = [os.path.normpath(folder.path) for _, folder in parsed]
    if offline:
        return names
    resolved = all_within([partial(os.path.realpath, folder.path) for _, folder in parsed])
    return [
        name if isinstance(real, NotAnswering) else real
        for name, real in zip(names, resolved, strict=True)
    ]


def load(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    emulator: bool = False,
    offline: bool = False,
) -> Config:
    """Read and validate a configuration file; raise ``ConfigError`` listing every problem.

    ``emulator`` (the built-in emulator stands in for FlowFlex) and ``offline``
    (a command that never calls FlowFlex: status, explain, replay) read no
    credentials, so a missing secret or an unset ``${VAR}`` there is no error.
    ``offline`` also tells folders apart by name, never resolving a link there.
    """
    environ = os.environ if environ is None else environ
    source = Path(os.path.abspath(path))
    try:
        raw_bytes = source.read_bytes()
        mode = source.stat().st_mode
    except OSError as err:
        problem = f"{source}: cannot read the configuration: {err.strerror}"
        if isinstance(err, PermissionError):
            user, group = _user_and_group()
            problem += (
                f" (flowflexd runs as {user}); let that user read it, e.g. "
                f"chgrp {group} {source} && chmod 640 {source}"
            )
        raise ConfigError([problem]) from err
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([f"{source}: not UTF-8 text (byte {err.start})"]) from err
    doc = _Document(text, source)
    check = _Checker(doc, environ)
    base = source.parent
    top = check.mapping(doc.data, (), TOP_KEYS) if doc.data is not None else None
    if top is None:
        if doc.data is None:
            check.problems.append(f"{source}: the file is empty; start from config.example.yaml")
        raise ConfigError(check.problems)
    destinations = _destinations(check, top, base, mode, emulator=emulator or offline)
    known = tuple(d.name for d in destinations)
    api = destinations[0].api if destinations else ApiSettings("", "", "", "")
    workers = int(check.setting(top, keys.BY_KEY["workers"], ()))
    settle = check.setting(top, keys.BY_KEY["settle_seconds"], ())
    rescan = check.setting(top, keys.BY_KEY["rescan_seconds"], ())
    grace = check.setting(top, keys.BY_KEY["shutdown_grace_seconds"], ())
    metrics_listen = _listen(check, top.get("metrics"))
    state_text = check.text(top, "state_dir", ())
    state_dir = check.path(state_text, base) if state_text else default_state_dir(environ)
    folders: list[Folder] = []
    raw_folders = top.get("folders")
    if not isinstance(raw_folders, list) or not raw_folders:
        check.fail(("folders",), "required: a list of inbox folders, each with path and rules")
    else:
        parsed = [
            (i, folder)
            for i, raw_folder in enumerate(raw_folders)
            if (folder := _folder(check, raw_folder, ("folders", i), base, known)) is not None
        ]
        seen: dict[str, int] = {}
        for (i, folder), real in zip(parsed, _real_names(parsed, offline=offline), strict=True):
            if real in seen:
                check.fail(("folders", i, "path"), f"same inbox as folders[{seen[real]}]")
            seen[real] = i
            folders.append(folder)
    if check.problems:
        raise ConfigError(check.problems)
    return Config(
        source=source,
        api=api,
        destinations=destinations,
        folders=tuple(folders),
        state_dir=state_dir,
        workers=workers,
        settle_seconds=settle,
        rescan_seconds=rescan,
        shutdown_grace_seconds=grace,
        metrics_listen=metrics_listen,
        warnings=tuple(check.warnings),
    )


def _listen(check: _Checker, raw: Any) -> tuple[str, int] | None:
    """``metrics.listen`` as (host, port): ``127.0.0.1:9464``, ``[::1]:9464``, ``:9464``."""
    if raw is None:
        return None
    section = check.mapping(raw, ("metrics",), METRICS_KEYS)
    if section is None:
        return None
    text = check.text(section, "listen", ("metrics",), required=True)
    if not text:
        return None
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        check.fail(
            ("metrics", "listen"), f"expected host:port such as 127.0.0.1:9464, got {text!r}"
        )
        return None
    return host or "0.0.0.0", int(port)  # noqa: S104 -- ":9464" asks for every address


def with_api(config: Config, api: ApiSettings) -> Config:
    """The same configuration with every destination pointed at one API (the built-in emulator).

    Each keeps its rate limits and timeout.
    """
    destinations = tuple(
        dataclasses.replace(d, api=dataclasses.replace(api, timeout_seconds=d.api.timeout_seconds))
        for d in config.destinations
    )
    return dataclasses.replace(config, api=api, destinations=destinations)
