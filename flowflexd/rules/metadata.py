"""Metadata files as exporters write them: JSON, XML and CSV, turned into JSON values.

Pure functions, no I/O: bytes in, a JSON object (or, for a manifest, rows)
out, or ``FileRejected`` saying exactly what is wrong and where.

The XML mapping, which ``{sidecar}`` and ``{row}`` see:

- the document is an object with one key, the root element's name;
- an element with neither attributes nor child elements is its text, a
  string ("" when empty);
- otherwise it is an object: each attribute as ``"@name"``, each child
  element by its name, and its text (when not just white space) as
  ``"#text"``;
- a child element that repeats is a list, in document order;
- namespaces are dropped from element and attribute names
  (``{urn:x}Invoice`` and ``inv:Invoice`` are both ``Invoice``).

XML is parsed with ``defusedxml``: entity declarations, external references
and any DOCTYPE are refused, so no billion laughs, no file or URL is read.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from flowflexd.engine.outcomes import Code
from flowflexd.errors import FileRejected

FORMATS = ("json", "xml", "csv")
DELIMITERS = (",", ";", "\t", "|")
MAX_DEPTH = 64
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts the same way
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def format_of(name: str, configured: str | None) -> str:
    """The format to read ``name`` as: as configured, else by its extension, else JSON."""
    if configured:
        return configured
    lower = name.lower()
    for fmt in ("xml", "csv"):
        if lower.endswith(f".{fmt}"):
            return fmt
    if lower.endswith((".tsv", ".txt")):
        return "csv"
    return "json"


def _invalid(what: str, problem: str) -> FileRejected:
    return FileRejected(f"{what} {problem}", code=Code.SIDECAR_INVALID)


def decode(raw: bytes, what: str, encoding: str | None) -> str:
    """Text from bytes: a byte order mark wins, then ``encoding``, then UTF-8."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raw, encoding = raw[len(bom) :], name
            break
    encoding = encoding or "utf-8"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        shown = "UTF-8" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding
        raise _invalid(
            what,
            f"is not {shown} text (byte 0x{raw[err.start]:02x} on line {line}); save it as "
            f"{shown}, or set sidecar_encoding to what it is (e.g. cp1252)",
        ) from err


