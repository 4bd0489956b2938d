from __future__ import annotations

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
