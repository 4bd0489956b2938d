"""One read of a file for both its upload and its sha256.

The client reads an upload from the start, in order, and seeks back to the
start before a retry and after the upload. A reader that hashes what passes
through it therefore sees every attempt as one pass; the digest of the last
complete pass is the digest of the bytes that were sent. Reading a 25 MB
scan twice, once to hash and once to send, doubles the disk (or share)
traffic for nothing.
"""

from __future__ import annotations

import hashlib
from typing import IO


class HashingReader:
    """Wraps a seekable binary file; ``sha256`` is set once a pass reads ``size`` bytes."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self._raw = raw
        self._size = size
        self._pos = raw.tell()
        self._running = hashlib.sha256() if self._pos == 0 else None
        self.sha256: str | None = None

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        if self._running is not None and data:
            self._running.update(data)
            self._pos += len(data)
            if self._pos == self._size:
                self.sha256 = self._running.hexdigest()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._raw.seek(offset, whence)
        if pos == 0:
            self._running, self._pos = hashlib.sha256(), 0
        elif pos != self._pos:
            self._running = None  # out of order: this pass no longer counts
        return pos

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()


def sha256_of(raw: IO[bytes]) -> str:
    """A separate pass, from the start, for when no upload pass was complete."""
    raw.seek(0)
    digest = hashlib.sha256()
    while chunk := raw.read(1 << 16):
        digest.update(chunk)
    return digest.hexdigest()