def _too_deep(value: Any, limit: int) -> bool:
    """True when ``value`` nests deeper than ``limit``, checked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _refuse_constant(word: str) -> Any:
    # Python reads NaN and Infinity; JSON has no such numbers and the event
    # could never be sent, so the file is refused here with the reason.
    raise ValueError(f"{word} is not a JSON number")


def parse_json(text: str, what: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as err:
        raise _invalid(what, "is nested too deeply") from err
    except json.JSONDecodeError as err:
        raise _invalid(
            what, f"is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from err
    except ValueError as err:
        raise _invalid(what, f"is not valid JSON: {err}") from err
    if _too_deep(value, MAX_DEPTH):
        raise _invalid(what, f"nests deeper than {MAX_DEPTH} levels")
    return value


def _local(name: str) -> str:
    """An element or attribute name without its namespace."""
    if name.startswith("{"):
        name = name.partition("}")[2]
    return name.rpartition(":")[2]


def _element(element: Element, depth: int, what: str) -> Any:
    if depth > MAX_DEPTH:
        raise _invalid(what, f"nests deeper than {MAX_DEPTH} levels")
    children = list(element)
    if not element.attrib and not children:
        return element.text or ""
    out: dict[str, Any] = {f"@{_local(k)}": v for k, v in element.attrib.items()}
    grouped: dict[str, list[Any]] = {}
    for child in children:
        grouped.setdefault(_local(child.tag), []).append(_element(child, depth + 1, what))
    for name, values in grouped.items():
        out[name] = values if len(values) > 1 else values[0]
    text = (element.text or "").strip()
    if text:
        out["#text"] = text
    return out


def parse_xml(raw: bytes | str, what: str) -> dict[str, Any]:
    """An XML document as a JSON object (see the mapping above)."""
    try:
        root = fromstring(raw, forbid_dtd=True)
    except DefusedXmlException as err:
        raise _invalid(
            what,
            f"is refused: {_defused_reason(err)}; flowflexd reads no DTDs, entities or "
            "external references",
        ) from err
    except ParseError as err:
        line, column = err.position
        raise _invalid(
            what,
            f"is not well-formed XML: {_parse_problem(err)} (line {line}, column {column + 1})",
        ) from err
    return {_local(root.tag): _element(root, 1, what)}


def _defused_reason(err: DefusedXmlException) -> str:
    kind = type(err).__name__
    if kind == "DTDForbidden":
        return "it has a DOCTYPE"
    if kind == "EntitiesForbidden":
        return "it declares entities"
    if kind == "ExternalReferenceForbidden":
        return "it refers to an external file or URL"
    return str(err)


def _parse_problem(err: ParseError) -> str:
    return str(err).rsplit(":", 1)[0]


def csv_rows(text: str, what: str, delimiter: str | None) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row of a CSV with a header row; values are strings.

    The delimiter is ``delimiter``, or the one of , ; tab | the header uses most.
    Blank lines are passed over.
    """
    lines = io.StringIO(text, newline="")
    header_line = lines.readline()
    if not header_line.strip():
        raise _invalid(what, "has no header row (line 1 is empty)")
    sep = delimiter or max(DELIMITERS, key=header_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        if len(set(header)) != len(header) or "" in header:
            raise _invalid(what, "has an empty or repeated column name in its header (line 1)")
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise _invalid(
                    what,
                    f"line {reader.line_num} has {len(fields)} fields; the header has "
                    f"{len(header)} (delimiter {sep!r})",
                )
            yield reader.line_num, dict(zip(header, fields, strict=True))
    except csv.Error as err:
        raise _invalid(what, f"is not valid CSV on line {reader.line_num}: {err}") from err


def parse_csv(text: str, what: str, delimiter: str | None) -> dict[str, str]:
    """A CSV sidecar: a header row and exactly one data row, as column -> value."""
    rows = csv_rows(text, what, delimiter)
    first = next(rows, None)
    if first is None:
        raise _invalid(what, "has a header but no data row")
    second = next(rows, None)
    if second is not None:
        raise _invalid(
            what,
            f"has more than one data row (another on line {second[0]}); a sidecar describes "
            "one file: for many, use a manifest rule",
        )
    return first[1]


def parse(
    raw: bytes,
    what: str,
    *,
    fmt: str,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> dict[str, Any]:
    """A sidecar's content as a JSON object, read as ``fmt``."""
    if fmt == "xml" and encoding is None:
        # The XML declaration names its encoding; the parser reads it from the bytes.
        return parse_xml(raw, what)
    text = decode(raw, what, encoding)
    if fmt == "xml":
        return parse_xml(text, what)
    if fmt == "csv":
        return parse_csv(text, what, delimiter)
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise _invalid(what, f"holds {type(value).__name__}, not a JSON object")
    return value


# ------------------------------------------------------------------ manifests

MAX_ROWS = 10_000
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def row_digest(row: Any) -> str:
    """What a row says, as a digest: a replayed manifest's rows are known again by it."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _manifest_invalid(what: str, problem: str) -> FileRejected:
    return FileRejected(f"{what} {problem}", code=Code.MANIFEST_INVALID)


def _rows_at(document: Any, path: tuple[str, ...], what: str) -> list[Any]:
    """The list of rows in a parsed XML or JSON manifest.

    With ``path`` (``manifest_rows: Batch.Documents.Document``), the value
    there. Without, the rows are found by going down while there is one way
    down: through an object's only member that is a list or an object (text
    and attributes beside it belong to the batch) until a list, or an object
    of text values, which is a manifest of one row.
    """
    value = document
    if path:
        for step in path:
            if not isinstance(value, dict) or step not in value:
                keys = ", ".join(sorted(value)[:8]) if isinstance(value, dict) else "none"
                raise _manifest_invalid(
                    what, f"has nothing at {'.'.join(path)} (stopped at {step!r}; keys: {keys})"
                )
            value = value[step]
        return value if isinstance(value, list) else [value]
    while True:
        if isinstance(value, list):
            return value
        if not isinstance(value, dict):
            raise _manifest_invalid(what, "holds no rows")
        members = [k for k in value if not k.startswith(("@", "#"))]
        nested = [k for k in members if isinstance(value[k], dict | list)]
        if len(nested) == 1:  # the one way down; text beside it is the batch's own
            value = value[nested[0]]
            continue
        if members and not nested:
            return [value]  # one row
        raise _manifest_invalid(
            what,
            f"has several lists or objects ({', '.join(nested[:8]) or 'none'}); say which holds "
            "the rows with manifest_rows, e.g. Batch.Documents.Document",
        )


def manifest_rows(
    raw: bytes,
    what: str,
    *,
    fmt: str,
    encoding: str | None = None,
    delimiter: str | None = None,
    rows_path: tuple[str, ...] = (),
) -> list[tuple[int, dict[str, Any]]]:
    """A manifest's rows, numbered from 1, each a JSON object; FileRejected when it has none.

    A CSV is a header and one row per document; an XML or JSON manifest holds
    a list of objects (see ``_rows_at``). Parse errors are MANIFEST_INVALID.
    """
    try:
        if fmt == "csv":
            found: list[Any] = []
            for _, row in csv_rows(decode(raw, what, encoding), what, delimiter):
                found.append(row)
                if len(found) > MAX_ROWS:
                    break
        else:
            if fmt == "xml" and encoding is None:
                document: Any = parse_xml(raw, what)
            else:
                text = decode(raw, what, encoding)
                document = parse_xml(text, what) if fmt == "xml" else parse_json(text, what)
            found = _rows_at(document, rows_path, what)
    except FileRejected as err:
        if err.code == Code.MANIFEST_INVALID:
            raise
        raise FileRejected(err.message, code=Code.MANIFEST_INVALID) from err
    if not found:
        raise _manifest_invalid(what, "lists no documents")
    if len(found) > MAX_ROWS:
        raise _manifest_invalid(
            what, f"has more than {MAX_ROWS:,} rows; split the export into smaller batches"
        )
    rows = []
    for number, row in enumerate(found, 1):
        if not isinstance(row, dict):
            raise _manifest_invalid(what, f"row {number} is {type(row).__name__}, not an object")
        rows.append((number, row))
    return rows
