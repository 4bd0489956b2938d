"""The ``flowflexd`` command: argument parsing and the one top-level error handler."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import TextIO

import structlog

from flowflexd import __version__
from flowflexd.client import FlowFlex
from flowflexd.commands import preflight, views
from flowflexd.commands.replay import replay_one
from flowflexd.config import model as configuration
from flowflexd.emulator import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    DEFAULT_INTEGRATION_CODE,
    Emulator,
)
from flowflexd.engine.daemon import Daemon
from flowflexd.engine.notify import Notifier
from flowflexd.engine.outcomes import Verdict, classify
from flowflexd.errors import ConfigError, FlowFlexConfigError, FlowFlexError, UserError
from flowflexd.rules.sanitize import printable
from flowflexd.support import log as logsetup

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


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be above zero")
    return number


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=logsetup.FORMATS,
        default="auto",
        help="json lines (for journald), console lines, or auto: console on a terminal",
    )
    parser.add_argument("--log-level", choices=logsetup.LEVELS, default="info")


def port_number(text: str) -> int:
    """A TCP port for argparse: a whole number from 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return port


def cmd_emulator(args: argparse.Namespace) -> int:
    try:
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
            quota_per_second=args.quota_per_second,
        )
    except OSError as err:
        raise UserError(
            f"cannot use --data-dir {args.data_dir}: {err.strerror}",
            hint="give a folder this user may create and write, or none for a temporary one",
        ) from err
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
        quota_per_second=args.quota_per_second,
        page=f"{emulator.url}/",
    )
    stop = threading.Event()
    on_signals(lambda count: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        emulator.stop()
        log.info("emulator stopped")
    return 0


def on_signals(handler: Callable[[int], None]) -> None:
    """Call ``handler`` with 1 on the first SIGINT/SIGTERM, 2 on the second, and so on."""
    count = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        handler(count)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


# ----------------------------------------------------------------- the daemon


def load_config(args: argparse.Namespace, *, offline: bool = False) -> configuration.Config:
    """The configuration; ``offline`` for commands that never call FlowFlex (no secret needed)."""
    config = configuration.load(
        args.config, emulator=getattr(args, "emulator", False), offline=offline
    )
    for warning in config.warnings:
        log.warning("configuration warning", problem=warning)
    return config


def make_client(config: configuration.Config, cancel: threading.Event | None = None) -> FlowFlex:
    """The client of the first destination (the top-level flowflex: block)."""
    return destination_client(config, config.api, cancel)


def make_clients(
    config: configuration.Config, cancel: threading.Event | None = None
) -> dict[str, FlowFlex]:
    """One client per destination, each with its own connection pool."""
    return {d.name: destination_client(config, d.api, cancel) for d in config.destinations}


def destination_client(
    config: configuration.Config, api: configuration.ApiSettings, cancel: threading.Event | None
) -> FlowFlex:
    logsetup.add_secret(api.api_secret)
    try:
        return FlowFlex(
            api_key=api.api_key,
            api_secret=api.api_secret,
            integration_code=api.integration_code,
            base_url=api.base_url,
            timeout_seconds=api.timeout_seconds,
            # The daemon retries files itself, with a circuit breaker; keep the
            # client's own retries short so workers are not held for minutes.
            max_attempts=3,
            backoff_max_seconds=5.0,
            max_retry_after_seconds=30.0,
            pool_maxsize=2 * config.workers + 4,
            cancel_event=cancel,
        )
    except FlowFlexConfigError as err:
        where = next(
            (
                "flowflex"
                if d.name == configuration.DEFAULT_DESTINATION
                else f"destinations.{d.name}"
                for d in config.destinations
                if d.api is api
            ),
            "flowflex",
        )
        raise ConfigError([f"{config.source}: {where}: {err.message}"]) from err


def start_emulator(config: configuration.Config) -> tuple[Emulator, configuration.ApiSettings]:
    emulator = Emulator(data_dir=config.state_dir / "emulator").start()
    api = configuration.ApiSettings(
        base_url=emulator.url,
        api_key=emulator.api_key,
        integration_code=emulator.integration_code,
        api_secret=emulator.api_secret,
        timeout_seconds=config.api.timeout_seconds,
    )
    log.info(
        "using the built-in emulator instead of FlowFlex",
        base_url=emulator.url,
        page=f"{emulator.url}/",
    )
    return emulator, api


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args)
    emulator = None
    emulator_api: configuration.ApiSettings | None = None
    if args.emulator:
        emulator, emulator_api = start_emulator(config)
        config = configuration.with_api(config, emulator_api)

    def reload_config() -> configuration.Config:
        fresh = load_config(args)
        return configuration.with_api(fresh, emulator_api) if emulator_api else fresh

    cancel = threading.Event()
    clients = make_clients(config, cancel)
    daemon = Daemon(
        config,
        next(iter(clients.values())),
        clients=clients,
        notifier=Notifier(),
        reload_config=reload_config,
        make_client=lambda fresh, api: destination_client(fresh, api, cancel),
        standby=args.standby,
    )

    def stop(count: int) -> None:
        cancel.set()
        daemon.request_stop(force=count > 1)

    on_signals(stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: daemon.request_reload())
    threading.Thread(target=verify_at_start, args=(daemon,), name="verify", daemon=True).start()
    try:
        return daemon.run()
    finally:
        if emulator is not None:
            emulator.stop()


