"""Every outcome code flowflexd writes, and the one function that decides what an error means.

A code names why a file failed or waits; it is written into the failed
folder's report, the journal and the log, so it is part of what operators
script against. FlowFlex's own machine codes (``MIME_NOT_ALLOWED``,
``ASSET_FILE_MISSING`` ...) pass through unchanged where it gave one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from flowflexd.errors import FileChanged, FileRejected, FlowFlexError, FlowFlexUploadError


class Code(StrEnum):
    # The file is set aside in failed, with its report.
    SYMLINK = "SYMLINK"
    NOT_A_REGULAR_FILE = "NOT_A_REGULAR_FILE"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    HARD_LINKED = "HARD_LINKED"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    MIME_NOT_ALLOWED = "MIME_NOT_ALLOWED"
    INCOMPLETE_FILE = "INCOMPLETE_FILE"
    UNMATCHED = "UNMATCHED"
    NO_FILE_FOR_COMPANION = "NO_FILE_FOR_COMPANION"
    BAD_COMPANION_NAME = "BAD_COMPANION_NAME"
    BAD_EVENT_NAME = "BAD_EVENT_NAME"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    SIDECAR_MISSING = "SIDECAR_MISSING"
    SIDECAR_INVALID = "SIDECAR_INVALID"
    SIDECAR_TOO_LARGE = "SIDECAR_TOO_LARGE"
    SIDECAR_PATH_MISSING = "SIDECAR_PATH_MISSING"
    PATH_SEGMENT_MISSING = "PATH_SEGMENT_MISSING"  # {dir[N]} beyond the file's folders
    BAD_DESTINATION = "BAD_DESTINATION"  # a done or failed template would leave its folder
    ATTACHMENT_MISSING = "ATTACHMENT_MISSING"
    MARKER_MISSING = "MARKER_MISSING"  # the exporter never said the file was complete
    # Not a failure: a folder marker whose batch is finished moves to done, no event.
    FOLDER_MARKER = "FOLDER_MARKER"
    MANIFEST_INVALID = "MANIFEST_INVALID"  # an index file that cannot be read as rows
    MANIFEST_ROWS_BAD = "MANIFEST_ROWS_BAD"  # rows name files missing, outside, or refused
    MANIFEST_ROWS_FAILED = "MANIFEST_ROWS_FAILED"  # some rows' events were refused
    UPLOAD_REFUSED = "UPLOAD_REFUSED"
    CHANGED_AFTER_EVENT = "CHANGED_AFTER_EVENT"
    UNKNOWN_DESTINATION = "UNKNOWN_DESTINATION"  # claimed for a destination since removed
    FILE_GONE = "FILE_GONE"  # someone removed a claimed file from the work area
    CLAIM_UNREADABLE = "CLAIM_UNREADABLE"  # a claim's state was lost; its files are set aside
    # The file waits and is tried again.
    FILESYSTEM = "FILESYSTEM"  # this machine: disk full, read-only, unreadable
    INTERNAL = "INTERNAL"  # a bug; the file stays claimed
    CLAIM_FAILED = "CLAIM_FAILED"  # the file could not be moved into the work area
    FILE_CHANGED = "FILE_CHANGED"  # a writer came back before the event fired
    NETWORK = "NETWORK"  # no answer from FlowFlex
    # From the client, for answers that break the protocol.
    INSECURE_UPLOAD_URL = "INSECURE_UPLOAD_URL"
    UNEXPECTED_ANSWER = "UNEXPECTED_ANSWER"


class Verdict(Enum):
    DONE = "done"
    FAILED = "failed"  # set aside with the code; never sent again by itself
    RETRY_LOCAL = "retry-local"  # trouble on this machine: backoff, nothing else pauses
    SETTLE_AGAIN = "settle-again"  # it changed: look again once it may have settled
    RETRY_REMOTE = "retry-remote"  # FlowFlex failing or unreachable: sending pauses
    THROTTLED = "throttled"  # FlowFlex said 429: the destination slows down; not an outage
    PAUSE = "pause"  # FlowFlex refuses our configuration: sending pauses until fixed
    GONE = "gone"  # vanished or changed before it could be claimed; nothing happened


#: HTTP statuses worth the same call again later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Our configuration is wrong (credentials, integration, or a base_url that
# redirects): every file would fail the same way, so sending pauses instead.
PAUSE_STATUSES = frozenset({301, 302, 303, 307, 308, 401, 403, 404})


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    code: str = ""  # a Code, or FlowFlex's own machine code
    reason: str = ""
    status: int | None = None

    def rejection(self) -> FileRejected:
        return FileRejected(self.reason, code=self.code, status=self.status)

    def as_record(self) -> dict[str, Any]:
        """A failure as a claim stores it, so a restart reports the reason decided."""
        return {"code": str(self.code), "reason": self.reason, "status": self.status}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Decision:
        return cls(Verdict.FAILED, record["code"], record["reason"], record.get("status"))


def classify(err: BaseException) -> Decision:
    """What an error met while carrying a file means for that file."""
    if isinstance(err, FileRejected):
        return Decision(Verdict.FAILED, err.code, err.message, err.status)
    if isinstance(err, FileChanged):
        return Decision(Verdict.SETTLE_AGAIN, Code.FILE_CHANGED, err.message)
    if isinstance(err, FlowFlexError):
        return _api(err)
    if isinstance(err, OSError):
        # Full disk, read-only or unreadable folder: nothing is lost by waiting.
        return Decision(Verdict.RETRY_LOCAL, Code.FILESYSTEM, _os_reason(err))
    # A bug must not strand the file: it stays claimed and is retried.
    return Decision(Verdict.RETRY_LOCAL, Code.INTERNAL, f"{type(err).__name__}: {err}")


def _api(err: FlowFlexError) -> Decision:
    code = err.code or (f"HTTP_{err.status}" if err.status else Code.NETWORK)
    upload = isinstance(err, FlowFlexUploadError)
    if upload and err.status is None and not err.retryable:
        # Refused before any request: unreadable, wrong type, over the cap.
        return Decision(Verdict.FAILED, err.code or Code.UPLOAD_REFUSED, err.message)
    if err.status in PAUSE_STATUSES and not upload:
        return Decision(Verdict.PAUSE, code, err.message, err.status)
    if err.status == 429:
        # A quota, not an outage: the limiter already holds the destination.
        return Decision(Verdict.THROTTLED, code, err.message, err.status)
    if err.retryable or upload:
        # Storage answers for one URL, which a retry asks for anew.
        return Decision(Verdict.RETRY_REMOTE, code, err.message, err.status)
    return Decision(Verdict.FAILED, code, f"FlowFlex refused it: {err.message}", err.status)


def _os_reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)
