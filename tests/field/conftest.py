"""The field tier: a site (inbox, done, failed, emulator, daemon) and its writers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Folders, need

from field.servers import (
    Server,
    field_user,
    start_rsyncd,
    start_samba,
    start_sshd,
    start_vsftpd,
)
from field.writers import (
    CpWriter,
    CurlFtpWriter,
    RsyncWriter,
    SambaWriter,
    SftpWriter,
    Writer,
)
from flowflexd.emulator import Emulator

WRITERS = ["cp", "samba", "samba-windows", "vsftpd", "sftp", "rsync", "rsync-inplace"]


class Site(Folders):
    """An inbox the field user may write into, outside pytest's root-only tmp_path."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        user = field_user()
        os.chown(self.inbox, user.pw_uid, user.pw_gid)
        self.scratch = root / "scratch"  # the clients' local files
        self.scratch.mkdir()
        self.scratch.chmod(0o755)


@pytest.fixture
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="flowflexd-field-"))
    root.chmod(0o755)  # the servers run as the field user
    try:
        yield Site(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def emulator(site: Site) -> Iterator[Emulator]:
    with Emulator(data_dir=site.root / "emulator-data") as emu:
        yield emu


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _writer(kind: str, site: Site, servers: list[Server]) -> Writer:
    home = site.root / "server"
    home.mkdir(exist_ok=True)
    if kind == "cp":
        need("cp")
        return CpWriter(kind, site.inbox, scratch=site.scratch)
    if kind.startswith("samba"):
        need("smbclient")
        servers.append(start_samba(home, site.inbox))
        return SambaWriter(
            kind,
            site.inbox,
            scratch=site.scratch,
            server=servers[-1],
            set_size=kind == "samba-windows",
        )
    if kind == "vsftpd":
        need("curl")
        servers.append(start_vsftpd(home, site.inbox))
        return CurlFtpWriter(kind, site.inbox, scratch=site.scratch, server=servers[-1])
    if kind == "sftp":
        server, key = start_sshd(home)
        servers.append(server)
        return SftpWriter(kind, site.inbox, scratch=site.scratch, server=server, key=key)
    if kind.startswith("rsync"):
        servers.append(start_rsyncd(home, site.inbox))
        inplace = kind == "rsync-inplace"
        return RsyncWriter(
            kind,
            site.inbox,
            leaves_partial=inplace,
            scratch=site.scratch,
            server=servers[-1],
            inplace=inplace,
        )
    raise AssertionError(f"no writer {kind}")


@pytest.fixture(params=WRITERS)
def writer(request: pytest.FixtureRequest, site: Site, servers: list[Server]) -> Writer:
    return _writer(str(request.param), site, servers)