def verify_at_start(daemon: Daemon) -> None:
    """Say at start, not at the first file, when FlowFlex refuses the credentials.

    In a thread once the daemon is ready: an unreachable FlowFlex must not
    delay readiness (systemd's start timeout) nor stop the start.
    """
    daemon.ready.wait()
    for name, client in daemon.clients.items():
        try:
            client.verify()
        except FlowFlexError as err:
            if classify(err).verdict is Verdict.PAUSE:
                daemon.refused(f"{err.message} (HTTP {err.status})", destination=name)
            else:
                log.warning(
                    "could not check the credentials at start; files are sent as they come",
                    destination=name,
                    error=err.message,
                    status=err.status,
                )


class Progress:
    """A live progress line on a terminal: done, failed, waiting, files per second.

    When the log lines go to the same terminal, the line lives below them
    (log.show_status), so neither overwrites the other.
    """

    def __init__(self, daemon: Daemon, stream: TextIO) -> None:
        self._daemon = daemon
        self._stream = stream
        self._shared = _same_terminal(stream, logsetup.status_stream())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Progress:
        if self._shared:
            logsetup.show_status(self._text)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self._shared:
            logsetup.show_status(None)
            return
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self._shared:
                logsetup.redraw_status()
            else:
                self._draw()

    def _text(self) -> str:
        totals = self._daemon.totals
        elapsed = max(time.monotonic() - totals.started, 1e-6)
        rate = (totals.done + totals.failed) / elapsed
        waiting = self._daemon.snapshot.waiting
        return f"done {totals.done}  failed {totals.failed}  waiting {waiting}  {rate:.1f} files/s"

    def _draw(self) -> None:
        self._stream.write(f"\r\x1b[K{self._text()}")
        self._stream.flush()


def _same_terminal(a: TextIO, b: TextIO | None) -> bool:
    if b is None:
        return False
    try:
        one, other = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError):
        return False
    return (one.st_dev, one.st_ino, one.st_rdev) == (other.st_dev, other.st_ino, other.st_rdev)


def cmd_once(args: argparse.Namespace) -> int:
    config = load_config(args)
    emulator = None
    if args.emulator:
        emulator, api = start_emulator(config)
        config = configuration.with_api(config, api)
    clients = make_clients(config)
    daemon = Daemon(config, next(iter(clients.values())), clients=clients, once=True)
    on_signals(lambda count: daemon.request_stop(force=count > 1))
    try:
        if sys.stdout.isatty():
            with Progress(daemon, sys.stdout):
                daemon.run()
        else:
            daemon.run()
    finally:
        if emulator is not None:
            emulator.stop()
    totals = daemon.totals
    left = daemon.left()
    log.info(
        "once: finished",
        done=totals.done,
        failed=totals.failed,
        left_claimed=left.claimed,
        left_in_inbox=left.waiting,
        not_answering=left.not_answering,
    )
    # 1 for anything not sent: failed, still claimed, still in an inbox, or not looked at.
    return 1 if totals.failed or left.claimed or left.waiting or left.not_answering else 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args)
    clients = make_clients(config)  # the client's own checks (https, the code) as run applies
    findings = preflight.check_as(config, args.as_user) if args.as_user else preflight.check(config)
    for name, client in clients.items():
        which = "" if len(clients) == 1 else f" (destination {name})"
        if args.online:
            try:
                client.verify()
            except FlowFlexError as err:
                status = f" (HTTP {err.status})" if err.status else ""
                findings.errors.append(f"FlowFlex refuses them{which}: {err.message}{status}")
            else:
                findings.notes.append(
                    f"FlowFlex accepts the credentials and the integration code{which}"
                )
        client.close()
    out = sys.stdout
    print(f"{config.source}: configuration is valid", file=out)
    if args.as_user:
        print(f"  folders checked as user {args.as_user}", file=out)
    for destination in config.destinations:
        api = destination.api
        which = "" if len(config.destinations) == 1 else f" ({destination.name})"
        print(f"  FlowFlex{which}: {api.base_url} integration {api.integration_code}", file=out)
    for folder in config.folders:
        mode = "polling" if folder.poll else "inotify"
        print(
            f"  inbox {folder.path} ({mode}, {len(folder.rules)} rules) -> done {folder.done}, "
            f"failed {folder.failed}",
            file=out,
        )
    for note in findings.notes:
        print(f"  note: {note}", file=out)
    for warning in findings.warnings:
        print(f"  warning: {warning}", file=out)
    for error in findings.errors:
        print(f"  error: {error}", file=out)
    return 2 if findings.errors else 0


