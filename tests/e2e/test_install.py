"""The README's "Install as a service", step by step as written, on this machine.

Steps 1 to 6 run exactly as the README prints them (step 4's hand edit, the
FlowFlex address and the folders, is made on the file the step installed, as
an operator would; step 5's secret is the emulator's). Step 7 needs systemd,
which this machine does not run: it is acted out by starting the daemon the
way the unit does (its user and groups, CAP_LEASE, UMask=0077,
STATE_DIRECTORY, CREDENTIALS_DIRECTORY, NOTIFY_SOCKET). A scanner user in
the scanners group then drops files that reach done, and one that fails,
whose report that user can read; the operator's status shows the service's
counts. It needs root and a machine without an earlier installation: the
paths it creates are the README's own, and it removes them afterwards.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import (
    ROOT,
    LoggedProcess,
    NotifySocket,
    child_env,
    files_in,
    reachable_folder,
    readme_block,
    wait_until,
)

from flowflexd.emulator import Emulator

pytestmark = pytest.mark.slow

PLACES = [
    Path("/opt/flowflexd"),
    Path("/etc/flowflexd"),
    Path("/srv/drop"),
    Path("/var/lib/flowflexd"),
    Path("/usr/lib/sysusers.d/flowflexd.conf"),
]
SCANNER = "scanner1"


def service_steps() -> list[str]:
    """The shell blocks of "Install as a service", in order, as a reader copies them."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install as a service", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"\n( *)```sh\n(.*?)\n\1```", section, re.DOTALL)
    return [textwrap.dedent(block) for _, block in blocks]


def sh(script: str, *, cwd: Path = ROOT, user: str | None = None) -> str:
    argv = ["bash", "-euo", "pipefail", "-c", script]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False, env=child_env()
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _exists(name: str, db: str) -> bool:
    try:
        (pwd.getpwnam if db == "passwd" else grp.getgrnam)(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def shared() -> Iterator[Path]:
    with reachable_folder("flowflexd-install-") as path:
        yield path


@pytest.fixture
def machine() -> Iterator[None]:
    """Root, the tools the steps name, and none of the README's paths taken yet."""
    if os.geteuid() != 0:
        pytest.skip("the install steps run as root")
    for tool in ("systemd-sysusers", "runuser", "setpriv", "useradd", "groupadd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    taken = [str(p) for p in PLACES if p.exists()] + [
        name for name in ("flowflexd", SCANNER) if _exists(name, "passwd")
    ]
    if taken:
        pytest.skip(f"an installation is already here ({', '.join(taken)}); not touching it")
    made_group = not _exists("scanners", "group")
    try:
        yield
    finally:
        for place in PLACES:
            if place.is_dir():
                shutil.rmtree(place, ignore_errors=True)
            else:
                place.unlink(missing_ok=True)
        for user in ("flowflexd", SCANNER):
            subprocess.run(["userdel", user], capture_output=True, check=False)
        if made_group:
            subprocess.run(["groupdel", "scanners"], capture_output=True, check=False)
        subprocess.run(["groupdel", "flowflexd"], capture_output=True, check=False)


def operators_edit(config: Path, emulator: Emulator) -> None:
    """Step 4's hand edit: the FlowFlex address, absolute folders, no state_dir, no secret."""
    data = yaml.safe_load(config.read_text())
    data["flowflex"] = {
        "base_url": emulator.url,
        "api_key": emulator.api_key,
        "integration_code": emulator.integration_code,
    }
    data.pop("state_dir", None)
    folder = data["folders"][0]
    folder.update(
        path="/srv/drop/invoices",
        done="/srv/drop/invoices-done",
        failed="/srv/drop/invoices-failed",
    )
    with config.open("r+") as handle:  # in place: the mode and owner step 4 set stay
        handle.truncate()
        handle.write(yaml.safe_dump(data, sort_keys=False))


def start_as_the_unit(tmp_path: Path, notify: NotifySocket) -> LoggedProcess:
    """What systemd does for the unit: its user, capability, umask, directories, socket."""
    unit = sh("/opt/flowflexd/bin/flowflexd example unit")
    setting = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[:1].isupper()
    )
    account = pwd.getpwnam(setting["User"])
    state = Path("/var/lib") / setting["StateDirectory"]
    state.mkdir(mode=0o700)
    os.chown(state, account.pw_uid, account.pw_gid)
    credentials = tmp_path / "credentials"  # systemd's private copy, the service's to read
    credentials.mkdir()
    name, source = setting["LoadCredential"].split(":", 1)
    shutil.copy(source, credentials / name)
    os.chown(credentials / name, account.pw_uid, account.pw_gid)
    os.chown(credentials, account.pw_uid, account.pw_gid)
    credentials.chmod(0o500)
    caps = setting["AmbientCapabilities"].lower().removeprefix("cap_")
    argv = [
        "setpriv",
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--init-groups",
        f"--inh-caps=-all,+{caps}",
        f"--ambient-caps=+{caps}",
        "--",
        "sh",
        "-c",
        f"umask {setting['UMask']} && exec {setting['ExecStart']} --log-format json",
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "STATE_DIRECTORY": str(state),
        "CREDENTIALS_DIRECTORY": str(credentials),
        "NOTIFY_SOCKET": str(notify.path),
    }
    os.chmod(notify.path, 0o777)  # the service user sends to it
    return LoggedProcess(argv, env=env)


