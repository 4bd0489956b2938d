"""Logging: structlog, JSON lines off a terminal (journald), readable lines on one.

Every line passes two guards before it is rendered: known secrets are
replaced with ``***`` and control characters in any string are escaped, so
a hostile file name cannot forge or break a log line. Standard-library
loggers (urllib3, watchdog, the client) go through the same chain.

flowflexd's own lines do not pass through the standard library's logging:
structlog renders them and writes each under the handler's lock. A record
and its copy per line, and a level check on each logger, cost about 20 us
of the 35 a line took, two lines per delivered file.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from flowflexd.rules.sanitize import printable

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_longest_first: list[str] = []  # _secrets sorted once per change, not once per line


def add_secret(value: str | None) -> None:
    """Never show ``value`` in a log line from now on."""
    global _longest_first  # noqa: PLW0603 - replaced whole, so a reader never sees it half-made
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)
            _longest_first = sorted(_secrets, key=len, reverse=True)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return printable(value)
    if isinstance(value, dict):
        return {_scrub(str(k), secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    return value


def guard(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Redact secrets and escape control characters in every value."""
    secrets = _longest_first
    return {key: _scrub(value, secrets) for key, value in event_dict.items()}


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that keeps a live status line (``once`` on a terminal) below its lines.

    Each log line first clears the status line, then the status line is drawn
    again beneath it, all under the handler's lock, so neither overwrites the
    other mid-line.
    """

    status: Callable[[], str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # as StreamHandler.emit: a bad record is reported, not raised
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Write one rendered line (a record's, or one of flowflexd's own) under the lock."""
        self.acquire()
        try:
            if self.status is not None:
                self.stream.write(_CLEAR_LINE)
            self.stream.write(line + "\n")
            if self.status is not None:
                self.stream.write(self.status())
            self.flush()
        except (OSError, ValueError):
            pass  # stderr gone (a closed pipe): as logging does, the daemon carries on
        finally:
            self.release()

    def redraw(self) -> None:
        if self.status is None:
            return
        self.acquire()
        try:
            self.stream.write(_CLEAR_LINE + self.status())
            self.flush()
        finally:
            self.release()


_CLEAR_LINE = "\r\x1b[K"
_handler: _Handler | None = None


class _LineWriter:
    """structlog's logger for flowflexd's own lines: each goes out through the one handler."""

    def __init__(self, name: str = "flowflexd", *_: Any) -> None:
        self.name = name  # for add_logger_name

    def msg(self, line: str) -> None:
        handler = _handler
        if handler is not None:
            handler.write_line(line)
        else:  # not configured yet (a library user): stderr, as logging's last resort
            sys.stderr.write(line + "\n")

    debug = info = warning = error = critical = fatal = msg


def status_stream() -> TextIO | None:
    """Where log lines go, when that is a terminal a status line can share."""
    if _handler is None or not _handler.stream.isatty():
        return None
    return cast(TextIO, _handler.stream)


def show_status(render: Callable[[], str] | None) -> None:
    """Keep ``render()`` as a live line below the log lines (None: no status line)."""
    if _handler is not None:
        _handler.status = render
        if render is None:
            _handler.acquire()
            try:
                _handler.stream.write("\n")
                _handler.flush()
            finally:
                _handler.release()
        else:
            _handler.redraw()


def redraw_status() -> None:
    if _handler is not None:
        _handler.redraw()


def configure(*, fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and the standard library's logging once, for the whole process."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, guard, renderer],
        logger_factory=_LineWriter,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            guard,
            renderer,
        ],
    )
    # No line shows the caller's file, the thread or the process, so the
    # logging module need not look them up for every record (its HOWTO's
    # "Optimization" list): a frame walk and a getpid() per line, saved.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _handler  # noqa: PLW0603 - one handler for the whole process, as logging has
    handler = _handler = _Handler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Their chatter at info is per connection or per inotify event: too much.
    for noisy in ("urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Its one warning, a queue overflow, is said by flowflexd's watcher, with the
    # folder, a count and the fix; watchdog's own line would say it again, each time.
    logging.getLogger("watchdog.observers.inotify_c").setLevel(max(logging.ERROR, root.level))
