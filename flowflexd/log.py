"""Logging: structlog, JSON lines off a terminal (journald), readable lines on one.

Every line passes two guards before it is rendered: known secrets are
replaced with ``***`` and control characters in any string are escaped, so
a hostile file name cannot forge or break a log line. Standard-library
loggers (urllib3, watchdog, the client) go through the same chain.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from flowflexd.sanitize import printable

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secret(value: str | None) -> None:
    """Never show ``value`` in a log line from now on."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


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
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    return {key: _scrub(value, secrets) for key, value in event_dict.items()}


_WATCHDOG_INOTIFY = "watchdog.observers.inotify"


class _WatchdogStopNoise(logging.Filter):
    """Drop the ERROR watchdog 7.1 logs when an observer stops.

    Its emitter loop runs once more after the stop took its inotify handle
    away, logs "called when the thread is inactive" and returns: harmless,
    but an operator would read an ERROR on every shutdown and reload.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in str(record.msg)


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
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
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
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Their chatter at info is per connection or per inotify event: too much.
    for noisy in ("urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # On the one logger that says it, not the handler: a handler filter would
    # render every line's event dict to a string just to look for the phrase.
    noise = logging.getLogger(_WATCHDOG_INOTIFY)
    for stale in [f for f in noise.filters if isinstance(f, _WatchdogStopNoise)]:
        noise.removeFilter(stale)
    noise.addFilter(_WatchdogStopNoise())
