"""A local FlowFlex-compatible server for trying rules and for every test."""

from flowflexd.emulator.server import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    DEFAULT_INTEGRATION_CODE,
    Emulator,
)
from flowflexd.emulator.state import ASSET_LIFETIME, UPLOAD_URL_LIFETIME, Clock

__all__ = [
    "ASSET_LIFETIME",
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "DEFAULT_INTEGRATION_CODE",
    "UPLOAD_URL_LIFETIME",
    "Clock",
    "Emulator",
]
