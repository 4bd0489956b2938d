"""Placeholders in rule templates: parsed once at config load, rendered per file.

Pure functions only. ``{file}`` ``{attach.NAME}`` ``{name}`` ``{stem}``
``{ext}`` ``{match.NAME}`` ``{sidecar}`` ``{sidecar.a.b}``
``{sidecar.items[0].sku}``, the file's place below its inbox ``{dir}``
``{dir[0]}`` ``{path}``, and when it was claimed ``{date:%Y-%m}`` (local
time, strftime); ``{{`` and ``}}`` are literal braces. A value that
is one placeholder alone keeps the JSON type of what it names; text mixed with
placeholders renders a string.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowflexd.engine.outcomes import Code
from flowflexd.errors import FileRejected

KNOWN = (
    "{file} {attach.NAME} {name} {stem} {ext} {match.NAME} {sidecar} {sidecar.PATH} "
    "{dir} {dir[N]} {path} {date:FORMAT}; in manifest rules {row} {row.PATH} "
    "{manifest.name} {manifest.stem} {manifest.row}"
)
NAME_KINDS = frozenset({"name", "stem", "ext", "match"})
#: What a file's place and claim add, for its event and payload (not companion names).
PLACE_KINDS = frozenset({"dir", "path", "date"})
#: What a manifest rule's templates add: the row, and the manifest it is in.
MANIFEST_KINDS = frozenset({"row", "manifest"})
MANIFEST_KEYS = ("name", "stem", "row")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_PATH_STEP = re.compile(r"\.([^.\[\]{}]+)|\[(\d+)\]|(@[^.\[\]{}@]+)")


class TemplateError(ValueError):
    """A template cannot be parsed; raised at config load, never per file."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Placeholder:
    kind: str  # file, attach, name, stem, ext, match, sidecar, row, manifest, dir, path, date
    key: str | None = None  # attach NAME, match NAME, or a date's strftime format
    index: int | None = None  # {dir[N]}: one folder of the path
    path: tuple[str | int, ...] = ()  # steps into the sidecar
    text: str = ""  # as written, for messages

    @property
    def path_text(self) -> str:
        out = self.kind
        for step in self.path:
            out += f"[{step}]" if isinstance(step, int) else f".{step}"
        return out


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[str | Placeholder, ...]

    @property
    def single(self) -> Placeholder | None:
        """The placeholder when the template is exactly one, else None."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Placeholder):
            return self.parts[0]
        return None

    def placeholders(self) -> Iterator[Placeholder]:
        return (part for part in self.parts if isinstance(part, Placeholder))


@dataclass(frozen=True)
class Context:
    """What placeholders can name for one file."""

    name: str
    stem: str
    ext: str
    match: Mapping[str, str | None] = field(default_factory=dict)
    sidecar: Any = MISSING
    assets: Mapping[str, str] = field(default_factory=dict)  # "file", "attach.NAME" -> assetId
    dir: str = ""  # the folder below the inbox, "/"-separated; "" at the top
    claimed_at: float | None = None  # wall clock; {date:...} renders it (now when unset)
    row: Any = MISSING  # a manifest's row, for the document it names
    manifest: Mapping[str, Any] = field(default_factory=dict)  # name, stem, row (its number)


def split_name(name: str) -> tuple[str, str]:
    """``INV-1.pdf`` -> (``INV-1``, ``pdf``); no extension -> (name, "")."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, ext


_DIR_SEGMENT = re.compile(r"dir\[(\d+)\]")


