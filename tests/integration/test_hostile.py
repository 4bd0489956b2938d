"""Hostile and broken input: each case ends with a clear reason, no hang, nothing lost."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from support import (
    Folders,
    LoggedProcess,
    RunningDaemon,
    child_env,
    client_for,
    drop,
    files_in,
    flowflexd_argv,
    nothing_sent,
    read_report,
    sha256,
    wait_until,
)

from flowflexd.config.model import load
from flowflexd.emulator import Emulator
from flowflexd.engine.journal import Journal
from flowflexd.engine.outcomes import Verdict
from flowflexd.engine.pipeline import Pipeline
from flowflexd.inbox.spool import Spool

SECRET_BYTES = b"root:x:0:0:the secret the daemon must never read\n"


class Box(Folders):
    """An inbox with done and failed, and a secret file outside it."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.secret = tmp_path / "outside" / "secret.pdf"
        self.secret.parent.mkdir()
        self.secret.write_bytes(SECRET_BYTES)

    def config(
        self, emulator: Emulator, rules: list[dict[str, Any]] | None = None, **kw: Any
    ) -> Path:
        return super().config(
            emulator, rules or [{"name": "any", "pattern": "*", "event": "doc"}], **kw
        )


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def no_secret_uploaded(emulator: Emulator) -> None:
    digest = sha256(SECRET_BYTES)
    for event in emulator.events():
        assert all(a["sha256"] != digest for a in event["assets"].values())
    assert "/_storage" not in emulator.stats()["requests_by_path"]


# -------------------------------------------------------------------- links


@pytest.mark.parametrize(
    ("name", "target"),
    [("passwd.pdf", "/etc/passwd"), ("outside.pdf", "SECRET"), ("folder.pdf", "/etc")],
)
def test_a_symlink_is_set_aside_unread(
    box: Box, emulator: Emulator, name: str, target: str
) -> None:
    with RunningDaemon(box.config(emulator)):
        os.symlink(str(box.secret) if target == "SECRET" else target, box.inbox / name)
        wait_until(lambda: f"{name}.error.json" in files_in(box.failed))

    report = read_report(box.failed, name)
    assert report["code"] == "SYMLINK"
    assert "symbolic link" in report["reason"]
    assert os.path.islink(box.failed / name)  # the link itself moved, nothing behind it
    assert box.secret.read_bytes() == SECRET_BYTES
    assert emulator.events() == []
    no_secret_uploaded(emulator)


def claimed(
    box: Box, emulator: Emulator, members: dict[str, str], rules: list[dict[str, Any]]
) -> tuple[Spool, Any]:
    config = load(box.config(emulator, rules))
    spool = Spool(config.folders[0])
    spool.prepare()
    claim = spool.claim(members, rule=rules[0]["name"])
    assert claim is not None
    return spool, claim


def test_a_file_swapped_for_a_symlink_after_the_check_is_never_read(
    box: Box, emulator: Emulator
) -> None:
    drop(box.inbox, "swap.pdf", b"%PDF harmless\n%%EOF")
    spool, claim = claimed(
        box, emulator, {"file": "swap.pdf"}, [{"name": "any", "pattern": "*", "event": "e"}]
    )
    # Between every check and the open, someone swaps the file for a link.
    os.unlink(claim.path("file"))
    os.symlink(box.secret, claim.path("file"))

    outcome = Pipeline(client_for(emulator), Journal(box.root / "state")).carry(spool, claim)

    assert outcome.verdict is Verdict.FAILED
    assert outcome.code == "SYMLINK"
    assert os.path.islink(box.failed / "swap.pdf")
    no_secret_uploaded(emulator)
    assert emulator.events() == []


