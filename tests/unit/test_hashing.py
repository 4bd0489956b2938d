"""HashingReader on real files: one pass gives the digest, whatever the retries."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowflexd.support.hashing import HashingReader

DATA = os.urandom(300_000)
EXPECTED = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "scan.pdf"
    path.write_bytes(DATA)
    opened = os.open(path, os.O_RDONLY)
    yield opened
    os.close(opened)


def read_through(reader: HashingReader, block: int, limit: int | None = None) -> bytes:
    out = b""
    while (limit is None or len(out) < limit) and (chunk := reader.read(block)):
        out += chunk
    return out


def test_one_pass_gives_the_digest_of_what_was_read(fd: int) -> None:
    reader = HashingReader(fd, len(DATA))

    assert read_through(reader, 65536) == DATA
    assert reader.sha256 == EXPECTED
    assert reader.digest() == EXPECTED


def test_a_retry_after_a_partial_pass_still_gives_the_right_digest(fd: int) -> None:
    reader = HashingReader(fd, len(DATA))
    read_through(reader, 4096, limit=100_000)  # an attempt cut short
    assert reader.sha256 is None
    reader.seek(0)
    assert read_through(reader, 4096) == DATA
    reader.seek(0)  # the client rewinds after the upload, too

    assert reader.sha256 == EXPECTED


def test_reads_out_of_order_give_no_digest_and_the_fallback_pass_does(fd: int) -> None:
    reader = HashingReader(fd, len(DATA))
    reader.seek(1000)
    assert read_through(reader, 65536) == DATA[1000:]

    assert reader.sha256 is None
    assert reader.digest() == EXPECTED


def test_seek_and_tell_keep_the_position_and_the_end_is_the_size_given(fd: int) -> None:
    reader = HashingReader(fd, len(DATA))
    assert reader.seekable() and reader.readable()

    assert reader.seek(10) == 10 and reader.tell() == 10
    assert reader.read(5) == DATA[10:15]
    assert reader.seek(5, os.SEEK_CUR) == 20
    assert reader.seek(0, os.SEEK_END) == len(DATA)
    assert reader.read(10) == b""
    assert reader.seek(-4, os.SEEK_END) == len(DATA) - 4
    assert reader.read() == DATA[-4:]
    with pytest.raises(ValueError, match="negative"):
        reader.seek(-1)


def test_reading_all_at_once_reads_to_the_end_of_the_file(fd: int) -> None:
    reader = HashingReader(fd, len(DATA))

    assert reader.read() == DATA
    assert reader.sha256 == EXPECTED


def test_the_reader_leaves_the_descriptor_where_it_was(fd: int) -> None:
    """Reads by position: the descriptor's own offset is not moved (and stays the caller's)."""
    reader = HashingReader(fd, len(DATA))
    read_through(reader, 65536)
    reader.seek(0)

    assert os.lseek(fd, 0, os.SEEK_CUR) == 0