def _placeholder(body: str) -> Placeholder:
    text = "{" + body + "}"
    if body in ("file", "name", "stem", "ext", "dir", "path"):
        return Placeholder(body, text=text)
    segment = _DIR_SEGMENT.fullmatch(body)
    if segment:
        return Placeholder("dir", index=int(segment.group(1)), text=text)
    if body == "date" or body.startswith("date:"):
        fmt = body[len("date:") :]
        if "%" not in fmt:
            raise TemplateError(f"{text}: give a strftime format, e.g. {{date:%Y-%m-%d}}")
        return Placeholder("date", key=fmt, text=text)
    head, dot, rest = body.partition(".")
    if head in ("attach", "match") and dot:
        if not _IDENT.fullmatch(rest):
            raise TemplateError(f"{text}: {head} needs a name such as {{{head}.label}}")
        return Placeholder(head, key=rest, text=text)
    if head == "manifest" and dot:
        if rest not in MANIFEST_KEYS:
            raise TemplateError(
                f"{text}: known are {{manifest.name}} {{manifest.stem}} {{manifest.row}}"
            )
        return Placeholder("manifest", key=rest, text=text)
    for root in ("sidecar", "row"):
        if body == root or body.startswith((f"{root}.", f"{root}[", f"{root}@")):
            return Placeholder(root, path=_steps(body[len(root) :], text, root), text=text)
    raise TemplateError(f"unknown placeholder {text}; known: {KNOWN}")


def _steps(tail: str, text: str, root: str) -> tuple[str | int, ...]:
    """``.a.b[0].c`` as ("a", "b", 0, "c")."""
    steps: list[str | int] = []
    pos = 0
    while pos < len(tail):
        step = _PATH_STEP.match(tail, pos)
        if step is None:
            raise TemplateError(
                f"{text}: cannot read the path after {root!r} at {tail[pos:]!r}; "
                f"write it as {{{root}.a.b}} or {{{root}.items[0].sku}}"
            )
        if step.group(2) is not None:
            steps.append(int(step.group(2)))
        else:
            steps.append(step.group(1) or step.group(3))
        pos = step.end()
    return tuple(steps)


def parse(source: str) -> Template:
    """Parse a template string; ``TemplateError`` says what is wrong and where."""
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    i = 0
    while i < len(source):
        char = source[i]
        if char in "{}" and source[i : i + 2] in ("{{", "}}"):
            literal.append(char)
            i += 2
            continue
        if char == "}":
            raise TemplateError(
                f"{source!r}: '}}' at position {i} closes nothing; write '}}}}' for a literal brace"
            )
        if char == "{":
            end = source.find("}", i + 1)
            if end < 0:
                raise TemplateError(
                    f"{source!r}: '{{' at position {i} is never closed; "
                    "write '{{{{' for a literal brace"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_placeholder(source[i + 1 : end].strip()))
            i = end + 1
            continue
        literal.append(char)
        i += 1
    if literal:
        parts.append("".join(literal))
    return Template(source, tuple(parts))


def compile_tree(value: Any) -> Any:
    """Turn every string in a YAML payload (at any depth) into a Template."""
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, dict):
        return {str(k): compile_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compile_tree(v) for v in value]
    return value


def tree_placeholders(tree: Any) -> Iterator[Placeholder]:
    if isinstance(tree, Template):
        yield from tree.placeholders()
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from tree_placeholders(item)
    elif isinstance(tree, list):
        for item in tree:
            yield from tree_placeholders(item)


# ------------------------------------------------------------------ rendering


def _walk_sidecar(sidecar: Any, ph: Placeholder) -> Any:
    if sidecar is MISSING:
        raise FileRejected(
            f"{ph.text} is used but no sidecar arrived for this file", code=Code.SIDECAR_MISSING
        )
    return walk(sidecar, ph, "sidecar")


def walk(root: Any, ph: Placeholder, walked: str) -> Any:
    """The value at ``ph.path`` in ``root`` (a sidecar or a manifest row).

    For XML (see metadata.py): ``Total@currency`` is the attribute, an
    element with attributes reads as its text, and ``[0]`` of an element
    that did not repeat is that element.
    """
    value = root
    for step in ph.path:
        if isinstance(step, int):
            if not isinstance(value, list) and step == 0 and value is not root:
                walked += "[0]"
                continue
            if not isinstance(value, list) or step >= len(value):
                raise _no_value(ph, walked, value, _len_hint(value))
            value = value[step]
            walked += f"[{step}]"
            continue
        for key in _keys(value, step):
            if not isinstance(value, dict) or key not in value:
                raise _no_value(ph, walked, value, _keys_hint(value))
            value = value[key]
            walked += f".{key}" if not key.startswith("@") else key
    if ph.path and _text_element(value):
        return value["#text"]
    return value