EXAMPLES = {
    "config": "config.example.yaml",
    "unit": "flowflexd.service",
    "sysusers": "flowflexd.sysusers.conf",
}


def cmd_example(args: argparse.Namespace) -> int:
    """Print a shipped file, so an installed wheel carries all the README's steps need."""
    text = resources.files("flowflexd.shipped").joinpath(EXAMPLES[args.which]).read_text()
    sys.stdout.write(text)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    config = load_config(args, offline=True)
    blocks: list[list[str]] = []
    for given in args.files:
        path = Path(given).absolute()
        folder = views.folder_for(config, path)
        if folder is not None:
            blocks.append(views.explain(folder, path))
            continue
        for candidate in config.folders:
            lines = views.explain(candidate, candidate.path / path.name)
            lines[0] = f"{path} (not in an inbox; as if dropped into {candidate.path}):"
            blocks.append(lines)
    print("\n\n".join("\n".join(block) for block in blocks))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args, offline=True)
    rows = views.status(config)
    if args.json:
        print(json.dumps([{**row.__dict__, "path": str(row.path)} for row in rows], indent=2))
        return 0
    print("\n".join(views.render_status(rows)))
    if args.by_folder:
        for row in rows:
            print(f"\nwaiting in {row.path}, by subfolder:")
            for below, count in sorted(row.by_folder.items()):
                print(f"  {count:>6}  {printable(below) if below else '(the inbox itself)'}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    config = load_config(args, offline=True)
    problems = 0
    for given in args.files:
        try:
            for line in replay_one(config, Path(given)):
                print(f"replayed {line}")
        except UserError as err:
            print(f"flowflexd: {err}", file=sys.stderr)
            problems += 1
    return 1 if problems else 0


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
    emu.add_argument(
        "--port", type=port_number, default=8765, help="0 picks a free port (default 8765)"
    )
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
    emu.add_argument(
        "--quota-per-second",
        type=_positive,
        help="accept at most this many events per second (bursts of one second's worth); "
        "above it, answer 429 with Retry-After",
    )
    emu.add_argument("--seed", type=int, help="make injected failures repeatable")
    _add_logging(emu)
    emu.set_defaults(handler=cmd_emulator)

    def command(name: str, handler: Handler, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("-c", "--config", required=True, help="the YAML configuration file")
        _add_logging(sub)
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", cmd_run, "watch the inboxes and send files until SIGTERM or SIGINT")
    run.add_argument(
        "--emulator",
        action="store_true",
        help="start the built-in FlowFlex emulator and send to it instead of FlowFlex",
    )
    run.add_argument(
        "--standby",
        action="store_true",
        help="where another flowflexd holds an inbox, wait and take over when it stops",
    )
    once = command(
        "once",
        cmd_once,
        "process what is in the inboxes now, wait for every outcome, exit "
        "(0 all done, 1 any failed or not sent, 2 bad configuration)",
    )
    once.add_argument("--emulator", action="store_true", help="send to the built-in emulator")
    check = command("check", cmd_check, "validate the configuration and the folders (exit 0 or 2)")
    check.add_argument(
        "--as-user",
        metavar="USER",
        help="check the folders as this user would (the service's, e.g. flowflexd); needs root",
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also prove the credentials and integration code with one request that fires nothing",
    )
    summary = "print a shipped file: the example configuration, the systemd unit, sysusers"
    example = commands.add_parser("example", help=summary, description=summary)
    example.add_argument("which", choices=sorted(EXAMPLES))
    _add_logging(example)
    example.set_defaults(handler=cmd_example)
    explain = command(
        "explain", cmd_explain, "show the rule, event and payload each file would get, offline"
    )
    explain.add_argument("files", nargs="+", metavar="FILE")
    status = command("status", cmd_status, "files waiting, in progress, done and failed per folder")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--by-folder", action="store_true", help="also: files waiting per subfolder"
    )
    replay = command(
        "replay", cmd_replay, "put failed files back into their inbox to be processed again"
    )
    replay.add_argument("files", nargs="+", metavar="FILE", help="files in a failed folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logsetup.configure(fmt=args.log_format, level=args.log_level)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (`status --json | head`): not an error worth a
        # traceback. Later writes at exit must not raise again either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except UserError as err:
        print(f"flowflexd: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
