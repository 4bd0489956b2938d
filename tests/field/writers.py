"""Real clients writing into an inbox through real servers, one interface for all.

A ``Transfer`` is one upload in flight: its client process can be paused
(SIGSTOP: the server keeps the file open and waits, as for a stalled scanner
or a network hiccup) and killed (the client died mid-file). ``rate`` throttles
an upload so it takes longer than ``settle_seconds``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from field.servers import FIELD_PASSWORD, FIELD_USER, Server

CHUNK = 64 * 1024


def _feed(fifo: Path, src: Path, rate: int) -> None:
    """Write ``src`` into ``fifo`` at ``rate`` bytes/s; the reader may die meanwhile."""
    try:
        with fifo.open("wb") as out, src.open("rb") as data:
            while chunk := data.read(CHUNK):
                out.write(chunk)
                out.flush()
                time.sleep(len(chunk) / rate)  # pacing, not synchronisation
    except BrokenPipeError:
        pass


@dataclass
class Transfer:
    proc: subprocess.Popen[bytes]
    feeder: threading.Thread | None = None

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGCONT)  # a stopped process dies only once continued
        self.proc.kill()
        self.wait()

    def wait(self, timeout: float = 120) -> int:
        _, err = self.proc.communicate(timeout=timeout)
        if self.feeder is not None:
            self.feeder.join(timeout=10)
        if self.proc.returncode > 0:
            raise AssertionError(f"{self.proc.args!r} failed: {err.decode(errors='replace')}")
        return self.proc.returncode


def _popen(argv: Sequence[str], stdin: bytes | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        proc.stdin = None  # communicate() must not touch it again
    return proc


def _run(argv: Sequence[str], stdin: bytes | None = None) -> None:
    Transfer(_popen(argv, stdin)).wait()


@dataclass
class Writer:
    """Base: a client that uploads a local file under a name into the inbox."""

    label: str
    inbox: Path
    # Killed mid-file, the server leaves the prefix under the final name (else nothing).
    leaves_partial: bool = True
    scratch: Path = field(default_factory=lambda: Path("/nonexistent"))

    def upload(self, src: Path, name: str, *, rate: int | None = None) -> Transfer:
        raise NotImplementedError

    def upload_many(self, srcs: list[Path]) -> None:
        raise NotImplementedError

    def _fifo_of(self, src: Path, rate: int) -> tuple[Path, threading.Thread]:
        fifo = self.scratch / f"fifo-{src.name}"
        os.mkfifo(fifo)
        feeder = threading.Thread(target=_feed, args=(fifo, src, rate), daemon=True)
        feeder.start()
        return fifo, feeder


class CpWriter(Writer):
    """Plain cp; throttled by reading from a pipe fed at the rate."""

    def upload(self, src: Path, name: str, *, rate: int | None = None) -> Transfer:
        if rate is None:
            return Transfer(_popen(["cp", str(src), str(self.inbox / name)]))
        fifo, feeder = self._fifo_of(src, rate)
        return Transfer(_popen(["cp", str(fifo), str(self.inbox / name)]), feeder)

    def upload_many(self, srcs: list[Path]) -> None:
        _run(["cp", *map(str, srcs), f"{self.inbox}/"])


@dataclass
class SambaWriter(Writer):
    """Samba: smbclient's ``mput`` for batches; a paced SMB2 client for single files.

    smbclient cannot be throttled (from a pipe it reads everything before its
    first write), so uploads go through smb_copy.py, a real SMB2 client in its
    own process; ``set_size`` makes it copy like Windows Explorer.
    """

    server: Server | None = None
    set_size: bool = False

    def upload(self, src: Path, name: str, *, rate: int | None = None) -> Transfer:
        assert self.server is not None
        argv = [
            sys.executable,
            str(Path(__file__).with_name("smb_copy.py")),
            f"--port={self.server.port}",
            f"--user={FIELD_USER}",
            f"--password={FIELD_PASSWORD}",
            f"--name={name}",
            f"--src={src}",
            f"--rate={rate or 0}",
        ]
        if self.set_size:
            argv.append("--set-size")
        return Transfer(_popen(argv))

    def upload_many(self, srcs: list[Path]) -> None:
        assert self.server is not None
        command = f'lcd "{srcs[0].parent}"; prompt off; mput *.pdf'
        _run(
            [
                "smbclient",
                "//127.0.0.1/inbox",
                "-p",
                str(self.server.port),
                "-U",
                f"{FIELD_USER}%{FIELD_PASSWORD}",
                "-c",
                command,
            ]
        )


@dataclass
class CurlFtpWriter(Writer):
    """curl -T to vsftpd; --limit-rate throttles."""

    server: Server | None = None

    def _url(self, name: str = "") -> str:
        assert self.server is not None
        return f"ftp://{FIELD_USER}:{FIELD_PASSWORD}@127.0.0.1:{self.server.port}/{name}"

    def upload(self, src: Path, name: str, *, rate: int | None = None) -> Transfer:
        limit = ["--limit-rate", str(rate)] if rate else []
        return Transfer(_popen(["curl", "-sS", *limit, "-T", str(src), self._url(name)]))

    def upload_many(self, srcs: list[Path]) -> None:
        _run(["curl", "-sS", "-T", "{" + ",".join(map(str, srcs)) + "}", self._url()])


@dataclass
class SftpWriter(Writer):
    """OpenSSH's sftp with key authentication; -l throttles (Kbit/s)."""

    server: Server | None = None
    key: Path | None = None

    def _argv(self, rate: int | None) -> list[str]:
        assert self.server is not None and self.key is not None
        limit = ["-l", str(max(rate * 8 // 1000, 1))] if rate else []
        return [
            "sftp",
            "-b",
            "-",
            "-i",
            str(self.key),
            "-P",
            str(self.server.port),
            *limit,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{FIELD_USER}@127.0.0.1",
        ]

    def upload(self, src: Path, name: str, *, rate: int | None = None) -> Transfer:
        batch = f'put "{src}" "{self.inbox / name}"\n'.encode()
        return Transfer(_popen(self._argv(rate), stdin=batch))

    def upload_many(self, srcs: list[Path]) -> None:
        batch = "".join(f'put "{s}" "{self.inbox / s.name}"\n' for s in srcs).encode()
        _run(self._argv(None), stdin=batch)


@dataclass
class RsyncWriter(Writer):
    """rsync to an rsync daemon: default (temp name, then rename) or --inplace."""

    server: Server | None = None
    inplace: bool = False

    def _argv(self, rate: int | None) -> list[str]:
        options = ["--inplace"] if self.inplace else []
        if rate:
            options.append(f"--bwlimit={max(rate // 1024, 1)}")
        return ["rsync", *options]

    def _url(self, name: str = "") -> str:
        assert self.server is not None
        return f"rsync://127.0.0.1:{self.server.port}/inbox/{name}"

    def upload(self, src: Path, name: str, *, rate: int | None = None) -> Transfer:
        return Transfer(_popen([*self._argv(rate), str(src), self._url(name)]))

    def upload_many(self, srcs: list[Path]) -> None:
        _run([*self._argv(None), *map(str, srcs), self._url()])