def test_a_sidecar_swapped_for_a_symlink_is_never_read(box: Box, emulator: Emulator) -> None:
    drop(box.inbox, "s.pdf", b"%PDF\n%%EOF")
    drop(box.inbox, "s.json", b"{}")
    rules = [{"name": "r", "pattern": "*.pdf", "event": "e", "sidecar": "{stem}.json"}]
    spool, claim = claimed(box, emulator, {"file": "s.pdf", "sidecar": "s.json"}, rules)
    os.unlink(claim.path("sidecar"))
    os.symlink("/etc/passwd", claim.path("sidecar"))

    outcome = Pipeline(client_for(emulator), Journal(box.root / "state")).carry(spool, claim)

    assert outcome.verdict is Verdict.FAILED
    assert outcome.code == "SYMLINK"
    assert emulator.stats()["requests_by_path"] == {}


def test_a_hard_link_to_a_file_elsewhere_is_refused(box: Box, emulator: Emulator) -> None:
    with RunningDaemon(box.config(emulator)):
        os.link(box.secret, box.inbox / "linked.pdf")
        wait_until(lambda: "linked.pdf.error.json" in files_in(box.failed))

    assert read_report(box.failed, "linked.pdf")["code"] == "HARD_LINKED"
    no_secret_uploaded(emulator)


# ------------------------------------------------------------ special files


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def make_device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


@pytest.mark.parametrize(
    ("maker", "kind"),
    [(make_fifo, "FIFO"), (make_socket, "socket"), (make_device, "character device")],
)
def test_special_files_are_set_aside_without_opening_them(
    box: Box, emulator: Emulator, maker: Any, kind: str
) -> None:
    with RunningDaemon(box.config(emulator)):
        maker(box.inbox / "special.pdf")
        drop(box.inbox, "after.pdf", b"%PDF after\n%%EOF")  # the workers are not stuck
        wait_until(lambda: "special.pdf.error.json" in files_in(box.failed))
        wait_until(lambda: "after.pdf" in files_in(box.done))

    report = read_report(box.failed, "special.pdf")
    assert report["code"] == "NOT_A_REGULAR_FILE"
    assert kind in report["reason"]
    assert len(emulator.events()) == 1


def test_a_fifo_sidecar_does_not_hang_a_worker(box: Box, emulator: Emulator) -> None:
    rules = [{"name": "r", "pattern": "*.pdf", "event": "e", "sidecar": "{stem}.json"}]
    drop(box.inbox, "f.pdf", b"%PDF\n%%EOF")
    os.mkfifo(box.inbox / "f.json")
    spool, claim = claimed(box, emulator, {"file": "f.pdf", "sidecar": "f.json"}, rules)

    outcome = Pipeline(client_for(emulator), Journal(box.root / "state")).carry(spool, claim)

    assert outcome.verdict is Verdict.FAILED
    assert outcome.code == "NOT_A_REGULAR_FILE"
    assert stat.S_ISFIFO(os.lstat(box.failed / "f.json").st_mode)


# ----------------------------------------------------------------- sidecars

SIDECAR_CASES = [
    ("not-json", b"<xml/>", "SIDECAR_INVALID", "is not valid JSON"),
    ("not-object", b'"just text"', "SIDECAR_INVALID", "holds str, not a JSON object"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "SIDECAR_INVALID", "nested too deeply"),
    ("deep-object", b'{"a":' * 200 + b"1" + b"}" * 200, "SIDECAR_INVALID", "nests deeper than 64"),
    (
        "huge",
        b'{"x": "' + b"a" * (1024 * 1024) + b'"}',
        "SIDECAR_TOO_LARGE",
        "over 1,048,576 bytes",
    ),
    ("bad-utf8", b'{"name": "\xc3\x28"}', "SIDECAR_INVALID", "is not UTF-8 text"),
    # UTF-16 without its byte order mark (with one, it is read: the mark wins).
    ("utf16", '{"name": "Ada"}'.encode("utf-16-le"), "SIDECAR_INVALID", "is not valid JSON"),
    ("nan", b'{"amount": NaN}', "SIDECAR_INVALID", "NaN is not a JSON number"),
    ("infinity", b'{"amount": -Infinity}', "SIDECAR_INVALID", "-Infinity is not a JSON number"),
]


