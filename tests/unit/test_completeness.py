"""The checks that say a settled file is whole, on real files and real processes."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import PDF_END, PNG_END, as_nobody, pdf, skip_unless_nobody_runs

from flowflexd.inbox.completeness import (
    Writers,
    examine,
    format_problem,
    probe_writers,
    someone_writes,
    unwritten_tail,
)

# A writer in another process: opens the file for writing, says so, and
# holds it open until its standard input closes.
HOLDER = """
import sys
with open(sys.argv[1], "ab"):
    print("ready", flush=True)
    sys.stdin.read()
"""


@contextmanager
def held_by(script: str, path: Path) -> Iterator[None]:
    """Run ``script`` on ``path`` in another process until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def held_open_for_writing(path: Path) -> contextlib.AbstractContextManager[None]:
    return held_by(HOLDER, path)


def probe(path: Path) -> Writers:
    fd = os.open(path, os.O_RDONLY)
    try:
        return probe_writers(fd).writers
    finally:
        os.close(fd)


def test_a_closed_file_has_no_writer(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(pdf())
    assert probe(path) is Writers.NONE
    assert not someone_writes(path)


def test_a_file_another_process_holds_open_for_writing_has_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(b"%PDF half")
    with held_open_for_writing(path):
        assert probe(path) is Writers.OPEN
        assert someone_writes(path)
    assert probe(path) is Writers.NONE


def test_the_probe_lets_a_writer_open_the_file_at_once(tmp_path: Path) -> None:
    """The lease is released at once: writers never wait for a lease break."""
    path = tmp_path / "a.pdf"
    path.write_bytes(b"x")
    for _ in range(200):
        assert probe(path) is Writers.NONE
    with held_open_for_writing(path):  # would block for the lease-break time otherwise
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (setpriv)")
def test_without_cap_lease_on_another_users_file_it_cannot_tell(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    skip_unless_nobody_runs([sys.executable, "-c", "pass"])
    path = tmp_path / "root-owned.pdf"
    path.write_bytes(pdf())
    # Opened here, probed by a process running as nobody: the lease is judged
    # by who asks for it, whoever opened the file.
    code = (
        "import sys; from flowflexd.inbox.completeness import probe_writers; "
        "r = probe_writers(int(sys.argv[1])); print(r.writers.value, r.why)"
    )
    fd = os.open(path, os.O_RDONLY)
    try:
        done = subprocess.run(
            [*as_nobody(), sys.executable, "-c", code, str(fd)],
            capture_output=True,
            text=True,
            check=True,
            pass_fds=(fd,),
            cwd=Path(__file__).parents[2],
        )
    finally:
        os.close(fd)
    assert done.stdout.split(" ", 1) == [
        "unknown",
        "flowflexd's user neither owns the file nor has CAP_LEASE\n",
    ]


# ------------------------------------------------------------------- the tail


def tail_of(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return unwritten_tail(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def test_a_file_whose_size_was_set_first_ends_in_unwritten_bytes(tmp_path: Path) -> None:
    path = tmp_path / "copy.pdf"
    with path.open("wb") as fh:
        fh.truncate(1024 * 1024)  # what a Windows copy does over SMB
        fh.write(b"%PDF" + b"x" * 100_000)
    assert tail_of(path) >= 1024 * 1024 - 100_000 - 4096
    found = examine(path, verify_format=True)
    assert found is not None
    problem = found.problem()
    assert problem is not None
    assert problem[0] == "tail"
    assert "were never written" in problem[1]


def test_only_the_tail_counts_a_hole_inside_a_file_does_not(tmp_path: Path) -> None:
    path = tmp_path / "holey.pdf"
    with path.open("wb") as fh:
        fh.write(b"%PDF")
        fh.seek(1024 * 1024)  # a hole in the middle, as compressed file systems store zeros
        fh.write(PDF_END)
    assert tail_of(path) == 0
    found = examine(path, verify_format=True)
    assert found is not None
    assert found.problem() is None


def test_a_filled_file_has_no_unwritten_tail(tmp_path: Path) -> None:
    path = tmp_path / "full.pdf"
    path.write_bytes(pdf(b"x" * 50_000))
    assert tail_of(path) == 0


# ----------------------------------------------------------------- the format


def docx_bytes(comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>" * 100)
        archive.comment = comment
    return buffer.getvalue()


JPEG = b"\xff\xd8\xff\xe0" + b"jpeg data" * 50 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + b"png data" * 50 + PNG_END

WHOLE = [
    ("a.pdf", pdf(b"x" * 5000)),
    ("a.pdf", pdf() + b"\n" * 900),  # an incremental-update tail within the window
    ("a.jpg", JPEG),
    ("a.JPEG", JPEG + b"\x00" * 16),  # padded after the end marker by some cameras
    ("a.png", PNG),
    ("a.docx", docx_bytes()),
    ("a.xlsx", docx_bytes(comment=b"exported by the ERP")),
    ("a.pptx", docx_bytes()),
    ("a.txt", b"no format check for text"),
    ("a.mp3", b"ID3 no check for audio"),
]


@pytest.mark.parametrize(("name", "data"), WHOLE)
def test_whole_files_pass_the_format_check(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert format_problem(fd, len(data), name) is None
    finally:
        os.close(fd)


CUT = [
    ("a.pdf", pdf(b"x" * 5000)[:-10], "%%EOF"),
    ("a.pdf", pdf() + b"x" * 2000, "%%EOF"),  # the trailer too far from the end
    ("a.jpg", JPEG[:-100], "end-of-image"),
    ("a.png", PNG[:-3], "IEND"),
    ("a.docx", docx_bytes()[:-30], "end-of-central-directory"),
    ("a.xlsx", docx_bytes()[:200], "end-of-central-directory"),
    ("a.xlsx", docx_bytes(comment=b"a comment")[:-2], "end-of-central-directory"),
]


@pytest.mark.parametrize(("name", "data", "missing"), CUT)
def test_cut_short_files_fail_the_format_check_naming_what_is_missing(
    tmp_path: Path, name: str, data: bytes, missing: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        problem = format_problem(fd, len(data), name)
    finally:
        os.close(fd)
    assert problem is not None
    assert missing in problem


def test_verify_format_false_skips_the_format_check(tmp_path: Path) -> None:
    path = tmp_path / "raw.pdf"
    path.write_bytes(b"not a pdf at all")
    checked = examine(path, verify_format=True)
    unchecked = examine(path, verify_format=False)
    assert checked is not None and unchecked is not None
    assert checked.problem() == (
        "format",
        "raw.pdf is cut short: a PDF ends with %%EOF within its last 1,024 bytes; "
        "this one does not",
    )
    assert unchecked.problem() is None


def test_a_writer_is_the_first_problem_named(tmp_path: Path) -> None:
    path = tmp_path / "busy.pdf"
    path.write_bytes(b"%PDF half")
    with held_open_for_writing(path):
        found = examine(path, verify_format=True)
    assert found is not None
    problem = found.problem()
    assert problem == ("writer", "busy.pdf is still open for writing by another process")


# Holds a write lease, as smbd does with "kernel oplocks = yes" for a client
# with an exclusive oplock; it ignores the break signal and keeps the lease.
LEASE_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_file_under_another_processs_write_lease_counts_as_written(tmp_path: Path) -> None:
    path = tmp_path / "oplocked.pdf"
    path.write_bytes(pdf())
    with held_by(LEASE_HOLDER, path):
        found = examine(path, verify_format=True)  # O_NONBLOCK: refused, never waits
        assert someone_writes(path)
    assert found is not None
    assert found.writer.writers is Writers.OPEN
