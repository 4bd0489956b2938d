"""HashingReader on real files: one pass gives the digest, whatever the retries."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flowflexd.support.hashing import HashingReader, sha256_of

DATA = os.urandom(300_000)
EXPECTED = hashlib.sha256(DATA).hexdigest()


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "scan.pdf"
    path.write_bytes(DATA)
    return path


def read_through(reader: HashingReader, block: int, limit: int | None = None) -> bytes:
    out = b""
    while (limit is None or len(out) < limit) and (chunk := reader.read(block)):
        out += chunk
    return out


def test_one_pass_gives_the_digest_of_what_was_read(tmp_path: Path) -> None:
    with a_file(tmp_path).open("rb") as raw:
        reader = HashingReader(raw, len(DATA))
        assert read_through(reader, 65536) == DATA

    assert reader.sha256 == EXPECTED


def test_a_retry_after_a_partial_pass_still_gives_the_right_digest(tmp_path: Path) -> None:
    with a_file(tmp_path).open("rb") as raw:
        reader = HashingReader(raw, len(DATA))
        read_through(reader, 4096, limit=100_000)  # an attempt cut short
        assert reader.sha256 is None
        reader.seek(0)
        read_through(reader, 4096)
        reader.seek(0)  # the client rewinds after the upload, too

    assert reader.sha256 == EXPECTED


def test_reads_out_of_order_give_no_digest_and_the_fallback_pass_does(tmp_path: Path) -> None:
    with a_file(tmp_path).open("rb") as raw:
        reader = HashingReader(raw, len(DATA))
        reader.seek(1000)
        read_through(reader, 65536)
        assert reader.sha256 is None
        assert sha256_of(raw) == EXPECTED


def test_it_passes_for_the_file_it_wraps(tmp_path: Path) -> None:
    with a_file(tmp_path).open("rb") as raw:
        reader = HashingReader(raw, len(DATA))
        assert reader.fileno() == raw.fileno()
        assert reader.seekable() and reader.readable()
        reader.seek(10)
        assert reader.tell() == 10