@pytest.mark.parametrize(
    ("label", "content", "code", "reason"), SIDECAR_CASES, ids=[c[0] for c in SIDECAR_CASES]
)
def test_a_hostile_sidecar_fails_its_file_with_the_reason(
    box: Box, emulator: Emulator, label: str, content: bytes, code: str, reason: str
) -> None:
    rules = [{"name": "r", "pattern": "*.pdf", "event": "e", "sidecar": "{stem}.json"}]
    with RunningDaemon(box.config(emulator, rules)):
        drop(box.inbox, f"{label}.json", content)
        drop(box.inbox, f"{label}.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: f"{label}.pdf.error.json" in files_in(box.failed))

    report = read_report(box.failed, f"{label}.pdf")
    assert report["code"] == code
    assert reason in report["reason"]
    assert files_in(box.failed) == {f"{label}.pdf", f"{label}.json", f"{label}.pdf.error.json"}
    nothing_sent(emulator)


# ----------------------------------------------------------- paths and names


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_paths_from_names_and_sidecars_never_decide_where_files_go(
    box: Box, emulator: Emulator
) -> None:
    rules = [
        {
            "name": "r",
            "regex": r"^a(?P<x>.*)\.pdf$",
            "event": "e",
            "sidecar": "{stem}.json",
            "attach": {"label": "{match.x}"},
            "payload": {"where": "{sidecar.path}"},
        }
    ]
    config = box.config(emulator, rules)
    before = tree(box.root)
    with RunningDaemon(config):
        drop(box.inbox, "a...pdf", b"%PDF\n%%EOF")  # {match.x} is ".."
        drop(box.inbox, "a...json", b'{"path": "../../etc/cron.d/evil"}')
        wait_until(lambda: "a...pdf.error.json" in files_in(box.failed))

    assert read_report(box.failed, "a...pdf")["code"] == "BAD_COMPANION_NAME"
    created = tree(box.root) - before
    allowed = ("inbox", "done", "failed", "state", "emulator-data")
    assert all(path.split("/")[0] in allowed for path in created), created
    assert not (box.root.parent / "etc").exists()


HOSTILE_NAMES = [
    "new\nline.pdf",
    "carriage\rreturn.pdf",
    "\x1b[31mred\x1b[0m.pdf",
    os.fsdecode(b"latin1-\xe9t\xe9.pdf"),
    "-rf.pdf",
    "x" * 251 + ".pdf",
]


def test_hostile_names_are_processed_and_logged_escaped(tmp_path: Path, emulator: Emulator) -> None:
    box = Box(tmp_path)
    (box.done).mkdir()
    (box.done / HOSTILE_NAMES[-1]).write_bytes(b"an older file with the 255-byte name")
    proc = LoggedProcess(
        flowflexd_argv("run", "-c", str(box.config(emulator)), "--log-format", "json"),
        env=child_env(),
    )
    try:
        proc.wait_for_log("flowflexd ready")
        for name in HOSTILE_NAMES:
            drop(box.inbox, name, b"%PDF \n%%EOF" + os.fsencode(name))
        wait_until(lambda: len(files_in(box.done)) == len(HOSTILE_NAMES) + 1, timeout=30)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    raw = proc.output()
    for line in raw.splitlines():
        json.loads(line)  # no name broke a line in two
        assert "\x1b" not in line and "\r" not in line
    claimed_names = [r["file"] for r in proc.json_lines() if r.get("event") == "file claimed"]
    assert "new\\nline.pdf" in claimed_names
    assert "\\x1b[31mred\\x1b[0m.pdf" in claimed_names
    assert "latin1-\\xe9t\\xe9.pdf" in claimed_names
    trimmed = [n for n in files_in(box.done) if re.search(r" \([0-9a-f]{8}\)\.pdf$", n)]
    assert len(trimmed) == 1 and len(os.fsencode(trimmed[0])) <= 255
    uploaded = {a["filename"] for e in emulator.events() for a in e["assets"].values()}
    assert "latin1-\ufffdt\ufffd.pdf" in uploaded
    assert "new_line.pdf" in uploaded


def test_a_long_name_that_fails_gets_a_report_within_the_name_limit(
    box: Box, emulator: Emulator
) -> None:
    name = "y" * 251 + ".exe"
    with RunningDaemon(box.config(emulator)):
        drop(box.inbox, name, b"MZ")
        wait_until(lambda: name in files_in(box.failed) and len(files_in(box.failed)) == 2)

    [report] = [n for n in files_in(box.failed) if n.endswith(".error.json")]
    assert len(os.fsencode(report)) <= 255
    assert json.loads((box.failed / report).read_text())["file"] == name


# ----------------------------------------------------------------- oversize


def test_a_sparse_10_gb_file_is_rejected_without_being_read(box: Box, emulator: Emulator) -> None:
    with RunningDaemon(box.config(emulator)):
        with (box.inbox / "huge.pdf").open("wb") as fh:
            fh.truncate(10 * 1024**3)
        wait_until(lambda: "huge.pdf.error.json" in files_in(box.failed), timeout=20)

    assert read_report(box.failed, "huge.pdf")["code"] == "FILE_TOO_LARGE"
    assert emulator.stats()["requests_by_path"] == {}


# ------------------------------------------------------- headers and secrets


def test_an_event_name_with_control_characters_never_reaches_a_header(
    box: Box, emulator: Emulator
) -> None:
    rules = [
        {"name": "r", "pattern": "*.pdf", "event": "doc.{sidecar.kind}", "sidecar": "{stem}.json"}
    ]
    with RunningDaemon(box.config(emulator, rules)):
        drop(box.inbox, "h.json", json.dumps({"kind": "x\r\nX-Injected: 1"}).encode())
        drop(box.inbox, "h.pdf", b"%PDF\n%%EOF")
        wait_until(lambda: "h.pdf.error.json" in files_in(box.failed))

    assert read_report(box.failed, "h.pdf")["code"] == "BAD_EVENT_NAME"
    nothing_sent(emulator)


def test_no_secret_in_logs_reports_journal_or_claims(tmp_path: Path, emulator: Emulator) -> None:
    box = Box(tmp_path)
    rules: list[dict[str, Any]] = [
        {
            "name": "r",
            "pattern": "*.pdf",
            "event": "e",
            "sidecar": "{stem}.json",
            "sidecar_timeout": 0.3,
        },
        {"name": "exe", "pattern": "*.exe", "event": "e"},
    ]
    config = box.config(emulator, rules)
    proc = LoggedProcess(
        flowflexd_argv("run", "-c", str(config), "--log-format", "json", "--log-level", "debug"),
        env=child_env(),
    )
    try:
        proc.wait_for_log("flowflexd ready")
        emulator.fail_next(3)  # retries log at info
        drop(box.inbox, "ok.json", b"{}")
        drop(box.inbox, "ok.pdf", b"%PDF\n%%EOF")
        drop(box.inbox, "alone.pdf", b"%PDF\n%%EOF")
        drop(box.inbox, "bad.exe", b"MZ")
        wait_until(lambda: "ok.pdf" in files_in(box.done) and len(files_in(box.failed)) == 4)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    token = base64.b64encode(f"{emulator.api_key}:{emulator.api_secret}".encode()).decode()
    outputs = [proc.output()]
    for path in box.root.rglob("*"):
        if path.is_file() and "emulator-data" not in path.parts and path.name != "config.yaml":
            outputs.append(path.read_bytes().decode("utf-8", "replace"))
    everything = "\n".join(outputs)
    assert emulator.api_secret not in everything
    assert token not in everything
    assert "Authorization" not in everything
