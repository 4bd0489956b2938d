from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import client_for

from flowflexd.client import FlowFlex
from flowflexd.emulator import Emulator


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(data_dir=tmp_path / "emulator-data") as emu:
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> Iterator[FlowFlex]:
    with client_for(emulator) as ff:
        yield ff


@pytest.fixture(autouse=True)
def machine_share(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Tests marked ``alone`` change what every process on the machine shares (they
    use up root's inotify watches, or lower the kernel's event queue), so while one
    runs, the other pytest-xdist worker runs nothing.

    A readers-writer lock across the workers: every test holds ``machine.lock``
    shared, an ``alone`` test holds it exclusively. The turnstile, held while a
    test waits for ``machine.lock``, gives a waiting ``alone`` test its turn: the
    other worker's next test cannot take the lock shared again in the meantime.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # one folder per run, for all workers
    mode = fcntl.LOCK_EX if request.node.get_closest_marker("alone") else fcntl.LOCK_SH
    with (
        open(shared / "turnstile.lock", "a") as turnstile,
        open(shared / "machine.lock", "a") as machine,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, mode)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield
