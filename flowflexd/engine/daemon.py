"""Lifecycle and signals: start, the scheduler loop, stop, reload, heartbeat, status.

One scheduler thread owns every inbox, the ledger of where each file is in
its life and the scheduler: watchdog threads, workers and signal handlers
only put typed messages on its queue. What runs next is the scheduler's
business (scheduler.py), an inbox's online and offline life the inbox's
(inbox/runtime.py), pausing the breaker's (breaker.py), the steps of inboxes
on shares, made in threads of their own, and holding the files of a silent
one, the shares' (shares.py).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from flowflexd.client import FlowFlex
from flowflexd.config.model import DEFAULT_DESTINATION, STATE_FILE, ApiSettings, Config, Folder
from flowflexd.engine import journal
from flowflexd.engine.breaker import Gate
from flowflexd.engine.journal import Journal
from flowflexd.engine.lifecycle import HANDED_OVER, WAITING_TO_GO, Ledger, Stage
from flowflexd.engine.limits import Limits
from flowflexd.engine.metrics import Health, Metrics, MetricsServer
from flowflexd.engine.notify import Notifier
from flowflexd.engine.outcomes import Code
from flowflexd.engine.pipeline import Outcome, Pipeline
from flowflexd.engine.scheduler import Job, Scheduler, Totals
from flowflexd.engine.shares import Shares, held_trouble
from flowflexd.engine.snapshot import FolderCounts, Pause, Snapshot
from flowflexd.engine.stall import HELD_FILE, StallWatch
from flowflexd.engine.standby import wait_for_holders
from flowflexd.errors import UserError
from flowflexd.inbox import layout, retention
from flowflexd.inbox.answering import NotAnswering, all_within
from flowflexd.inbox.mounts import wants_own_thread
from flowflexd.inbox.own_thread import Answered, OwnThread
from flowflexd.inbox.runtime import Inbox, NameHint, Trouble, Turn
from flowflexd.inbox.spool import Carried, Claim, Spool, Unreadable
from flowflexd.rules.matching import match
from flowflexd.support.durable import write_durable

log = structlog.get_logger("flowflexd")

ONCE_OUTAGE_PROBES = 3
SWEEP_SECONDS = 24 * 3600.0  # retention looks at done and failed once a day
CLOSE_WAIT_SECONDS = 5.0  # at a stop, for the inboxes' own threads to finish their calls


@dataclass
class Left:
    """What a run leaves behind (``once``): not sent, and so its exit status 1."""

    claimed: int = 0  # claims still in the work areas: files taken, not finished
    waiting: int = 0  # files a rule takes, still in their inbox
    not_answering: list[str] = field(default_factory=list)  # inboxes not counted


def _left_in(inbox: Inbox) -> tuple[int, int]:
    """An inbox's claims, and the files a rule takes still in it."""
    waiting = sum(
        1
        for path, _ in inbox.spool.waiting()
        if match(inbox.folder.rules, *reversed(layout.split_path(path))) is not None
    )
    return inbox.spool.claimed_count(), waiting


def _worst(kinds: Iterable[Pause | None]) -> Pause | None:
    """The pause to show first: refused credentials, then an outage."""
    found = set(kinds)
    for kind in (Pause.CONFIG, Pause.OUTAGE):
        if kind in found:
            return kind
    return None


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


# What other threads tell the scheduler thread.
@dataclass(frozen=True)
class Hint:
    inbox: Inbox
    name: str | None  # None: look at the whole folder


@dataclass(frozen=True)
class Finished:
    job: Job
    outcome: Outcome


@dataclass(frozen=True)
class Refused:
    reason: str
    destination: str | None = None  # None: the first (the only one, mostly)


@dataclass(frozen=True)
class Reload:
    pass


@dataclass(frozen=True)
class Stop:
    force: bool


Message = Hint | Finished | Refused | Reload | Stop | Answered


class Daemon:
    def __init__(
        self,
        config: Config,
        client: FlowFlex,
        *,
        once: bool = False,
        notifier: Notifier | None = None,
        reload_config: Callable[[], Config] | None = None,
        make_client: Callable[[Config, ApiSettings], FlowFlex] | None = None,
        standby: bool = False,
        clients: Mapping[str, FlowFlex] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.once = once
        self.standby = standby  # wait for the daemon holding an inbox, then take over
        self.notifier = notifier or Notifier({})
        self._reload_config = reload_config
        self._make_client = make_client
        self._next_heartbeat = 0.0
        self.heartbeats_withheld = 0
        self.journal = Journal(config.state_dir, defer=standby)
        self._adopted: dict[Path, int] = {}  # inbox -> its lock, taken by the standby's wait
        self.ledger = Ledger()
        self.carried = Carried()  # claims this daemon carries, over all its inboxes
        names = [d.name for d in config.destinations] or [DEFAULT_DESTINATION]
        # One client per destination, each with its pool; a single one is the first's.
        self.clients: dict[str, FlowFlex] = dict(clients) if clients else {names[0]: client}
        self.limits: dict[str, Limits] = {}
        self._limit(config)
        self.pipeline = Pipeline(
            self.clients, self.journal, settle_seconds=config.settle_seconds, limits=self.limits
        )
        self.scheduler = Scheduler(
            self.pipeline,
            self.ledger,
            workers=config.workers,
            settle_seconds=config.settle_seconds,
            report=lambda job, outcome: self._messages.put(Finished(job, outcome)),
            destinations=names,
        )
        self.gate: Gate = self.scheduler.gate  # the first destination's
        # Says which folder holds the loop when a share's server stops answering, and
        # feeds the watchdog meanwhile: a restart would only wait at the same folder.
        self.stall = StallWatch(
            self.notifier.status,
            feed=self.notifier.watchdog,
            feed_every=self.notifier.watchdog_interval,
            note=config.state_dir / HELD_FILE,
        )
        self.pipeline.commits.watch = self.stall
        self.totals: Totals = self.scheduler.totals
        self.shares = Shares(
            self.scheduler, self.ledger, take_turn=self._take_turn, inboxes=lambda: self.inboxes
        )
        self.ready = threading.Event()
        self._messages: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._stopping = False
        self._stop_deadline: float | None = None
        self.inboxes: list[Inbox] = []
        self.snapshot = Snapshot()
        self._published = 0.0
        self._published_from: tuple[object, ...] = ()
        self._troubles_written: dict[str, Trouble] = {}
        self.scheduler.on_gate_change = self._gate_changed
        self._next_sweep = 0.0
        self.metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None
        if config.metrics_listen is not None:
            self.metrics = Metrics(
                lambda: self.snapshot,
                self.health,
                str(self.journal.path),
                destinations=lambda: list(self.scheduler.lanes),
            )
            self.pipeline.timed = self.metrics.timed
        for name, each in self.clients.items():
            self._hook(name, each)

    # ------------------------------------------------------- other threads

    def request_stop(self, *, force: bool = False) -> None:
        """Stop taking files; let those in flight finish (or not, with ``force``)."""
        self._messages.put(Stop(force))

    def request_reload(self) -> None:
        """Re-read the configuration (SIGHUP)."""
        self._messages.put(Reload())

    def refused(self, reason: str, *, destination: str | None = None) -> None:
        """FlowFlex refused our credentials or integration: pause sending there, as a file would."""
        self._messages.put(Refused(reason, destination))

    def _limit(self, config: Config) -> None:
        """Each destination's rate limits, set in place: a reload keeps a 429's hold."""
        for d in config.destinations:
            limits = self.limits.get(d.name)
            if limits is None:
                limits = self.limits[d.name] = Limits.of(d.name, events=None, uploads=None)
            limits.events.rate = d.max_events_per_second
            limits.uploads.rate = d.max_uploads_per_second

    def _hook(self, name: str, client: FlowFlex) -> None:
        """A destination's client tells the metrics its answers, and its limits about 429s."""
        metrics = self.metrics
        if metrics is not None:
            client.on_answer = lambda call, status: metrics.answered(name, call, status)
        limits = self.limits.get(name)
        if limits is not None:
            client.on_throttle = limits.throttle

    def _hint(self, inbox: Inbox) -> NameHint:
        def hint(name: str | None) -> None:
            self._messages.put(Hint(inbox, name))

        return hint

    # --------------------------------------------------------------- start

    def _new_inbox(self, folder: Folder) -> Inbox:
        own = OwnThread(folder.path, self._messages.put) if wants_own_thread(folder) else None
        return Inbox(
            folder,
            ledger=self.ledger,
            settle_seconds=self.config.settle_seconds,
            rescan_seconds=self.config.rescan_seconds,
            watch=not self.once,
            hint=self._hint,
            carried=self.carried,
            own=own,
        )

    def _looked_at_together(self, folders: Iterable[Folder]) -> list[Inbox]:
        """New inboxes for ``folders``, the first look at each already begun.

        Taken up one after another, each inbox whose share's server is down
        held the start for a look's whole limit; begun together, they are all
        given up on within one.
        """
        fresh = [self._new_inbox(folder) for folder in folders]
        for inbox in fresh:
            inbox.looker.begin()
        return fresh

    def _take_up(self, inbox: Inbox, now: float) -> None:
        self.stall.beat()  # each inbox's take-up gets its own time
        self.stall.at(inbox.path)
        held = self._adopted.pop(inbox.path, None)
        if held is not None:
            inbox.spool.adopt_lock(held)
        self.scheduler.attach(inbox)
        self._resume(inbox, inbox.start(now), now)

    def _resume(self, inbox: Inbox, found: list[Claim | Unreadable], now: float) -> None:
        """Claims left by an earlier run, checked against the journal before anything is sent.

        One sent and journalled needs only its move. One whose claim file
        cannot be read is looked up by its id (its folder's name): what the
        journal says happened, happens to its files; with no record, they
        are set aside in failed with the reason, never sent under a new key.
        """
        recorded = journal.outcomes_in_tail(self.journal.dir, {c.id for c in found})
        claims: list[Claim] = []
        for item in found:
            entry = recorded.get(item.id)
            if isinstance(item, Unreadable):
                inbox.spool.run_there(partial(self._set_aside, inbox, item, entry))
                continue
            if entry is not None and entry.get("outcome") == "done" and item.answer is None:
                item.answer = entry.get("answer")
                item.event = entry.get("event")
            claims.append(item)
        self.scheduler.resume(inbox, claims, now)

    def _set_aside(self, inbox: Inbox, lost: Unreadable, entry: dict[str, Any] | None) -> None:
        names = lost.files()
        recorded = entry.get("file") if entry is not None else None
        matched = [n for n in names if match(inbox.folder.rules, n) is not None]
        primary = recorded if recorded in names else (matched or names or [""])[0]
        report: dict[str, Any] | None
        if entry is not None and entry.get("outcome") == "done":
            report = None  # the event was fired: its files belong in done
        elif entry is not None:
            report = {**entry, "file": primary, "members": {"file": primary}}
        else:
            report = {
                "file": primary,
                "code": Code.CLAIM_UNREADABLE,
                "reason": f"claim {lost.id} could not be read at start ({lost.reason}); its "
                "idempotency key is lost, so whether FlowFlex got these files is unknown: "
                "check FlowFlex, then replay them to send them as a new event",
                "claim": lost.id,
                "time": _iso(time.time()),
            }
        try:
            moved = inbox.spool.set_aside(lost, primary=primary, report=report)
        except OSError as err:
            log.error(
                "cannot set an unreadable claim aside; it stays where it is",
                folder=str(inbox.path),
                claim=lost.id,
                error=str(err),
            )
            return
        log.warning(
            "a claim could not be read; its files were moved on by what the journal says",
            folder=str(inbox.path),
            claim=lost.id,
            reason=lost.reason,
            journal=entry.get("outcome") if entry is not None else None,
            moved_to=sorted(moved.values()),
        )

    def run(self) -> int:
        if self.standby:
            if not self._wait_for_holders():
                log.info("flowflexd stopped while on standby")
                return 0
            self.journal.open()
        now = time.monotonic()
        self.stall.start()
        try:
            # All of them closed with the others should a later one refuse.
            self.inboxes = self._looked_at_together(self.config.folders)
            for inbox in self.inboxes:
                self._take_up(inbox, now)
            self._serve_metrics()
        except UserError:
            self.stall.stop()
            self._close_inboxes()
            raise
        self.scheduler.resize(self.config.workers)
        log.info(
            "flowflexd ready",
            folders=[str(i.path) for i in self.inboxes],
            workers=self.config.workers,
            settle_seconds=self.config.settle_seconds,
            mode="once" if self.once else "run",
        )
        self.ready.set()
        self._write_state()
        self._publish(force=True)
        self.notifier.ready()
        try:
            self._loop()
        finally:
            self.notifier.stopping()
            self._publish(force=True)
            if self._metrics_server is not None:
                self._metrics_server.stop()
            self.scheduler.pool.stop()
            self.pipeline.commits.commit()  # the last finished claims, before the locks go
            self._close_inboxes()
            self.journal.close()
            self._write_state(running=False)
            self.stall.stop()
        log.info("flowflexd stopped", done=self.totals.done, failed=self.totals.failed)
        return 0

    def _wait_for_holders(self) -> bool:
        """A standby: wait until no other daemon holds one of our inboxes; False if told to stop."""
        self.notifier.ready()  # started, as systemd sees it: waiting is its job
        return wait_for_holders(
            self.config.folders,
            self._adopted,
            status=self.notifier.status,
            stop_asked=self._stop_asked,
        )

    def _stop_asked(self, timeout: float) -> bool:
        """Wait ``timeout`` s for a message; whether it is a stop (a standby heeds no other)."""
        try:
            return isinstance(self._messages.get(timeout=timeout), Stop)
        except queue.Empty:
            return False

    def _serve_metrics(self) -> None:
        if self.metrics is None or self.config.metrics_listen is None:
            return
        host, port = self.config.metrics_listen
        try:
            self._metrics_server = MetricsServer(self.metrics, host, port)
        except OSError as err:
            raise UserError(
                f"cannot serve metrics on {host}:{port}: {err.strerror}",
                hint="free that port, or set metrics.listen to another address",
            ) from err
        self._metrics_server.start()
        log.info("serving /metrics and /healthz", listen=self._metrics_server.address)

    def health(self) -> Health:
        """What /healthz answers: workers, folder watches, FlowFlex taking our credentials."""
        if not self.ready.is_set():
            return Health(False, "starting")
        if self._stopping:
            return Health(False, "stopping")
        if not self.healthy():
            return Health(False, "a worker or a folder's watch stopped")
        gates = self.scheduler.gates()
        refused = [g for g in gates.values() if g.kind is Pause.CONFIG]
        if refused:
            where = "" if len(gates) == 1 else f" ({', '.join(g.destination for g in refused)})"
            return Health(
                False, f"paused: FlowFlex refuses our configuration{where}: {refused[0].reason}"
            )
        down = [g.destination for g in gates.values() if g.kind is Pause.OUTAGE]
        if down:
            where = "" if len(gates) == 1 else f" ({', '.join(down)})"
            return Health(
                True, f"FlowFlex is unreachable{where}; files wait and go when it answers"
            )
        return Health(True, "sending")

    def healthy(self) -> bool:
        """Workers and folder watches are all running (the heartbeat's condition)."""
        watching = self.once or all(
            i.watcher.alive() for i in self.inboxes if i.online and not i.lent
        )
        return self.scheduler.pool.alive() >= self.config.workers and watching

    def _close_inboxes(self) -> None:
        apart = []
        for inbox in self.inboxes:
            # In its own thread, after the calls handed over before (the last commit's).
            inbox.spool.run_there(inbox.watcher.stop)
            inbox.spool.run_there(inbox.spool.unlock)
            if inbox.own is not None:
                inbox.own.stop()
                apart.append(inbox)
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        for inbox in apart:
            assert inbox.own is not None
            if not inbox.own.join(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "an inbox's share does not answer; its lock goes with this process",
                    folder=str(inbox.path),
                )

    # ---------------------------------------------------------------- loop

    def _loop(self) -> None:
        while True:
            self.stall.beat()
            now = time.monotonic()
            timeout = max(0.0, min(self._next_wakeup(now) - now, 1.0))
            try:
                message: Message | None = self._messages.get(timeout=timeout)
            except queue.Empty:
                message = None
            while message is not None:
                if self._handle(message):
                    return
                try:
                    message = self._messages.get_nowait()
                except queue.Empty:
                    message = None
            self.pipeline.commits.commit_due(time.monotonic())
            if self._stopping:
                if self._stopped():
                    return
                continue
            self._tick(time.monotonic())
            self._publish()
            self._heartbeat(time.monotonic())
            if self.once and self._once_finished():
                return

    def _next_wakeup(self, now: float) -> float:
        times = [now + 1.0]
        if self.notifier.watchdog_interval is not None:
            times.append(self._next_heartbeat)
        for inbox in self.inboxes:
            if inbox.lent:
                continue  # its answer wakes the loop
            due = inbox.tracker.next_due()
            if due is not None:
                times.append(due)
            times.append(inbox.next_rescan)
        for due in (self.scheduler.next_due(), self.pipeline.commits.due()):
            if due is not None:
                times.append(due)
        return min(times)

    def _handle(self, message: Message) -> bool:
        """Handle one message; True to leave the loop at once."""
        match message:
            case Hint(inbox, name):
                inbox.note(name)
            case Answered(then, answer):
                then(answer)
            case Finished(job, outcome):
                if self.metrics is not None and job.prefetch is None:
                    rule = (
                        outcome.claim.rule if outcome.claim else job.ready.rule if job.ready else ""
                    )
                    destination = self.scheduler.destination(job)
                    self.metrics.finished(
                        str(job.inbox.path), rule, destination, outcome.verdict, outcome.code
                    )
                self.scheduler.finished(job, outcome)
            case Refused(reason, destination):
                gate = self.scheduler.lane(destination).gate if destination else self.gate
                gate.trip(Pause.CONFIG, reason, time.monotonic(), probe=False)
            case Reload():
                if not self._stopping:
                    self._reload()
            case Stop(force):
                if force or self._stopping:
                    log.warning(
                        "stopping now; claimed files resume at the next start",
                        in_flight=self.scheduler.pool.busy,
                    )
                    return True
                self._begin_stop()
        return False

    def _tick(self, now: float) -> None:
        self.shares.look_where_workers_wait(now)
        for inbox in self.inboxes:
            if inbox.own is not None:
                self.shares.step(inbox, now)
                continue
            self.stall.at(inbox.path)
            self._take_turn(inbox, inbox.turn(now), now)
        self.stall.at(None)
        self.shares.hold_silent()
        self.scheduler.dispatch(now, self.inboxes)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            self._sweep()

    def _take_turn(self, inbox: Inbox, turn: Turn, now: float) -> None:
        self._resume(inbox, turn.found, now)
        if turn.came_online:
            self.pipeline.commits.retry_soon()  # claims it could not remove while away
        if turn.looked:
            self._published = 0.0  # gone or back shows at once, not a quarter second later
            if inbox.online:
                self.pipeline.urls.purge()
        self.scheduler.queue(inbox, turn.ready)

    def _sweep(self) -> None:
        """Retention: delete what flowflexd put in done and failed past its keep_*_days."""
        # An inbox away waits for the next pass: its share may be down, and a look would wait.
        keeping = [
            i
            for i in self.inboxes
            if i.online and (i.folder.keep_done_days or i.folder.keep_failed_days)
        ]
        if not keeping:
            return
        for inbox in keeping:
            self.stall.at(inbox.path)
            inbox.spool.run_there(partial(self._sweep_one, inbox.folder))

    def _sweep_one(self, folder: Folder) -> None:
        try:
            # Streamed, one pass per folder: the journal may hold 200,000 records.
            records = journal.read(self.journal.dir)
            deleted = retention.sweep_done(
                folder, records, now=time.time(), record=self.journal.record
            )
            deleted += retention.sweep_failed(folder, now=time.time(), record=self.journal.record)
        except OSError as err:
            log.warning("retention could not finish", folder=str(folder.path), error=str(err))
            return
        if deleted:
            log.info(
                "retention deleted files past their keep_*_days",
                folder=str(folder.path),
                deleted=len(deleted),
            )

    # ---------------------------------------------------------------- stop

    def _begin_stop(self) -> None:
        self.notifier.stopping()
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.config.shutdown_grace_seconds
        for inbox in self.inboxes:
            inbox.spool.run_there(inbox.watcher.stop)  # its own thread may be taking it up
        self.scheduler.take_back_unstarted()
        log.info(
            "stopping: no new files are taken; waiting for files in flight",
            in_flight=self.scheduler.pool.busy,
            grace_s=self.config.shutdown_grace_seconds,
        )

    def _stopped(self) -> bool:
        """Every file in flight finished, or the grace period is over.

        Files whose workers wait in a share that does not answer are not waited
        for: they cannot finish before it answers, and their claims stay.
        """
        held, busy = self.scheduler.lent(), self.scheduler.working()
        if busy and (self._stop_deadline is None or time.monotonic() < self._stop_deadline):
            return False
        if busy:
            log.warning(
                "grace period over; files still in flight stay claimed "
                "and resume at the next start",
                in_flight=busy,
            )
        if held:
            log.warning(
                "files wait in a share that does not answer; they stay claimed there "
                "and resume at the next start",
                in_flight=held,
            )
        return True

    # ---------------------------------------------------------------- once

    def left(self) -> Left:
        """What a run leaves behind, counted in each inbox with a look's limit.

        An inbox whose share does not answer is not counted but named: a
        listing there would wait until its server is back.
        """
        silent = [i for i in self.inboxes if not i.answering]
        counted = [i for i in self.inboxes if i not in silent]
        found = all_within([partial(_left_in, i) for i in counted])
        left = Left(not_answering=[str(i.path) for i in silent])
        for inbox, each in zip(counted, found, strict=True):
            if isinstance(each, NotAnswering):
                left.not_answering.append(str(inbox.path))
            else:
                left.claimed += each[0]
                left.waiting += each[1]
        return left

    def _once_finished(self) -> bool:
        """Every file sent or failed; or none can go on now (named by ``left``).

        Files of an inbox whose share does not answer are not waited for: they
        cannot go on before it answers, and ``once`` is often run from a timer.
        """
        if self.scheduler.working():
            return False
        for gate in self.scheduler.gates().values():
            if gate.kind is Pause.CONFIG or (
                gate.kind is Pause.OUTAGE and gate.trips > ONCE_OUTAGE_PROBES
            ):
                log.error(
                    "giving up for now: FlowFlex is not accepting files",
                    destination=gate.destination,
                    reason=gate.reason,
                    left_claimed=self.scheduler.retrying(),
                )
                return True
        if not self.scheduler.idle():
            return False
        return all(
            not i.answering or (not i.lent and (not i.online or i.tracker.unfinished() == 0))
            for i in self.inboxes
        )

    # -------------------------------------------------------------- status

    def _troubles(self) -> dict[str, Trouble]:
        troubles = {str(i.path): i.trouble for i in self.inboxes if not i.online and i.trouble}
        for inbox in self.inboxes:
            held = held_trouble(inbox)
            if held is not None:
                troubles[str(inbox.path)] = held
        return troubles

    def _gate_changed(self) -> None:
        """A destination paused or resumed: the state file and the snapshot say so at once.

        /healthz reads the gates themselves; /metrics and sd_notify's status read
        the snapshot, which the loop otherwise rebuilds at most every 0.25 s.
        Rebuilt here, a scrape never shows a pause that /healthz does not.
        """
        self._write_state()
        self._publish(force=True)

    def _write_state(self, *, running: bool = True) -> None:
        """What ``flowflexd status`` cannot see from the folders: who runs, and any pause."""
        gates = self.scheduler.gates()
        paused = [g for g in gates.values() if g.kind is not None]
        paused.sort(key=lambda g: g.kind is not Pause.CONFIG)  # refused credentials first
        first = paused[0] if paused else None
        state = {
            "pid": os.getpid(),
            "running": running,
            "paused": first.kind.value if first and first.kind else None,
            "reason": first.reason if first else None,
            "paused_since": _iso(first.since) if first and first.since else None,
            "destinations": {
                name: {
                    "paused": g.kind.value if g.kind else None,
                    "reason": g.reason or None,
                    "paused_since": _iso(g.since) if g.since else None,
                }
                for name, g in gates.items()
            },
            # Inboxes this daemon cannot take up now: status shows them, not "not running".
            "unavailable": {
                path: {
                    "reason": t.reason,
                    "hint": t.hint,
                    "since": _iso(t.since),
                    "answering": t.answering,
                }
                for path, t in self._troubles().items()
            },
            "written": _iso(time.time()),
        }
        try:
            write_durable(self.config.state_dir / STATE_FILE, json.dumps(state).encode())
        except OSError as err:
            log.warning("cannot record the daemon's state for status", error=str(err))

    def _heartbeat(self, now: float) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None or now < self._next_heartbeat:
            return
        self._next_heartbeat = now + interval
        if self.healthy():
            self.notifier.watchdog()
            return
        self.heartbeats_withheld += 1
        log.error(
            "unhealthy: a worker or a folder's watch stopped; withholding the watchdog "
            "heartbeat so systemd restarts flowflexd"
        )

    def _publish(self, *, force: bool = False) -> None:
        """Rebuild the snapshot when something it shows changed; counts come from the ledger."""
        now = time.monotonic()
        if now - self._published < 0.25 and not force:
            return
        self._published = now
        offline = tuple(
            str(i.path) for i in self.inboxes if not i.online or i.held_since is not None
        )
        troubles = self._troubles()
        if troubles != self._troubles_written:  # an inbox went, came back, or why changed
            self._troubles_written = dict(troubles)
            self._write_state()
        totals = self.totals
        source = (
            self.ledger.version,
            totals.done,
            totals.failed,
            totals.deferred,
            tuple((name, g.kind) for name, g in self.scheduler.gates().items()),
            offline,
        )
        if source != self._published_from or force:
            self._published_from = source
            count = self.ledger.count
            self.snapshot = Snapshot(
                waiting=count(*WAITING_TO_GO),
                in_flight=count(*HANDED_OVER - {Stage.READY}),
                empty=count(Stage.EMPTY),
                ignored=count(Stage.IGNORED),
                companions=count(Stage.COMPANION),
                incomplete=count(Stage.INCOMPLETE),
                done=totals.done,
                failed=totals.failed,
                deferred=totals.deferred,
                oldest_waiting_since=self.ledger.oldest_waiting(),
                paused=_worst(g.kind for g in self.scheduler.gates().values()),
                paused_destinations=tuple(
                    (name, g.kind) for name, g in self.scheduler.gates().items() if g.kind
                ),
                offline=offline,
                by_folder=tuple(
                    FolderCounts(
                        str(i.path),
                        waiting=count(*WAITING_TO_GO, folder=i.tracker.key),
                        settling=count(Stage.SETTLING, folder=i.tracker.key),
                        in_flight=count(*HANDED_OVER - {Stage.READY}, folder=i.tracker.key),
                    )
                    for i in self.inboxes
                ),
            )
        self.notifier.status(self.snapshot.text())

    # -------------------------------------------------------------- reload

    def _reload(self) -> None:
        """Swap to a re-read configuration without dropping files in flight."""
        if self._reload_config is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload_config()
            # Each looks into its inbox's file system: one on a share whose server is
            # down held the loop until it answered. Not answering, it is checked when
            # it is taken up again, as a share coming back is.
            all_within([Spool(folder).check_placement for folder in new.folders])
            changed = self._changed_clients(new)
        except UserError as err:
            log.error("reload failed; the running configuration stays", error=str(err))
            self.notifier.ready()
            return
        old = self.config
        self.config = new
        self.pipeline.settle_seconds = self.scheduler.settle_seconds = new.settle_seconds
        self._limit(new)
        for name, fresh in changed.items():  # new destinations among them
            self.clients[name] = self.pipeline.clients[name] = fresh
            self._hook(name, fresh)
            self.scheduler.lane(name).gate.reset()
        if new.state_dir != old.state_dir:
            self.pipeline.commits.commit()  # pending records are in the old journal
            previous, self.journal = self.journal, Journal(new.state_dir)
            self.pipeline.journal = self.pipeline.commits.journal = self.journal
            previous.close()
        self._reconcile_inboxes(new, old)
        self.scheduler.resize(new.workers)
        log.info(
            "configuration reloaded",
            folders=[str(f.path) for f in new.folders],
            workers=new.workers,
            api_changed=sorted(changed) or None,
        )
        self._publish(force=True)
        self.notifier.ready()

    def _changed_clients(self, new: Config) -> dict[str, FlowFlex]:
        """New clients for the destinations whose settings changed, or that are new.

        A destination removed keeps its client: claims made for it may still be in flight.
        """
        if self._make_client is None:
            return {}
        before = {d.name: d.api for d in self.config.destinations}
        return {
            d.name: self._make_client(new, d.api)
            for d in new.destinations
            if before.get(d.name) != d.api or d.name not in self.clients
        }

    def _reconcile_inboxes(self, new: Config, old: Config) -> None:
        """Keep, change, add and remove inboxes; queued and claimed files are untouched."""
        current = {i.path: i for i in self.inboxes}
        added = {
            i.path: i
            for i in self._looked_at_together(f for f in new.folders if f.path not in current)
        }
        self.inboxes = []
        now = time.monotonic()
        for folder in new.folders:
            inbox = current.pop(folder.path, None)
            if inbox is None:
                log.info("folder added", folder=str(folder.path))
                fresh = added[folder.path]
                self.inboxes.append(fresh)  # closed with the others should a later one refuse
                self._take_up(fresh, now)
                continue
            timing = (new.settle_seconds, new.rescan_seconds)
            if inbox.folder != folder or timing != (old.settle_seconds, old.rescan_seconds):
                change = partial(
                    inbox.reconfigure,
                    folder,
                    settle_seconds=new.settle_seconds,
                    rescan_seconds=new.rescan_seconds,
                )
                if inbox.own is None:
                    self.stall.at(folder.path)
                    change()
                else:
                    self.shares.change(inbox, change)
            self.inboxes.append(inbox)
        for gone in current.values():
            gone.spool.run_there(gone.close)
            if gone.own is not None:
                gone.own.stop()
            left = self.scheduler.drop(gone)
            log.info(
                "folder removed; its files stay where they are",
                folder=str(gone.path),
                claimed_left=left,
            )
