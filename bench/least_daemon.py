"""The least daemon: the protocol's floor, plus noticing each file as it is written.

    python bench/least_daemon.py URL ROOT COUNT THREADS

Run by ``run.py --only cpu`` in a process of its own, as flowflexd runs, so
that the writing of the files (by the benchmark) is not counted. It watches
``ROOT/inbox`` with inotify for the one event a finished write gives
(``IN_CLOSE_WRITE``), read straight from the kernel, and hands each name to
one of ``THREADS`` threads, which does exactly what ``floor_protocol`` does:
the durable claim, the three calls over http.client with the asset's line
fsynced before the event, the move to done. Nothing else: no settling, no
check for writers, no journal, no retry, no log line, no rule. It prints
``ready`` once it watches, then its own CPU seconds (user+sys, all threads)
from then until the last file is in done.

What it answers: whether anything that notices files and keeps the
durability promise can, in Python, stay within 2x of the bare three calls.
"""

from __future__ import annotations

import ctypes
import os
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import _DurableClaims, _HttpClientCalls

IN_CLOSE_WRITE = 0x00000008
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def _watch(folder: Path) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(folder), IN_CLOSE_WRITE) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    return int(fd)


def _names(fd: int) -> list[str]:
    """Read one buffer of events: the names of the files written, in order."""
    data = os.read(fd, 64 * 1024)
    names, at = [], 0
    while at < len(data):
        _, mask, _, size = _EVENT.unpack_from(data, at)
        if mask & IN_Q_OVERFLOW:
            # Names were lost; a floor has no rescan to find them again.
            raise SystemExit("inotify's queue overflowed: raise fs.inotify.max_queued_events")
        at += _EVENT.size
        names.append(data[at : at + size].rstrip(b"\0").decode())
        at += size
    return names


def main() -> None:
    url, root, count, threads = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    inbox = root / "inbox"
    claims = _DurableClaims(root)
    calls = _HttpClientCalls(url)
    work: queue.SimpleQueue[tuple[int, Path] | None] = queue.SimpleQueue()

    def worker() -> None:
        while (item := work.get()) is not None:
            i, path = item

            def send(
                data: bytes, record_asset: Callable[[str], None], i: int = i, name: str = path.name
            ) -> None:
                calls.three(name, data, f"l-{i}-{time.time_ns()}", record_asset)

            claims.carry(i, path, send)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    fd = _watch(inbox)
    before = time.process_time()
    print("ready", flush=True)
    seen = 0
    while seen < count:
        for name in _names(fd):
            work.put((seen, inbox / name))
            seen += 1
    for _ in pool:
        work.put(None)
    for thread in pool:
        thread.join()
    used = time.process_time() - before
    moved = len(os.listdir(root / "done"))
    if moved != count:  # a worker died: its traceback is above
        raise SystemExit(f"least_daemon.py: {moved} of {count} files moved to done")
    print(f"{used:.6f}", flush=True)


if __name__ == "__main__":
    main()