def test_the_readme_service_install_works_as_written(
    machine: None, shared: Path, emulator: Emulator
) -> None:
    steps = service_steps()
    assert len(steps) == 7, steps
    install, user, folders, configuration, secret, check, unit = steps
    sh("groupadd -f scanners")
    sh(f"useradd --no-create-home --shell /bin/sh -G scanners {SCANNER}")

    sh(install)
    sh(user)
    sh(folders)
    sh(configuration)
    config = Path("/etc/flowflexd/config.yaml")
    operators_edit(config, emulator)
    sh(secret.replace("the-api-secret", emulator.api_secret))
    checked = sh(check)
    assert "FlowFlex accepts the credentials and the integration code" in checked
    assert "folders checked as user flowflexd" in checked
    assert "/etc/systemd/system/flowflexd.service" in unit  # step 7: systemd, acted out below

    notify = NotifySocket(shared / "notify.sock")
    service = start_as_the_unit(shared, notify)
    try:
        try:
            notify.wait_for("READY=1", timeout=60)
        except AssertionError as err:
            raise AssertionError(f"{err}; the service said:\n{service.output()}") from None
        drops = readme_block("quickstart:drop").replace("demo/inbox", "/srv/drop/invoices")
        drops += "printf '%%PDF-1.4 bad\\n%%%%EOF\\n' > /srv/drop/invoices/INV-7.pdf\n"
        drops += "printf '{broken' > /srv/drop/invoices/INV-7.json\n"
        sh(f"umask 022\n{drops}", user=SCANNER, cwd=Path("/"))
        wait_until(
            lambda: (
                files_in(Path("/srv/drop/invoices-done"))
                == {"INV-1001.pdf", "INV-1001.json", "letter.pdf"}
            ),
            timeout=30,
        )
        wait_until(lambda: "INV-7.pdf.error.json" in files_in(Path("/srv/drop/invoices-failed")))
        report = sh("cat /srv/drop/invoices-failed/INV-7.pdf.error.json", user=SCANNER)
        [row] = json.loads(sh("/opt/flowflexd/bin/flowflexd status --json -c " + str(config)))
        reload = shlex.split(
            next(line for line in unit_lines() if line.startswith("ExecReload=")).split("=", 1)[1]
        )
        before = len(notify.drain())
        subprocess.run(reload, env={"MAINPID": str(service.proc.pid)}, check=True, timeout=10)
        notify.wait_for("READY=1", after=before + 1)
        service.proc.terminate()
        assert service.wait_exit() == 0
    finally:
        service.stop()
        notify.close()

    assert json.loads(report)["code"] == "SIDECAR_INVALID"
    assert (row["done"], row["failed"], row["failed_now"]) == (2, 1, 1)
    assert row["daemon_pid"] == service.proc.pid
    assert len(emulator.events()) == 2
    assert [line for line in service.json_lines() if line.get("level") == "error"] == []


def unit_lines() -> list[str]:
    return (ROOT / "systemd" / "flowflexd.service").read_text().splitlines()
