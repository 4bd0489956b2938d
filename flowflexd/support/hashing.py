"""One read of a file for both its upload and its sha256.

The client reads an upload from the start, in order, and seeks back to the
start before a retry and after the upload. A reader that hashes what passes
through it therefore sees every attempt as one pass; the digest of the last
complete pass is the digest of the bytes that were sent. Reading a 25 MB
scan twice, once to hash and once to send, doubles the disk (or share)
traffic for nothing.

The reader reads by position (``pread``) on a descriptor the caller opened
and checked, and keeps its position itself: a seek or a tell is bookkeeping,
not a system call, and the end is the size the caller measured. In a
threaded daemon every system call is also a hand-over of the interpreter
lock, and a buffered file object adds seven of them to each upload.
"""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 16


class HashingReader:
    """A file's bytes from ``fd`` by position; ``sha256`` is set once a pass reads ``size`` bytes.

    ``size`` is the file's size when it was opened: seeking to the end goes
    there. A file that grows later is sent up to that size (the caller's
    check after the upload sees the change); one that shrinks reads short.
    The descriptor stays the caller's to close.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._at = 0
        self._hashed = 0  # how far the running digest has seen, in order from the start
        self._running: hashlib._Hash | None = hashlib.sha256()
        self.sha256: str | None = None

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(BLOCK), b""))
        data = os.pread(self._fd, size, self._at)
        if self._running is not None and data and self._at == self._hashed:
            self._running.update(data)
            self._hashed += len(data)
            if self._hashed == self._size:
                self.sha256 = self._running.hexdigest()
        self._at += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._at, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._at = base + offset
        if self._at == 0:
            self._running, self._hashed = hashlib.sha256(), 0
        elif self._at != self._hashed:
            self._running = None  # out of order: this pass no longer counts
        return self._at

    def tell(self) -> int:
        return self._at

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def digest(self) -> str:
        """The sha256 of the file: from the pass that read it whole, else from a pass of its own."""
        if self.sha256 is not None:
            return self.sha256
        running = hashlib.sha256()
        at = 0
        while chunk := os.pread(self._fd, BLOCK, at):
            running.update(chunk)
            at += len(chunk)
        return running.hexdigest()
