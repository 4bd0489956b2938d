"""Every configuration key, written once: its name, type, default and meaning.

The loader reads these (which keys a section knows, defaults, bounds), the
dataclasses take their defaults from here, and the README's configuration
table is this table (``python -m flowflexd.config.keys`` prints it; a test
keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    key: str  # as the README writes it: workers, flowflex.base_url, folders[].poll, rules[].event
    shown: str  # the default as the README states it ("required", a value, or how it is derived)
    meaning: str
    default: Any = None  # used when the key is absent; None where required or derived
    required: bool = False
    minimum: float | None = None
    above: bool = False  # must be above ``minimum``, not at least it
    integer: bool = False
    options: tuple[str, ...] = ()

    @property
    def section(self) -> str:
        """ "" (top level), "flowflex", "folders[]" or "rules[]"."""
        head, dot, _ = self.key.rpartition(".")
        return head if dot else ""

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2].removesuffix("[]")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "flowflex.base_url",
        shown="required",
        required=True,
        meaning=(
            "FlowFlex API address; must be `https://` (plain http only on loopback); a trailing "
            "`/api` is stripped"
        ),
    ),
    Setting(
        "flowflex.api_key",
        shown="required",
        required=True,
        meaning="the integration's key (`cik_…`)",
    ),
    Setting(
        "flowflex.api_secret",
        shown="see below",
        meaning="the integration's secret, usually `${FLOWFLEX_API_SECRET}`",
    ),
    Setting(
        "flowflex.api_secret_file",
        shown="",
        meaning=(
            "a file holding the secret on one line; refused if every user can read it (`chmod 600`)"
        ),
    ),
    Setting(
        "flowflex.integration_code",
        shown="required",
        required=True,
        meaning="the `<code>` in `/v1/events/<code>`",
    ),
    Setting(
        "flowflex.timeout_seconds",
        shown="30",
        default=30.0,
        minimum=0,
        above=True,
        meaning="per-request timeout",
    ),
    Setting(
        "flowflex.max_events_per_second",
        shown="no limit",
        minimum=0,
        above=True,
        meaning=(
            "events sent per second at most, over all workers (a token bucket); a 429 with "
            "`Retry-After` slows the whole destination, and is never a failure"
        ),
    ),
    Setting(
        "flowflex.max_uploads_per_second",
        shown="no limit",
        minimum=0,
        above=True,
        meaning="file uploads per second at most, over all workers",
    ),
    Setting(
        "destinations",
        shown="",
        meaning=(
            "more FlowFlex integrations by name, each with the keys of `flowflex` "
            "(`sales: {base_url: ..., api_key: ..., api_secret_file: ..., "
            "integration_code: ...}`); `flowflex` itself is the one named `default`; a secret "
            "may also come from the systemd credential `NAME.api_secret`"
        ),
    ),
    Setting(
        "workers",
        shown="4",
        default=4,
        minimum=1,
        integer=True,
        meaning=(
            "files in flight at once, over all folders; more pay off only with network latency (8"
            " fill a 50 ms link; with the API on the same network 2 to 4 do best, as more contend"
            " for one interpreter, see Performance)"
        ),
    ),
    Setting(
        "settle_seconds",
        shown="2",
        default=2.0,
        minimum=0,
        meaning=(
            "a file may be taken once its size, mtime and ctime held still this long, and it is "
            "whole (see Scanners and transfer servers)"
        ),
    ),
    Setting(
        "rescan_seconds",
        shown="60",
        default=60.0,
        minimum=0,
        above=True,
        meaning=(
            "full rescan of every inbox, for what events missed; each begins with a look at "
            "the inbox that waits 5 s at most, so an idle share whose server went down is met "
            "within this and 5 s, and set aside (every 5 s while an inbox is away)"
        ),
    ),
    Setting(
        "shutdown_grace_seconds",
        shown="20",
        default=20.0,
        minimum=0,
        meaning=(
            "on SIGTERM, how long files in flight may take to finish (not waited for: those "
            "whose workers wait in a share that does not answer; they stay claimed)"
        ),
    ),
    Setting(
        "state_dir",
        shown=(
            "`$STATE_DIRECTORY` (the unit's `/var/lib/flowflexd`), else for root "
            "`/var/lib/flowflexd` (so root's `status` reads the service's), else "
            "`~/.local/state/flowflexd`"
        ),
        meaning=(
            "the journal (`journal.jsonl`; at 16 MiB it becomes `journal.jsonl.1` and older ones "
            "shift up to `.8`, so it never takes more than 144 MiB, about the last 200,000 "
            "files), and the emulator's data with `--emulator`"
        ),
    ),
    Setting(
        "metrics.listen",
        shown="off",
        meaning=(
            "`host:port` to serve Prometheus `/metrics` and `/healthz` on, e.g. "
            "`127.0.0.1:9464` (see Metrics and health)"
        ),
    ),
    Setting(
        "folders[].path",
        shown="required",
        required=True,
        meaning=(
            "an inbox; created at start (or when a reload adds it) if missing, but not on a "
            "share `/etc/fstab` mounts while nothing is mounted there; one that goes missing "
            "later is away, never made again in its place"
        ),
    ),
    Setting(
        "folders[].done",
        shown="`<path>/done`",
        meaning=(
            "where sent files go; must be on the inbox's filesystem; may end in dated folders "
            "made as needed, `done/{date:%Y}/{date:%m}` (after the first folder only "
            "`{date:FORMAT}`, `{dir}` and `{dir[N]}`, and no `..`)"
        ),
    ),
    Setting(
        "folders[].failed",
        shown="`<path>/failed`",
        meaning=(
            "where refused files go, each with `<name>.error.json` (readable by whoever may read "
            "the file, with its group); same filesystem; dated folders as for `done` (a file "
            "its template cannot place goes to the first folder)"
        ),
    ),
    Setting(
        "folders[].recursive",
        shown="false",
        default=False,
        meaning=(
            "take files from subfolders too (a folder per user or device), watching new ones "
            "as they appear; never `.flowflexd`, done or failed, hidden folders, `@eaDir`, "
            "`#recycle`, `.snapshot`, `$RECYCLE.BIN`, or a folder behind a symbolic link"
        ),
    ),
    Setting(
        "folders[].max_depth",
        shown="unlimited",
        minimum=0,
        integer=True,
        meaning="with `recursive`, how many levels of subfolders below the inbox are taken from",
    ),
    Setting(
        "folders[].destination",
        shown="`default`, or the only one",
        meaning="the destination this folder's files are sent to (required with several)",
    ),
    Setting(
        "folders[].poll",
        shown="false",
        default=False,
        meaning=(
            "poll instead of inotify (network mounts: inotify misses writes made by other machines)"
        ),
    ),
    Setting(
        "folders[].poll_interval",
        shown="2",
        default=2.0,
        minimum=0,
        above=True,
        meaning="seconds between polls when polling",
    ),
    Setting(
        "folders[].own_thread",
        shown="auto",
        default="auto",
        options=("auto", "always", "never"),
        meaning=(
            "where the daemon's calls into this folder's file system run (its settling, "
            "rescans, take-up, moves into done, retention): in a thread of its own, so that a "
            "share whose server stops answering holds this folder alone, or on the main loop "
            "that serves every folder; `auto` gives network file systems (cifs, nfs, sshfs and "
            "other FUSE mounts) their own, `always` any (a USB or iSCSI disk, say); chosen when "
            "the folder is taken up (a start, or a reload that adds it)"
        ),
    ),
    Setting(
        "folders[].unmatched",
        shown="ignore",
        default="ignore",
        options=("ignore", "fail"),
        meaning="files no rule takes: `ignore` (they stay, logged once) or `fail`",
    ),
    Setting(
        "folders[].keep_done_days",
        shown="keep forever",
        minimum=0,
        above=True,
        meaning=(
            "delete what flowflexd put in done this many days after it did (the files its "
            "journal placed there, same size and mtime; nothing else), journalled; dated "
            "folders left empty go too. Looked at once a day, from the start; an inbox away "
            "then waits for the next day's pass. The one case where flowflexd deletes files"
        ),
    ),
    Setting(
        "folders[].keep_failed_days",
        shown="keep forever",
        minimum=0,
        above=True,
        meaning=(
            "the same for failed: a file and its report go once the report is this many days "
            "old (only files a report lists)"
        ),
    ),
    Setting(
        "folders[].order",
        shown="oldest",
        default="oldest",
        options=("oldest", "name"),
        meaning=(
            "the order ready files are taken in: `oldest` (by mtime, so a backlog drains in "
            "arrival order) or `name`; with several workers files overlap, so no order is strict"
        ),
    ),
    Setting(
        "folders[].rules[]",
        shown="required",
        required=True,
        meaning="the first rule that matches a file's name takes it",
    ),
    Setting("rules[].name", shown="the pattern", meaning="shown in logs, reports and the journal"),
    Setting(
        "rules[].pattern",
        shown="",
        meaning="a glob on the file name, case-insensitive (`INV-*.pdf`)",
    ),
    Setting(
        "rules[].regex",
        shown="",
        meaning="or a regular expression searched in the name; named groups feed `{match.NAME}`",
    ),
    Setting(
        "rules[].path_pattern",
        shown="",
        meaning=(
            "with `recursive`, a glob on the path below the inbox too (`invoices/**`, "
            "`*/scans/*.pdf`; `*` crosses folders): the rule takes only files there"
        ),
    ),
    Setting(
        "rules[].event",
        shown="required",
        required=True,
        meaning="the event name; placeholders allowed (not `{file}`)",
    ),
    Setting(
        "rules[].sidecar",
        shown="",
        meaning=(
            "the name of a metadata file (JSON, XML or CSV) that travels with the file, e.g. "
            '`"{stem}.json"`; its values feed `{sidecar.PATH}`'
        ),
    ),
    Setting(
        "rules[].sidecar_required",
        shown="true when `sidecar` is set",
        meaning="without it the file fails; with `false` it is sent without",
    ),
    Setting(
        "rules[].sidecar_timeout",
        shown="60",
        default=60.0,
        minimum=0,
        meaning="seconds a complete file waits for its sidecar and attachments",
    ),
    Setting(
        "rules[].sidecar_format",
        shown="by extension",
        options=("json", "xml", "csv"),
        meaning=(
            "how the sidecar is written: `json`, `xml` or `csv` (a header and one data row); "
            "when unset, `.xml` is XML, `.csv` `.tsv` `.txt` are CSV, anything else JSON"
        ),
    ),
    Setting(
        "rules[].sidecar_encoding",
        shown="utf-8",
        meaning="the sidecar's text encoding (`cp1252`, `latin-1`, ...); a byte order mark wins",
    ),
    Setting(
        "rules[].sidecar_delimiter",
        shown="sniffed",
        meaning=(
            "a CSV sidecar's or manifest's delimiter; unset, the one of `,` `;` tab `|` its "
            "header row uses most"
        ),
    ),
    Setting(
        "rules[].attach",
        shown="",
        meaning='further files sent with it, `name: "{stem}.png"`; each is required',
    ),
    Setting(
        "rules[].marker",
        shown="",
        meaning=(
            'a file an exporter writes when it has finished, e.g. `"{name}.ok"` or '
            '`"{stem}.done"`: the file is taken only once its marker is there (empty or not), '
            "and the marker moves with it to done or failed"
        ),
    ),
    Setting(
        "rules[].folder_marker",
        shown="",
        meaning=(
            "a file such as `READY` whose arrival says a whole folder's export is complete: the "
            "rule's files in that folder (the inbox, or each subfolder with `recursive`) are "
            "taken once it is there, and it moves to done after the last of them"
        ),
    ),
    Setting(
        "rules[].marker_timeout",
        shown="3600",
        default=3600.0,
        minimum=0,
        meaning=(
            "seconds a complete file waits for its marker or folder marker; then it fails as "
            "`MARKER_MISSING`"
        ),
    ),
    Setting(
        "rules[].manifest",
        shown="",
        meaning=(
            "instead of `pattern`: a glob on an index file's name (`*.idx.csv`); the rule takes "
            "the manifest with the documents its rows name, and fires one event per row"
        ),
    ),
    Setting(
        "rules[].manifest_format",
        shown="by extension",
        options=("json", "xml", "csv"),
        meaning="how the manifest is written: `csv` (a header, a row per document), `xml`, `json`",
    ),
    Setting(
        "rules[].manifest_rows",
        shown="found",
        meaning=(
            "in an XML or JSON manifest, the path to the repeated row element "
            "(`Batch.Documents.Document`); unset, the one list in it"
        ),
    ),
    Setting(
        "rules[].file_column",
        shown="required with `manifest`",
        meaning="the document each row names, a plain name in the manifest's folder: `{row.File}`",
    ),
    Setting(
        "rules[].manifest_timeout",
        shown="3600",
        default=3600.0,
        minimum=0,
        meaning=(
            "seconds a manifest waits for the documents it names (or for bad rows to be "
            "fixed); then the batch fails as `MANIFEST_ROWS_BAD`"
        ),
    ),
    Setting(
        "rules[].destination",
        shown="the folder's",
        meaning="the destination this rule's files are sent to",
    ),
    Setting(
        "rules[].verify_format",
        shown="true",
        default=True,
        meaning=(
            "check that a PDF, JPEG, PNG, DOCX, XLSX or PPTX (the file and its attachments) ends "
            "as its format says before taking it; `false` takes it on the other checks alone"
        ),
    ),
    Setting(
        "rules[].incomplete_timeout",
        shown="600",
        default=600.0,
        minimum=0,
        meaning=(
            "seconds a settled file may stay cut short (no trailer, or an end never written) "
            "before it fails as `INCOMPLETE_FILE`, unsent; a file still open for writing waits "
            "without limit"
        ),
    ),
    Setting(
        "rules[].payload",
        shown="sidecar + `assetId`",
        meaning="the event's JSON body, with placeholders",
    ),
)
BY_KEY = {s.key: s for s in SETTINGS}
# Sections nested in the top level: keys there, but no row of their own.
_CONTAINERS = {"": ("flowflex", "metrics", "folders")}  # destinations has a row


def names(section: str) -> tuple[str, ...]:
    """The keys a section accepts (unknown ones are reported with a suggestion)."""
    return tuple(s.name for s in SETTINGS if s.section == section) + _CONTAINERS.get(section, ())


def default(key: str) -> Any:
    return BY_KEY[key].default


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{s.key}` |{f' {s.shown}' if s.shown else ''} | {s.meaning} |" for s in SETTINGS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
