"""The README's service steps under a real systemd, in a throwaway container.

A minimal Debian (mmdebstrap, cached between runs) boots its own systemd in
systemd-nspawn, with a volatile root (nothing it writes survives) and no
network. A oneshot unit in it runs the steps the host wrote from the README:
the wheel installed offline into /opt/flowflexd, the user, the folders, the
configuration, the credential, check, the unit with systemctl, a scanner
user's files, systemctl reload and stop, the journal. Results come back
through a bound folder, and the container powers itself off. Never on the
machine's own root: systemd's boot-time clean-up would empty /tmp and /run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import reachable_folder, readme_block

from e2e.test_install import service_steps
from e2e.test_wheel import built_wheel
from flowflexd.emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET, DEFAULT_INTEGRATION_CODE

pytestmark = pytest.mark.slow

PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,passwd,util-linux"
CACHE = Path("/var/tmp/flowflexd-nspawn")
RUNNER = """\
[Unit]
Description=flowflexd's install test: runs /out/steps.sh, then powers off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/bash /out/steps.sh
ExecStopPost=/bin/systemctl --no-block poweroff
"""


def need_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("booting a container needs root")
    for tool in ("mmdebstrap", "systemd-nspawn"):
        if shutil.which(tool) is None:
            message = f"{tool} is not installed (Debian: mmdebstrap, systemd-container)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)


def rootfs() -> Path:
    """A minimal Debian with systemd, built once and kept (the container never writes it)."""
    key = hashlib.sha256(f"{PACKAGES}\n{RUNNER}".encode()).hexdigest()[:12]
    root = CACHE / key / "root"
    if (root / "usr/lib/systemd/systemd").exists():
        return root
    shutil.rmtree(root.parent, ignore_errors=True)
    root.parent.mkdir(parents=True)
    building = root.with_name("building")
    unit = "etc/systemd/system/flowflexd-install-test.service"
    hook = (
        f"printf '%s' {shlex_quote(RUNNER)} > \"$1/{unit}\" && "
        f'ln -s /{unit} "$1/etc/systemd/system/multi-user.target.wants/"'
    )
    subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={PACKAGES}",
            f"--customize-hook={hook}",
            "bookworm",
            str(building),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    building.rename(root)
    return root


def shlex_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def container_python(root: Path) -> str:
    """The container's Python as pip's ``--python-version`` wants it: ``3.11`` for bookworm."""
    return os.readlink(root / "usr/bin/python3").removeprefix("python")


def wheelhouse(tmp_path: Path, python: str) -> Path:
    """The built wheel and what it needs, for an offline install in the container.

    Wheels for the container's Python, not this one's: a host on another
    Python would fetch a PyYAML the container cannot install.
    """
    wheel = built_wheel(tmp_path)
    house = tmp_path / "wheels"
    house.mkdir()
    shutil.copy(wheel, house)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "-d",
            str(house),
            "--python-version",
            python,
            "--only-binary=:all:",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return house


def steps_script(wheel_name: str) -> str:
    """The README's blocks, as a root shell in the container runs them."""
    install, user, folders, configuration, secret, check, unit = service_steps()
    install = install.replace(
        "pip install .", f"pip install --no-index --find-links /wheels /wheels/{wheel_name}"
    )
    secret = secret.replace("the-api-secret", DEFAULT_API_SECRET)
    # `systemctl edit` opens an editor; the drop-in it would write, written directly.
    unit = unit.replace(
        "systemctl edit flowflexd      # add:  [Service]  ReadWritePaths=/srv/drop",
        "mkdir -p /etc/systemd/system/flowflexd.service.d && printf '[Service]\\n"
        "ReadWritePaths=/srv/drop\\n' > /etc/systemd/system/flowflexd.service.d/override.conf",
    )
    edit = textwrap.dedent(
        f"""\
        import yaml
        path = "/etc/flowflexd/config.yaml"
        data = yaml.safe_load(open(path))
        data["flowflex"] = {{"base_url": "http://127.0.0.1:8765",
            "api_key": "{DEFAULT_API_KEY}", "integration_code": "{DEFAULT_INTEGRATION_CODE}"}}
        data.pop("state_dir", None)
        data["folders"][0].update(path="/srv/drop/invoices", done="/srv/drop/invoices-done",
            failed="/srv/drop/invoices-failed")
        with open(path, "r+") as handle:
            handle.truncate()
            handle.write(yaml.safe_dump(data, sort_keys=False))
        """
    )
    return textwrap.dedent(
        """\
        set -euxo pipefail
        exec > /out/log.txt 2>&1
        trap 'echo "line $LINENO" > /out/failed' ERR
        wait_for() {{ for _ in $(seq 300); do eval "$1" && return 0; sleep 0.1; done; return 1; }}
        groupadd scanners
        useradd --no-create-home --shell /bin/sh -G scanners scanner1
        {install}
        {user}
        {folders}
        {configuration}
        /opt/flowflexd/bin/python - <<'EDIT'
        {edit}
        EDIT
        {secret}
        /opt/flowflexd/bin/flowflexd emulator --port 8765 --log-format json \\
            > /out/emulator.log 2>&1 &
        wait_for "(echo > /dev/tcp/127.0.0.1/8765) 2>/dev/null"
        {check}
        {unit}
        wait_for "systemctl is-active --quiet flowflexd"
        runuser -u scanner1 -- bash -eu /out/drops.sh
        sent=/srv/drop/invoices-done
        wait_for "[ -e $sent/letter.pdf ] && [ -e $sent/INV-1001.pdf ]"
        wait_for "[ -e /srv/drop/invoices-failed/INV-7.pdf.error.json ]"
        runuser -u scanner1 -- cat /srv/drop/invoices-failed/INV-7.pdf.error.json > /out/report.json
        systemctl show -p StatusText --value flowflexd > /out/status-text.txt
        systemctl reload flowflexd
        systemctl is-active flowflexd > /out/after-reload.txt
        systemctl show -p MainPID --value flowflexd > /out/main-pid.txt
        /opt/flowflexd/bin/flowflexd status --json -c /etc/flowflexd/config.yaml > /out/status.json
        systemctl stop flowflexd
        systemctl show -p Result --value flowflexd > /out/stop-result.txt
        journalctl -u flowflexd -o cat --no-pager > /out/journal.txt
        touch /out/done
        """
    ).format(
        install=install,
        user=user,
        folders=folders,
        configuration=configuration,
        edit=edit,
        secret=secret,
        check=check,
        unit=unit,
    )


