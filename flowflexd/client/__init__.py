"""A FlowFlex API client with the official SDK's public surface.

Scripts written for ``flowflex`` run unchanged after ``from flowflexd.client
import ...``; the implementation lives in sdk.py, the protocol's file rules
in filetypes.py.
"""

from flowflexd.client.sdk import DEFAULT_MAX_FILE_BYTES, FileRef, FlowFlex, SendEventResult, file
from flowflexd.errors import FlowFlexConfigError, FlowFlexError, FlowFlexUploadError

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "FileRef",
    "FlowFlex",
    "FlowFlexConfigError",
    "FlowFlexError",
    "FlowFlexUploadError",
    "SendEventResult",
    "file",
]