def _keys(value: Any, step: str) -> tuple[str, ...]:
    """``Total@currency`` is Total's attribute currency, unless a key is spelled so."""
    element, at, attribute = step.partition("@")
    if not at or (isinstance(value, dict) and step in value):
        return (step,)
    return (element, f"@{attribute}") if element else (f"@{attribute}",)


def _text_element(value: Any) -> bool:
    """An XML element with attributes and text, and no child elements: it reads as its text."""
    return (
        isinstance(value, dict)
        and "#text" in value
        and all(k == "#text" or k.startswith("@") for k in value)
    )


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "text",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _keys_hint(value: Any) -> str:
    if isinstance(value, dict):
        keys = ", ".join(sorted(map(str, value))[:8]) or "none"
        return f" with keys: {keys}"
    return ""


def _no_value(ph: Placeholder, walked: str, value: Any, hint: str) -> FileRejected:
    what, code = (
        ("the sidecar", Code.SIDECAR_PATH_MISSING)
        if ph.kind == "sidecar"
        else ("the manifest's row", Code.MANIFEST_ROWS_BAD)
    )
    return FileRejected(
        f"{what} has no value at {ph.path_text} ({walked} is {_kind(value)}{hint})", code=code
    )


def _len_hint(value: Any) -> str:
    return f" of {len(value)} items" if isinstance(value, list) else ""


def lookup(ph: Placeholder, ctx: Context) -> Any:
    """The value a placeholder names for this file (its JSON type kept)."""
    if ph.kind == "name":
        return ctx.name
    if ph.kind == "stem":
        return ctx.stem
    if ph.kind == "ext":
        return ctx.ext
    if ph.kind == "match":
        return ctx.match.get(ph.key or "") or ""
    if ph.kind == "file":
        return ctx.assets["file"]
    if ph.kind == "attach":
        return ctx.assets[f"attach.{ph.key}"]
    if ph.kind == "path":
        return f"{ctx.dir}/{ctx.name}" if ctx.dir else ctx.name
    if ph.kind == "dir":
        return ctx.dir if ph.index is None else _dir_segment(ctx.dir, ph)
    if ph.kind == "date":
        when = time.time() if ctx.claimed_at is None else ctx.claimed_at
        return time.strftime(ph.key or "", time.localtime(when))
    if ph.kind == "manifest":
        return ctx.manifest[ph.key or ""]
    if ph.kind == "row":
        return walk(ctx.row, ph, "row")
    return _walk_sidecar(ctx.sidecar, ph)


def _dir_segment(folder: str, ph: Placeholder) -> str:
    parts = folder.split("/") if folder else []
    if ph.index is None or ph.index >= len(parts):
        where = f"the folder {folder!r}" if folder else "the top of the inbox"
        raise FileRejected(
            f"{ph.text} names a folder the file is not in: it is in {where}",
            code=Code.PATH_SEGMENT_MISSING,
        )
    return parts[ph.index]


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def render_text(template: Template, ctx: Context) -> str:
    return "".join(
        part if isinstance(part, str) else as_text(lookup(part, ctx)) for part in template.parts
    )


def render_value(template: Template, ctx: Context) -> Any:
    single = template.single
    return lookup(single, ctx) if single is not None else render_text(template, ctx)


def render_tree(tree: Any, ctx: Context) -> Any:
    """Render a compiled payload: Templates become values, the rest stays."""
    if isinstance(tree, Template):
        return render_value(tree, ctx)
    if isinstance(tree, dict):
        return {k: render_tree(v, ctx) for k, v in tree.items()}
    if isinstance(tree, list):
        return [render_tree(v, ctx) for v in tree]
    return tree


def name_pattern(template: Template) -> re.Pattern[str]:
    """A regex for the names a companion template can produce (to recognise early ones)."""
    out = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(re.escape(part))
        elif part.kind == "ext":
            out.append(r"[^.]*")
        else:
            out.append(r".+")
    return re.compile("".join(out), re.DOTALL)
