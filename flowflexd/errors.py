"""Every exception flowflexd raises on purpose, in one tree.

``FlowflexdError`` is the root. ``UserError`` and its children carry a message
meant for a person and become an exit code without a traceback. The
``FlowFlexError`` branch is the client's, with the same names and attributes
as the official SDK's so scripts written for it keep working.
"""

from __future__ import annotations

from typing import Any


class FlowflexdError(Exception):
    """Root of every error flowflexd raises on purpose."""


class UserError(FlowflexdError):
    """Something the user can fix; shown as a message, never as a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(UserError):
    """The configuration is invalid; ``problems`` lists every finding at once."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        title = f"{count} configuration problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([title, *(f"  - {p}" for p in self.problems)]))


class AlreadyRunningError(UserError):
    """Another flowflexd holds the lock of an inbox this one was told to watch."""

    exit_code = 2


class FlowFlexError(FlowflexdError):
    """Any failure of a FlowFlex API call, as the official SDK reports it.

    ``status`` is the HTTP status when an answer came back, ``code`` the
    backend's machine code (``MIME_NOT_ALLOWED``, ``ASSET_FILE_MISSING`` ...),
    ``details`` the answer's body. ``retryable`` says whether the same call may
    succeed later (network trouble, 408, 429, 5xx); ``retry_after`` carries the
    server's Retry-After in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: Any = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details
        self.retryable = retryable
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"
        )


class FlowFlexConfigError(FlowFlexError):
    """The client was given missing or invalid options, or an unsafe header value."""


class FlowFlexUploadError(FlowFlexError):
    """A file could not be read, was refused before upload, or storage rejected it."""


class FileRejected(FlowflexdError):
    """A dropped file cannot be sent as it is; it goes to the failed folder.

    ``code`` is a short machine-readable reason (``SIDECAR_MISSING``,
    ``NOT_A_REGULAR_FILE`` ...) written into the file's error report.
    """

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class FileChanged(FlowflexdError):
    """A claimed file (or a companion) changed, or is open for writing, before its event fired.

    Nothing was fired: the claim keeps its idempotency key, settles again, and
    is uploaded again.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
