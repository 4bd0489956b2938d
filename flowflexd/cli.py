"""The ``flowflexd`` command: argument parsing and the one top-level error handler."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

import structlog

from flowflexd import __version__
from flowflexd import log as logsetup
from flowflexd.emulator import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    DEFAULT_INTEGRATION_CODE,
    Emulator,
)
from flowflexd.errors import UserError

log = structlog.get_logger("flowflexd")

Handler = Callable[[argparse.Namespace], int]


def _share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError("must be a share between 0 and 1, such as 0.3")
    return share


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return number


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=logsetup.FORMATS,
        default="auto",
        help="json lines (for journald), console lines, or auto: console on a terminal",
    )
    parser.add_argument("--log-level", choices=logsetup.LEVELS, default="info")


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.wait(1.0):
        pass


def cmd_emulator(args: argparse.Namespace) -> int:
    emulator = Emulator(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        api_key=args.api_key,
        api_secret=args.api_secret,
        integration_code=args.integration_code,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        storage_fail_rate=args.storage_fail_rate,
        retry_after_seconds=args.retry_after,
        seed=args.seed,
    )
    try:
        emulator.start()
    except OSError as err:
        raise UserError(
            f"Cannot listen on {args.host}:{args.port}: {err.strerror}",
            hint="pick another --port, or --port 0 for any free one",
        ) from err
    logsetup.add_secret(args.api_secret)
    log.info(
        "emulator ready",
        base_url=emulator.url,
        api_key=args.api_key,
        integration_code=args.integration_code,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        events_url=f"{emulator.url}/_emulator/events",
    )
    try:
        wait_for_stop_signal()
    finally:
        emulator.stop()
        log.info("emulator stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowflexd",
        description="Turn files dropped into watched folders into FlowFlex events.",
    )
    parser.add_argument("--version", action="version", version=f"flowflexd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emu = commands.add_parser(
        "emulator",
        help="run a local FlowFlex-compatible API server",
        description="A local FlowFlex-compatible server: the three API calls, presigned "
        "uploads, idempotent events, injected latency and failures.",
    )
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    emu.add_argument(
        "--data-dir",
        help="where received events and asset bytes are kept (default: a temporary "
        "directory removed on exit)",
    )
    emu.add_argument("--api-key", default=DEFAULT_API_KEY)
    emu.add_argument("--api-secret", default=DEFAULT_API_SECRET)
    emu.add_argument("--integration-code", default=DEFAULT_INTEGRATION_CODE)
    emu.add_argument("--latency-ms", type=_non_negative, default=0.0, help="delay every answer")
    emu.add_argument(
        "--fail-rate",
        type=_share,
        default=0.0,
        help="share of API calls answered 503 (a quarter of them 429 with Retry-After)",
    )
    emu.add_argument(
        "--storage-fail-rate", type=_share, default=0.0, help="share of uploads answered 503"
    )
    emu.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on a 429")
    emu.add_argument("--seed", type=int, help="make injected failures repeatable")
    _add_logging(emu)
    emu.set_defaults(handler=cmd_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logsetup.configure(fmt=args.log_format, level=args.log_level)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as err:
        print(f"flowflexd: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