def drops_script() -> str:
    """The quick start's files, dropped by the scanner user, and one that fails."""
    drops = readme_block("quickstart:drop").replace("demo/inbox", "/srv/drop/invoices")
    return (
        "umask 022\n"
        + drops
        + "printf '%%PDF-1.4 bad\\n%%%%EOF\\n' > /srv/drop/invoices/INV-7.pdf\n"
        + "printf '{broken' > /srv/drop/invoices/INV-7.json\n"
    )


@pytest.fixture
def out() -> Iterator[Path]:
    with reachable_folder("flowflexd-systemd-") as path:  # the container's scanner reads it
        yield path


def test_the_readme_service_steps_under_a_real_systemd(tmp_path: Path, out: Path) -> None:
    need_root_and_tools()
    root = rootfs()
    wheels = wheelhouse(tmp_path, container_python(root))
    [wheel] = wheels.glob("flowflexd-*.whl")
    (out / "steps.sh").write_text(steps_script(wheel.name))
    (out / "drops.sh").write_text(drops_script())
    (out / "drops.sh").chmod(0o644)

    booted = subprocess.run(
        [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(root),
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--bind={out}:/out",
            f"--bind-ro={wheels}:/wheels",
            "-b",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else booted.stdout
    failed = (out / "failed").read_text() if (out / "failed").exists() else ""
    assert (out / "done").exists(), f"{failed}\n{log[-4000:]}"
    assert json.loads((out / "report.json").read_text())["code"] == "SIDECAR_INVALID"
    assert (out / "status-text.txt").read_text().startswith("waiting ")
    assert (out / "after-reload.txt").read_text().strip() == "active"
    [row] = json.loads((out / "status.json").read_text())
    assert (row["done"], row["failed"]) == (2, 1)
    assert row["daemon_pid"] == int((out / "main-pid.txt").read_text())
    assert (out / "stop-result.txt").read_text().strip() == "success"
    journal = (out / "journal.txt").read_text()
    assert "configuration reloaded" in journal
    assert "flowflexd stopped" in journal
