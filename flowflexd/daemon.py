"""Lifecycle: folders, the scheduler loop, the worker pool, pausing, stopping.

One scheduler thread owns every tracker and the ledger of where each file
is in its life: watchdog threads and workers only put typed messages on its
queue. Workers claim and carry files. The breaker (breaker.py) stops new
sends while FlowFlex is unreachable or refuses our configuration.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from flowflexd import journal, preflight
from flowflexd.client import FlowFlex
from flowflexd.completeness import NO_LEASE, NO_LEASE_FIX
from flowflexd.config import STATE_FILE, Config, Folder
from flowflexd.engine.breaker import Gate
from flowflexd.engine.lifecycle import HANDED_OVER, WAITING_TO_GO, Ledger, Stage
from flowflexd.engine.outcomes import Verdict, classify
from flowflexd.engine.snapshot import Pause, Snapshot
from flowflexd.errors import UserError
from flowflexd.journal import Journal
from flowflexd.notify import Notifier
from flowflexd.pipeline import Outcome, Pipeline
from flowflexd.rules import match
from flowflexd.spool import Claim, FolderMisplaced, FolderUnavailable, Spool, write_durable
from flowflexd.tracker import Ready, Tracker, inbox_identity
from flowflexd.watcher import FolderWatcher

log = structlog.get_logger("flowflexd")


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


OFFLINE_CHECK_SECONDS = 5.0
FILESYSTEM_RETRY = (1.0, 60.0)
ONCE_OUTAGE_PROBES = 3


@dataclass
class FolderRuntime:
    folder: Folder
    spool: Spool
    tracker: Tracker
    watcher: FolderWatcher
    online: bool = False
    identity: tuple[int, int] | None = None
    next_rescan: float = 0.0
    said_offline: bool = False


@dataclass
class Job:
    runtime: FolderRuntime
    ready: Ready | None = None  # a file to claim
    claim: Claim | None = None  # or a claim to carry on
    prefetch: tuple[str, int] | None = None  # or a settling file's upload URL to ask for
    probe: bool = False
    ticket: int | None = None  # the file's place in the ledger (None for a prefetch)


# What other threads tell the scheduler.
@dataclass(frozen=True)
class Hint:
    runtime: FolderRuntime
    name: str | None  # None: look at the whole folder


@dataclass(frozen=True)
class Finished:
    job: Job
    outcome: Outcome


@dataclass(frozen=True)
class Refused:
    reason: str


@dataclass(frozen=True)
class Reload:
    pass


@dataclass(frozen=True)
class Stop:
    force: bool


Message = Hint | Finished | Refused | Reload | Stop


@dataclass
class Totals:
    done: int = 0
    failed: int = 0
    left: int = 0  # claims given up on by ``once`` (they stay claimed for next time)
    deferred: int = 0  # times a file could not be claimed or finished (disk full ...)
    started: float = field(default_factory=time.monotonic)


class Daemon:
    def __init__(
        self,
        config: Config,
        client: FlowFlex,
        *,
        once: bool = False,
        notifier: Notifier | None = None,
        reload_config: Callable[[], Config] | None = None,
        make_client: Callable[[Config], FlowFlex] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.once = once
        self.notifier = notifier or Notifier({})
        self._reload_config = reload_config
        self._make_client = make_client
        self._next_heartbeat = 0.0
        self.heartbeats_withheld = 0
        self.journal = Journal(config.state_dir)
        self.ledger = Ledger()
        self.pipeline = Pipeline(client, self.journal, settle_seconds=config.settle_seconds)
        self.gate = Gate()
        self.gate.on_change = self._write_state
        self.totals = Totals()
        self.ready = threading.Event()
        self._messages: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting: deque[tuple[FolderRuntime, Ready]] = deque()
        self._retries: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._busy = 0  # jobs handed to workers and not yet finished
        self._stopping = False
        self._stop_deadline: float | None = None
        self._workers: list[threading.Thread] = []
        self.runtimes: list[FolderRuntime] = []
        self.snapshot = Snapshot()
        self._published = 0.0
        self._published_from: tuple[object, ...] = ()

    # ------------------------------------------------------------- threading

    def request_stop(self, *, force: bool = False) -> None:
        """Stop taking files; let those in flight finish (or not, with ``force``)."""
        self._messages.put(Stop(force))

    def request_reload(self) -> None:
        """Re-read the configuration (SIGHUP)."""
        self._messages.put(Reload())

    def refused(self, reason: str) -> None:
        """FlowFlex refused our credentials or integration: pause sending, as a file would."""
        self._messages.put(Refused(reason))

    def _hint(self, runtime: FolderRuntime) -> Callable[[str | None], None]:
        def hint(name: str | None) -> None:
            self._messages.put(Hint(runtime, name))

        return hint

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                outcome = self._run_job(job)
            except Exception as err:  # a bug must not kill the worker or lose the file
                log.exception("unexpected error; the file stays where it is", error=str(err))
                decision = classify(err)
                outcome = Outcome(decision.verdict, job.claim, decision.reason, decision.code)
            self._messages.put(Finished(job, outcome))

    def _run_job(self, job: Job) -> Outcome:
        spool = job.runtime.spool
        if job.prefetch is not None:
            self.pipeline.prefetch(spool, *job.prefetch)
            return Outcome(Verdict.GONE)
        if job.claim is not None:
            return self.pipeline.carry(spool, job.claim)
        assert job.ready is not None
        ready = job.ready
        return self.pipeline.take(
            spool, ready.members, rule=ready.rule, expect=ready.expect, reject=ready.reject
        )

    # -------------------------------------------------------------- startup

    def _start_folders(self) -> None:
        for folder in self.config.folders:
            self.runtimes.append(self._start_folder(folder))

    def _start_folder(self, folder: Folder) -> FolderRuntime:
        """Create a folder's runtime, its missing folders, and bring it online if it can be."""
        runtime = self._new_runtime(folder)
        try:
            runtime.spool.prepare()
        except FolderMisplaced:
            raise
        except FolderUnavailable as err:
            log.error(
                "inbox unavailable; other folders keep running",
                folder=str(folder.path),
                error=err.message,
                hint=err.hint,
            )
            runtime.said_offline = True
            runtime.next_rescan = time.monotonic() + OFFLINE_CHECK_SECONDS
            return runtime
        why = preflight.lease_problem(folder)
        if why is not None:
            log.warning(
                f"{NO_LEASE}; files are taken once settled alone",
                folder=str(folder.path),
                reason=why,
                fix=NO_LEASE_FIX,
            )
            runtime.tracker.said_no_lease = True
        self._bring_online(runtime, time.monotonic())
        return runtime

    def _bring_online(self, runtime: FolderRuntime, now: float) -> None:
        runtime.identity = inbox_identity(runtime.folder.path)
        runtime.online = True
        pending = list(runtime.spool.pending())
        recorded = journal.outcomes_in_tail(self.journal.dir, {c.id for c in pending})
        for claim in pending:
            ticket = self.ledger.enter(runtime.tracker.key, Stage.RETRYING, since=time.time())
            entry = recorded.get(claim.id)
            if entry is not None and entry.get("outcome") == "done" and claim.answer is None:
                # Sent and journalled before the crash: only the move is left.
                claim.answer = entry.get("answer")
                claim.event = entry.get("event")
            log.info(
                "resuming a claimed file",
                folder=str(runtime.folder.path),
                file=claim.name,
                idempotency_key=claim.key,
            )
            self._retry(Job(runtime, claim=claim, ticket=ticket), now)
        if not self.once:
            runtime.watcher.stop()
            mode = runtime.watcher.start(self._hint(runtime))
            log.info("watching", folder=str(runtime.folder.path), mode=mode)
        runtime.tracker.rescan()
        runtime.next_rescan = now + self.config.rescan_seconds

    def run(self) -> int:
        try:
            self._start_folders()
        except UserError:
            self._shutdown_folders()
            raise
        self._resize_workers(self.config.workers)
        log.info(
            "flowflexd ready",
            folders=[str(r.folder.path) for r in self.runtimes],
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
            for _ in self._workers:
                self._jobs.put(None)
            self._shutdown_folders()
            self.journal.close()
            self._write_state(running=False)
        log.info("flowflexd stopped", done=self.totals.done, failed=self.totals.failed)
        return 0

    def _resize_workers(self, count: int) -> None:
        self._workers = [w for w in self._workers if w.is_alive()]
        while len(self._workers) < count:
            worker = threading.Thread(target=self._worker, name="worker", daemon=True)
            worker.start()
            self._workers.append(worker)
        for _ in range(len(self._workers) - count):
            self._jobs.put(None)  # that many workers leave after their current file

    def healthy(self) -> bool:
        """Workers and observers are all running (the heartbeat's condition)."""
        alive = sum(1 for w in self._workers if w.is_alive())
        watching = self.once or all(r.watcher.alive() for r in self.runtimes if r.online)
        return alive >= self.config.workers and watching

    def _shutdown_folders(self) -> None:
        for runtime in self.runtimes:
            runtime.watcher.stop()
            runtime.spool.unlock()

    # ------------------------------------------------------------------ loop

    def _loop(self) -> None:
        while True:
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
            if self._stopping:
                if self._busy == 0 or (
                    self._stop_deadline is not None and time.monotonic() >= self._stop_deadline
                ):
                    if self._busy:
                        log.warning(
                            "grace period over; files still in flight stay claimed "
                            "and resume at the next start",
                            in_flight=self._busy,
                        )
                    return
                continue
            self._tick(time.monotonic())
            self._publish()
            self._heartbeat(time.monotonic())
            if self.once and self._once_finished():
                return

    def _write_state(self, *, running: bool = True) -> None:
        """What ``flowflexd status`` cannot see from the folders: who runs, and any pause."""
        state = {
            "pid": os.getpid(),
            "running": running,
            "paused": self.gate.kind.value if self.gate.kind else None,
            "reason": self.gate.reason or None,
            "paused_since": _iso(self.gate.since) if self.gate.since else None,
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
        if self.healthy():
            self.notifier.watchdog()
            self._next_heartbeat = now + interval
        else:
            self.heartbeats_withheld += 1
            log.error(
                "unhealthy: a worker or an observer stopped; withholding the watchdog "
                "heartbeat so systemd restarts flowflexd"
            )
            self._next_heartbeat = now + interval

    def _next_wakeup(self, now: float) -> float:
        times = [now + 1.0]
        if self.notifier.watchdog_interval is not None:
            times.append(self._next_heartbeat)
        for runtime in self.runtimes:
            due = runtime.tracker.next_due()
            if due is not None:
                times.append(due)
            times.append(runtime.next_rescan)
        if self.gate.open:
            if self._retries:
                times.append(self._retries[0][0])
        elif not self.gate.probing:
            times.append(self.gate.probe_at)
        return min(times)

    def _handle(self, message: Message) -> bool:
        """Handle one message; True to leave the loop at once."""
        match message:
            case Hint(runtime, None):
                runtime.next_rescan = 0.0
            case Hint(runtime, str(name)):
                runtime.tracker.note(name)
            case Finished(job, outcome):
                self._finished(job, outcome)
            case Refused(reason):
                self.gate.trip(Pause.CONFIG, reason, time.monotonic(), probe=False)
                self._publish(force=True)
            case Reload():
                if not self._stopping:
                    self._reload()
            case Stop(force):
                if force or self._stopping:
                    log.warning(
                        "stopping now; claimed files resume at the next start",
                        in_flight=self._busy,
                    )
                    return True
                self._begin_stop()
        return False

    def _begin_stop(self) -> None:
        self.notifier.stopping()
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.config.shutdown_grace_seconds
        for runtime in self.runtimes:
            runtime.watcher.stop()
        # Jobs not yet started go back: their files were never touched.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._busy -= 1
                if job.ticket is not None:
                    self.ledger.move(job.ticket, Stage.READY if job.ready else Stage.RETRYING)
        log.info(
            "stopping: no new files are taken; waiting for files in flight",
            in_flight=self._busy,
            grace_s=self.config.shutdown_grace_seconds,
        )

    def _tick(self, now: float) -> None:
        for runtime in self.runtimes:
            if now >= runtime.next_rescan:
                self._rescan(runtime, now)
            if runtime.online:
                self._waiting.extend((runtime, ready) for ready in runtime.tracker.step(now))
        self._dispatch(now)

    def _rescan(self, runtime: FolderRuntime, now: float) -> None:
        folder = runtime.folder.path
        identity = inbox_identity(folder)
        if identity is None:
            runtime.next_rescan = now + OFFLINE_CHECK_SECONDS
            if runtime.online or not runtime.said_offline:
                log.error(
                    "inbox is gone (unmounted or removed); other folders keep running, "
                    "this one resumes when it is back",
                    folder=str(folder),
                )
                runtime.watcher.stop()
                runtime.online = False
                runtime.said_offline = True
            return
        if (
            not runtime.online
            or identity != runtime.identity
            or (not self.once and not runtime.watcher.alive())
        ):
            try:
                runtime.spool.prepare()
            except UserError as err:
                runtime.next_rescan = now + OFFLINE_CHECK_SECONDS
                if not runtime.said_offline:
                    log.error("inbox unavailable", folder=str(folder), error=str(err))
                    runtime.said_offline = True
                runtime.online = False
                return
            if runtime.said_offline or runtime.identity is not None:
                log.info("inbox is back", folder=str(folder))
            runtime.said_offline = False
            self._bring_online(runtime, now)
            return
        runtime.tracker.rescan()
        runtime.next_rescan = now + self.config.rescan_seconds
        self.pipeline.urls.purge()
        log.debug("rescanned", folder=str(folder))

    # ------------------------------------------------------------- dispatch

    @property
    def _capacity(self) -> int:
        return 2 * self.config.workers - self._busy

    def _submit(self, job: Job) -> None:
        self._busy += 1
        if job.ticket is not None:
            self.ledger.move(job.ticket, Stage.IN_FLIGHT)
        self._jobs.put(job)

    def _retry(self, job: Job, now: float, delay: float = 0.0) -> None:
        if job.ticket is not None:
            self.ledger.move(job.ticket, Stage.RETRYING)
        heapq.heappush(self._retries, (now + delay, next(self._seq), job))

    def _dispatch(self, now: float) -> None:
        gate = self.gate
        if not gate.open:
            if not gate.probing and now >= gate.probe_at and self._capacity > 0:
                probe = self._take_probe()
                if probe is not None:
                    gate.probing = True
                    self._submit(probe)
            # Files that need no API call (set aside as failed) still move.
            self._submit_rejects()
            return
        while self._retries and self._retries[0][0] <= now and self._capacity > 0:
            self._submit(heapq.heappop(self._retries)[2])
        while self._waiting and self._capacity > 0:
            runtime, ready = self._waiting.popleft()
            self._submit(Job(runtime, ready=ready, ticket=ready.ticket))
        # Workers with nothing to do ask for the upload URLs of settling files.
        idle = self.config.workers - self._busy
        for runtime in self.runtimes:
            if idle <= 0 or self._waiting or self._stopping:
                break
            if runtime.online:
                for name, inode in runtime.tracker.take_prefetch(idle):
                    self._submit(Job(runtime, prefetch=(name, inode)))
                    idle -= 1

    def _take_probe(self) -> Job | None:
        if self._retries:
            job = heapq.heappop(self._retries)[2]
        elif self._waiting:
            runtime, ready = self._waiting.popleft()
            job = Job(runtime, ready=ready, ticket=ready.ticket)
        else:
            return None
        job.probe = True
        return job

    def _submit_rejects(self) -> None:
        keep: deque[tuple[FolderRuntime, Ready]] = deque()
        while self._waiting:
            item = self._waiting.popleft()
            if item[1].reject is not None and self._capacity > 0:
                self._submit(Job(item[0], ready=item[1], ticket=item[1].ticket))
            else:
                keep.append(item)
        self._waiting = keep

    def _finished(self, job: Job, outcome: Outcome) -> None:
        self._busy -= 1
        now = time.monotonic()
        if job.prefetch is not None:
            return
        verdict = outcome.verdict
        if job.ready is not None:
            job.runtime.tracker.release(job.ready, look_again=verdict is Verdict.GONE)
        ended = verdict in (Verdict.DONE, Verdict.FAILED)
        if verdict is Verdict.DONE:
            self.totals.done += 1
        elif verdict is Verdict.FAILED:
            self.totals.failed += 1
        if job.probe or (ended and not self.gate.open):
            if ended:
                self.gate.reset()
            else:
                self.gate.probing = False
        if not ended and outcome.claim is not None:
            self._requeue(job, outcome.claim, outcome, now)
            return
        if job.ticket is not None:
            self.ledger.finish(job.ticket)
        if verdict is Verdict.RETRY_LOCAL:
            self.totals.deferred += 1
            log.warning("could not claim a file; it stays in the inbox", reason=outcome.reason)

    def _requeue(self, job: Job, claim: Claim, outcome: Outcome, now: float) -> None:
        """A claim that did not finish: when to carry it again, and whether sending pauses."""
        retry = Job(job.runtime, claim=claim, ticket=job.ticket)
        match outcome.verdict:
            case Verdict.PAUSE:
                self.gate.trip(Pause.CONFIG, outcome.reason, now, probe=job.probe)
                self._retry(retry, now)
            case Verdict.SETTLE_AGAIN:
                # A writer came back: look again once the file may have settled.
                self._retry(retry, now, max(self.config.settle_seconds, 0.5))
            case Verdict.RETRY_LOCAL:
                self.totals.deferred += 1
                first, longest = FILESYSTEM_RETRY
                self._retry(retry, now, min(longest, first * 2 ** min(claim.attempts, 10)))
            case _:
                self.gate.trip(Pause.OUTAGE, outcome.reason, now, probe=job.probe)
                self._retry(retry, now)

    # ---------------------------------------------------------------- once

    def left_claimed(self) -> int:
        """Claims still in the work areas: files taken but not finished."""
        return sum(r.spool.claimed_count() for r in self.runtimes)

    def left_in_inboxes(self) -> int:
        """Files a rule takes that are still in their inbox (not claimed, not sent)."""
        return sum(
            1
            for r in self.runtimes
            for name, _ in r.spool.waiting()
            if match(r.folder.rules, name) is not None
        )

    def _once_finished(self) -> bool:
        if self._busy:
            return False
        if self.gate.kind is Pause.CONFIG or (
            self.gate.kind is Pause.OUTAGE and self.gate.trips > ONCE_OUTAGE_PROBES
        ):
            self.totals.left = len(self._retries)
            log.error(
                "giving up for now: FlowFlex is not accepting files",
                reason=self.gate.reason,
                left_claimed=self.totals.left,
            )
            return True
        if self._waiting or self._retries:
            return False
        return all(not r.online or r.tracker.unfinished() == 0 for r in self.runtimes)

    # -------------------------------------------------------------- status

    def _publish(self, *, force: bool = False) -> None:
        """Rebuild the snapshot when something it shows changed; counts come from the ledger."""
        now = time.monotonic()
        if now - self._published < 0.25 and not force:
            return
        self._published = now
        offline = tuple(str(r.folder.path) for r in self.runtimes if not r.online)
        totals = self.totals
        source = (
            self.ledger.version,
            totals.done,
            totals.failed,
            totals.deferred,
            self.gate.kind,
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
                paused=self.gate.kind,
                offline=offline,
            )
        self.notifier.status(self.snapshot.text())

    # -------------------------------------------------------------- reload

    def _new_runtime(self, folder: Folder) -> FolderRuntime:
        return FolderRuntime(
            folder=folder,
            spool=Spool(folder),
            tracker=Tracker(folder, settle_seconds=self.config.settle_seconds, ledger=self.ledger),
            watcher=FolderWatcher(folder),
        )

    def _reload(self) -> None:
        """Swap to a re-read configuration without dropping files in flight."""
        if self._reload_config is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload_config()
            for folder in new.folders:
                Spool(folder).check_placement()
            client = (
                self._make_client(new) if self._make_client and new.api != self.config.api else None
            )
        except UserError as err:
            log.error("reload failed; the running configuration stays", error=str(err))
            self.notifier.ready()
            return
        old = self.config
        self.config = new
        self.pipeline.settle_seconds = new.settle_seconds
        if client is not None:
            self.client = self.pipeline.client = client
            self.gate.reset()
        if new.state_dir != old.state_dir:
            journal, self.journal = self.journal, Journal(new.state_dir)
            self.pipeline.journal = self.journal
            journal.close()
        self.runtimes = self._reconcile_folders(new, old)
        self._resize_workers(new.workers)
        log.info(
            "configuration reloaded",
            folders=[str(f.path) for f in new.folders],
            workers=new.workers,
            api_changed=client is not None,
        )
        self._publish(force=True)
        self.notifier.ready()

    def _reconcile_folders(self, new: Config, old: Config) -> list[FolderRuntime]:
        """Keep, change, add and remove folders; queued and claimed files are untouched."""
        current = {r.folder.path: r for r in self.runtimes}
        runtimes: list[FolderRuntime] = []
        now = time.monotonic()
        for folder in new.folders:
            runtime = current.pop(folder.path, None)
            if runtime is None:
                log.info("folder added", folder=str(folder.path))
                runtime = self._start_folder(folder)
            elif runtime.folder != folder or new.settle_seconds != old.settle_seconds:
                restart = (folder.poll, folder.poll_interval) != (
                    runtime.folder.poll,
                    runtime.folder.poll_interval,
                )
                runtime.folder = folder
                runtime.spool.folder = folder
                try:
                    runtime.spool.prepare()  # a new done or failed folder must exist
                except UserError as err:
                    log.error("inbox unavailable", folder=str(folder.path), error=str(err))
                    runtime.online = False
                runtime.tracker.reconfigure(folder, settle_seconds=new.settle_seconds)
                runtime.watcher.folder = folder
                if restart and runtime.online and not self.once:
                    runtime.watcher.stop()
                    mode = runtime.watcher.start(self._hint(runtime))
                    log.info("watching", folder=str(folder.path), mode=mode)
                runtime.next_rescan = min(runtime.next_rescan, now)
            runtimes.append(runtime)
        for gone in current.values():
            gone.watcher.stop()
            gone.spool.unlock()
            gone.tracker.close()
            for runtime, ready in self._waiting:
                if runtime is gone:
                    self.ledger.finish(ready.ticket)
            for _, _, job in self._retries:
                if job.runtime is gone and job.ticket is not None:
                    self.ledger.finish(job.ticket)
            self._waiting = deque(item for item in self._waiting if item[0] is not gone)
            kept = [item for item in self._retries if item[2].runtime is not gone]
            left = len(self._retries) - len(kept)
            self._retries = kept
            heapq.heapify(self._retries)
            log.info(
                "folder removed; its files stay where they are",
                folder=str(gone.folder.path),
                claimed_left=left,
            )
        return runtimes
