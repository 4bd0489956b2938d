"""Real transfer servers from Debian's packages, on loopback, writing into an inbox.

Each server runs in the foreground from a configuration written under its own
folder, listens on 127.0.0.1 on a free port, and is stopped by its pid. They
all write as one unprivileged user (``FIELD_USER``), the way share and FTP
users are not flowflexd's user on a real file server.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import need, start_listener

FIELD_USER = "ffield"
FIELD_PASSWORD = "field-Pass-7"  # a throwaway local test account's, on loopback only


def field_user() -> pwd.struct_passwd:
    """The unprivileged account every server writes as; created once, with a password."""
    if os.geteuid() != 0:
        pytest.skip("the field tier needs root: it runs servers and a local test account")
    # The suite runs in two processes (pytest-xdist): whichever comes first
    # creates the account while the other waits on the lock.
    with open(Path(tempfile.gettempdir()) / "flowflexd-field-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(FIELD_USER)
        except KeyError:
            pass
        need("useradd", "chpasswd")
        subprocess.run(
            ["useradd", "--system", "--home-dir", "/", "--shell", "/bin/sh", FIELD_USER],
            check=True,
        )
        subprocess.run(
            ["chpasswd"], input=f"{FIELD_USER}:{FIELD_PASSWORD}\n", text=True, check=True
        )
        return pwd.getpwnam(FIELD_USER)


@dataclass
class Server:
    """A server process in the foreground, stopped by its pid."""

    proc: subprocess.Popen[bytes]
    port: int
    home: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _start(argv: list[str], write_config: Callable[[int], object], home: Path, what: str) -> Server:
    """``argv`` run in ``home``, listening on the port ``write_config(port)`` configured."""
    log = home / "server.log"

    def launch(port: int) -> subprocess.Popen[bytes]:
        write_config(port)
        with log.open("wb") as out:
            # A session of its own: smbd signals its whole process group on the way
            # out, which would otherwise be pytest's.
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=home, start_new_session=True
            )

    try:
        proc, port = start_listener(launch, what)
    except RuntimeError as err:
        raise RuntimeError(f"{err}: {log.read_text(errors='replace')[-2000:]}") from err
    return Server(proc, port, home, log)


# ---------------------------------------------------------------------- Samba


def start_samba(home: Path, inbox: Path) -> Server:
    need("/usr/sbin/smbd", "smbpasswd")
    for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    conf = home / "smb.conf"

    def write_config(port: int) -> None:
        conf.write_text(
            f"""[global]
server role = standalone server
smb ports = {port}
interfaces = 127.0.0.1
bind interfaces only = yes
private dir = {home}/private
lock directory = {home}/lock
state directory = {home}/state
cache directory = {home}/cache
pid directory = {home}/pid
ncalrpc dir = {home}/ncalrpc
log file = {home}/smbd.log
passdb backend = tdbsam:{home}/private/passdb.tdb
load printers = no
printing = bsd
printcap name = /dev/null
disable spoolss = yes
server min protocol = SMB2

[inbox]
path = {inbox}
read only = no
valid users = {FIELD_USER}
"""
        )

    write_config(445)  # for smbpasswd, which reads where the passwords go (and binds no port)
    subprocess.run(
        ["smbpasswd", "-c", str(conf), "-a", "-s", FIELD_USER],
        input=f"{FIELD_PASSWORD}\n{FIELD_PASSWORD}\n",
        text=True,
        check=True,
        capture_output=True,
    )
    argv = ["/usr/sbin/smbd", "--foreground", "--no-process-group", "--configfile", str(conf)]
    return _start(argv, write_config, home, "smbd")


# --------------------------------------------------------------------- vsftpd


def start_vsftpd(home: Path, inbox: Path) -> Server:
    need("/usr/sbin/vsftpd")
    empty = home / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    empty.chmod(0o555)
    conf = home / "vsftpd.conf"

    def write_config(port: int) -> None:
        conf.write_text(
            f"""listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
local_root={inbox}
chroot_local_user=NO
pasv_enable=YES
pasv_address=127.0.0.1
seccomp_sandbox=NO
secure_chroot_dir={empty}
pam_service_name=vsftpd
userlist_enable=NO
xferlog_enable=YES
vsftpd_log_file={home}/vsftpd.log
"""
        )
        conf.chmod(0o600)

    return _start(["/usr/sbin/vsftpd", str(conf)], write_config, home, "vsftpd")


# ---------------------------------------------------------------------- sshd


def start_sshd(home: Path) -> tuple[Server, Path]:
    """sshd with its internal sftp server; returns it and the client's private key."""
    need("/usr/sbin/sshd", "ssh-keygen", "sftp")
    home.mkdir(parents=True, exist_ok=True)
    host_key, client_key = home / "host_key", home / "client_key"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            capture_output=True,
        )
    keys = home / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), keys)
    keys.chmod(0o644)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    conf = home / "sshd_config"

    def write_config(port: int) -> None:
        conf.write_text(
            f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {home}/sshd.pid
AuthorizedKeysFile {keys}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin no
AllowUsers {FIELD_USER}
Subsystem sftp internal-sftp
"""
        )

    argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)]
    return _start(argv, write_config, home, "sshd"), client_key


# -------------------------------------------------------------- rsync daemon


def start_rsyncd(home: Path, inbox: Path) -> Server:
    need("rsync")
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "rsyncd.conf"

    def write_config(port: int) -> None:
        # Left by a try that could not bind its port: rsync will not start over one.
        (home / "rsyncd.pid").unlink(missing_ok=True)
        conf.write_text(
            f"""use chroot = no
port = {port}
address = 127.0.0.1
pid file = {home}/rsyncd.pid
log file = {home}/rsyncd.log
[inbox]
path = {inbox}
read only = no
uid = {FIELD_USER}
gid = {FIELD_USER}
"""
        )

    argv = ["rsync", "--daemon", "--no-detach", f"--config={conf}"]
    return _start(argv, write_config, home, "rsync daemon")
