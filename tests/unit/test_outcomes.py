"""One function says what an error means for a file; every code comes from one enum."""

from __future__ import annotations

import errno
import re

import pytest
from support import ROOT

from flowflexd.engine.outcomes import Code, Decision, Verdict, classify
from flowflexd.errors import FileChanged, FileRejected, FlowFlexError, FlowFlexUploadError

V = Verdict
CASES = [
    (
        FileRejected("sidecar x.json is not valid JSON", code=Code.SIDECAR_INVALID),
        V.FAILED,
        "SIDECAR_INVALID",
    ),
    (FileChanged("a.pdf changed after it was read"), V.SETTLE_AGAIN, "FILE_CHANGED"),
    (OSError(errno.ENOSPC, "No space left on device"), V.RETRY_LOCAL, "FILESYSTEM"),
    (PermissionError(errno.EACCES, "Permission denied"), V.RETRY_LOCAL, "FILESYSTEM"),
    (KeyError("a bug"), V.RETRY_LOCAL, "INTERNAL"),
    (FlowFlexError("refused", status=401, code="UNAUTHORIZED"), V.PAUSE, "UNAUTHORIZED"),
    (FlowFlexError("no integration", status=404), V.PAUSE, "HTTP_404"),
    (FlowFlexError("moved", status=301), V.PAUSE, "HTTP_301"),
    (FlowFlexError("busy", status=503, retryable=True), V.RETRY_REMOTE, "HTTP_503"),
    # Over a quota: slowed down, not an outage (nothing pauses), never a failure.
    (
        FlowFlexError("slow down", status=429, code="RATE_LIMITED", retryable=True),
        V.THROTTLED,
        "RATE_LIMITED",
    ),
    (FlowFlexUploadError("slow down", status=429, retryable=True), V.THROTTLED, "HTTP_429"),
    (FlowFlexError("Network error", retryable=True), V.RETRY_REMOTE, "NETWORK"),
    (FlowFlexError("bad payload", status=400, code="INVALID_PAYLOAD"), V.FAILED, "INVALID_PAYLOAD"),
    (FlowFlexError("gone", status=422, code="ASSET_FILE_MISSING"), V.FAILED, "ASSET_FILE_MISSING"),
    # Refused before any request: the file itself is the trouble.
    (
        FlowFlexUploadError("type not allowed", code=Code.MIME_NOT_ALLOWED),
        V.FAILED,
        "MIME_NOT_ALLOWED",
    ),
    (FlowFlexUploadError("unreadable"), V.FAILED, "UPLOAD_REFUSED"),
    # Storage refusing one presigned URL: a retry asks for a new one, nothing pauses.
    (FlowFlexUploadError("expired", status=403, code="URL_EXPIRED"), V.RETRY_REMOTE, "URL_EXPIRED"),
    (FlowFlexUploadError("storage down", status=503, retryable=True), V.RETRY_REMOTE, "HTTP_503"),
]


@pytest.mark.parametrize(("error", "verdict", "code"), CASES, ids=lambda c: repr(c)[:40])
def test_each_error_is_classified_by_where_it_came_from(
    error: BaseException, verdict: Verdict, code: str
) -> None:
    decision = classify(error)
    assert (decision.verdict, decision.code) == (verdict, code)
    assert decision.reason  # every decision says why, for the report and the log


def test_reasons_say_what_happened_in_words() -> None:
    assert classify(OSError(errno.ENOSPC, "x")).reason == "No space left on device"
    refused = classify(FlowFlexError("bad payload", status=400, code="INVALID_PAYLOAD"))
    assert refused.reason == "FlowFlex refused it: bad payload"
    assert refused.status == 400
    assert "KeyError" in classify(KeyError("a bug")).reason


def test_a_failed_decision_becomes_the_rejection_written_into_the_report() -> None:
    rejection = Decision(V.FAILED, Code.UNMATCHED, "no rule takes it", 409).rejection()
    assert (rejection.code, rejection.message, rejection.status) == (
        "UNMATCHED",
        "no rule takes it",
        409,
    )


def test_no_module_spells_an_outcome_code_as_a_string_literal() -> None:
    """Codes come from Code; FlowFlex's own answers (and the emulator's) are the exception."""
    literal = re.compile(r'code\s*=\s*"[A-Z_]+"|"(' + "|".join(Code) + r')"')
    package = ROOT / "flowflexd"
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if "emulator" not in path.parts and path.name != "outcomes.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == []
