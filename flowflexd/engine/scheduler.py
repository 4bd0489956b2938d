"""Which file goes next, and to which worker: the queue, retries, the breaker's probe.

Each destination has its lane: its own breaker, files ready to claim in
arrival order, and claims waiting for their retry time (backoff for trouble
on this machine, at once for an outage, where the breaker decides). While a
lane's breaker is open, its files go to the workers, lanes taking turns, up
to two jobs per worker in all, and idle workers ask for the upload URLs of
settling files; while it is paused only one probe at a time goes out there,
and its files that need no API call (set aside as failed) still move. A
destination that refuses our credentials pauses only the folders that send
there. An inbox whose share does not answer is held: its files wait here,
not with the workers, and the pool is lent a thread for each worker already
waiting on that share, so the other inboxes keep their workers. Driven by
the scheduler thread alone.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from flowflexd.config.model import DEFAULT_DESTINATION
from flowflexd.engine.breaker import Gate
from flowflexd.engine.lifecycle import Ledger, Stage, Ticket
from flowflexd.engine.outcomes import Verdict, classify
from flowflexd.engine.pipeline import Outcome, Pipeline
from flowflexd.engine.snapshot import Pause
from flowflexd.engine.workers import WorkerPool
from flowflexd.inbox.runtime import Inbox
from flowflexd.inbox.spool import Claim
from flowflexd.inbox.tracker import Ready

log = structlog.get_logger("flowflexd")

FILESYSTEM_RETRY = (1.0, 60.0)  # first and longest wait for trouble on this machine
THROTTLED_RETRY = 1.0  # a claim FlowFlex answered 429 goes back to its lane after this
# A file the tracker found without a writer this recently is claimed without
# probing again (six system calls); the check before its event still probes.
PROBED_FRESH_SECONDS = 0.5


@dataclass
class Job:
    inbox: Inbox
    ready: Ready | None = None  # a file to claim
    claim: Claim | None = None  # or a claim to carry on
    prefetch: tuple[str, int] | None = None  # or a settling file's upload URL to ask for
    probe: bool = False
    ticket: Ticket | None = None  # the file's place in the ledger (None for a prefetch)


@dataclass
class Lane:
    """One destination's breaker and queues."""

    name: str
    gate: Gate
    waiting: deque[tuple[Inbox, Ready]] = field(default_factory=deque)
    retries: list[tuple[float, int, Job]] = field(default_factory=list)

    def busy(self) -> bool:
        return bool(self.waiting or self.retries)


@dataclass
class Held:
    """An inbox's files kept back while its share does not answer, in their lanes' order."""

    waiting: list[tuple[str, Inbox, Ready]] = field(default_factory=list)
    retries: list[tuple[str, float, Job]] = field(default_factory=list)


@dataclass
class Totals:
    done: int = 0
    failed: int = 0
    deferred: int = 0  # times a file could not be claimed or finished (disk full ...)
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(
        self,
        pipeline: Pipeline,
        ledger: Ledger,
        *,
        workers: int,
        settle_seconds: float,
        report: Callable[[Job, Outcome], None],
        destinations: Iterable[str] = (DEFAULT_DESTINATION,),
    ) -> None:
        self.pipeline = pipeline
        self.ledger = ledger
        self.workers = workers
        self.settle_seconds = settle_seconds
        self.totals = Totals()
        self.pool: WorkerPool[Job, Outcome] = WorkerPool(self._run, report, self._crashed)
        self.lanes: dict[str, Lane] = {}
        self.on_gate_change: Callable[[], None] = lambda: None
        for name in destinations:
            self.lane(name)
        self._seq = itertools.count()
        self._inboxes: dict[Path, Inbox] = {}  # the inboxes in use now, by path
        self._unclaimed = 0  # claims failed in a row for trouble here: the wait grows
        # Jobs with the workers (by id), and when each was handed over (monotonic).
        self._flying: dict[int, tuple[Job, float]] = {}
        # Inboxes held (their share does not answer): their files, kept back meanwhile.
        self._held: dict[Path, Held] = {}
        self._lent: set[int] = set()  # jobs held in a silent share, a thread lent for each

    # ----------------------------------------------------------------- lanes

    def lane(self, name: str) -> Lane:
        """A destination's lane, made at its first use (a destination added by a reload)."""
        found = self.lanes.get(name)
        if found is None:
            gate = Gate(name)
            # Looked up at each change: the daemon sets on_gate_change after the first lanes.
            gate.on_change = lambda: self.on_gate_change()  # noqa: PLW0108
            found = self.lanes[name] = Lane(name, gate)
        return found

    @property
    def gate(self) -> Gate:
        """The first destination's breaker (the only one, in most configurations)."""
        return next(iter(self.lanes.values())).gate

    def gates(self) -> dict[str, Gate]:
        return {name: lane.gate for name, lane in self.lanes.items()}

    @staticmethod
    def destination(job: Job) -> str:
        if job.claim is not None:
            return job.claim.destination
        if job.ready is not None:
            return job.inbox.folder.destination_of(job.ready.rule)
        return job.inbox.folder.destination

    # ----------------------------------------------------------------- input

    def queue(self, inbox: Inbox, ready: Iterable[Ready]) -> None:
        held = self._held.get(inbox.path)
        for r in ready:
            name = inbox.folder.destination_of(r.rule)
            if held is not None:
                held.waiting.append((name, inbox, r))
            else:
                self.lane(name).waiting.append((inbox, r))

    def resume(self, inbox: Inbox, claims: Iterable[Claim], now: float) -> None:
        """Claims an earlier run left: carried again, with their keys."""
        for claim in claims:
            ticket = self.ledger.enter(inbox.tracker.key, Stage.RETRYING, since=time.time())
            log.info(
                "resuming a claimed file",
                folder=str(inbox.path),
                file=claim.name,
                idempotency_key=claim.key,
            )
            self._retry(Job(inbox, claim=claim, ticket=ticket), now)

    def attach(self, inbox: Inbox) -> None:
        """An inbox in use: its claims are carried, and so are those of an earlier one there."""
        self._inboxes[inbox.path] = inbox

    def resize(self, workers: int) -> None:
        self.workers = workers
        self.pool.resize(workers)

    def drop(self, inbox: Inbox) -> int:
        """A folder removed: forget its queued files and claims (they stay on disk).

        Its claims are no longer carried, so the folder added back resumes them.
        """
        if self._inboxes.get(inbox.path) is inbox:
            del self._inboxes[inbox.path]
        left = 0
        held = self._held.pop(inbox.path, None)
        if held is not None:
            for _, _, ready in held.waiting:
                self.ledger.finish(ready.ticket)
            for _, _, job in held.retries:
                self._let_go(job)
            left += len(held.retries)
        for lane in self.lanes.values():
            for queued, ready in lane.waiting:
                if queued is inbox:
                    self.ledger.finish(ready.ticket)
            for _, _, job in lane.retries:
                if job.inbox is inbox:
                    self._let_go(job)
            lane.waiting = deque(item for item in lane.waiting if item[0] is not inbox)
            kept = [item for item in lane.retries if item[2].inbox is not inbox]
            left += len(lane.retries) - len(kept)
            lane.retries = kept
            heapq.heapify(lane.retries)
        return left

    def take_back_unstarted(self) -> None:
        """At a stop: jobs not yet started go back; their files were never touched."""
        for job in self.pool.take_unstarted():
            self._back_from_pool(job)

    def _back_from_pool(self, job: Job) -> None:
        """A job the pool never started: its file is as it was before it was handed over."""
        self._flying.pop(id(job), None)
        if job.ticket is not None:
            self.ledger.move(job.ticket, Stage.READY if job.ready else Stage.RETRYING)

    # ------------------------------------------------------ silent shares

    def hold(self, inbox: Inbox) -> None:
        """The inbox's share does not answer: keep its files back, and lend for its workers.

        Files queued or waiting for a retry stay here; jobs not yet started
        come back from the pool. Each of its jobs a worker already carries
        waits in the share, so the pool gets a thread more for each until it
        comes back: the other inboxes keep every worker they had.
        """
        if inbox.path in self._held:
            return
        held = self._held[inbox.path] = Held()
        for lane in self.lanes.values():
            held.waiting += [(lane.name, i, r) for i, r in lane.waiting if i.path == inbox.path]
            lane.waiting = deque(item for item in lane.waiting if item[0].path != inbox.path)
            held.retries += [
                (lane.name, due, job)
                for due, _, job in lane.retries
                if job.inbox.path == inbox.path
            ]
            lane.retries = [item for item in lane.retries if item[2].inbox.path != inbox.path]
            heapq.heapify(lane.retries)
        for job in self.pool.take_unstarted():
            if job.inbox.path != inbox.path:
                self.pool.submit(job)  # the order of the others is kept
                continue
            self._back_from_pool(job)
            self._no_longer_probing(job)
            if job.ready is not None:
                held.waiting.append((self.destination(job), job.inbox, job.ready))
            elif job.claim is not None:
                held.retries.append((self.destination(job), 0.0, job))
        stuck = [key for key, (job, _) in self._flying.items() if job.inbox.path == inbox.path]
        for key in stuck:
            self._no_longer_probing(self._flying[key][0])
        fresh = [key for key in stuck if key not in self._lent]
        self._lent.update(fresh)
        self.pool.lend(len(fresh))
        log.warning(
            "files of an inbox whose share does not answer wait; other folders keep every worker",
            folder=str(inbox.path),
            held_back=len(held.waiting) + len(held.retries),
            workers_waiting_there=len(stuck),
        )

    def _no_longer_probing(self, job: Job) -> None:
        """A destination's probe held in a silent share: another file may probe instead."""
        if job.probe:
            job.probe = False
            self.lane(self.destination(job)).gate.probing = False

    def unhold(self, inbox: Inbox) -> None:
        """Its share answers again: its files go back to their lanes, ahead of newer ones."""
        held = self._held.pop(inbox.path, None)
        if held is None:
            return
        for name, _, ready in reversed(held.waiting):
            self.lane(name).waiting.appendleft((inbox, ready))
        for name, due, job in held.retries:
            job.inbox = inbox
            heapq.heappush(self.lane(name).retries, (due, next(self._seq), job))

    def lent(self) -> int:
        """Jobs waiting in a share that does not answer, a thread lent for each."""
        return len(self._lent)

    def working(self) -> int:
        """Jobs with the workers that can finish: all but those waiting in a silent share."""
        return self.pool.busy - len(self._lent)

    def held(self) -> set[Path]:
        return set(self._held)

    def oldest_jobs(self) -> dict[Path, float]:
        """For each inbox a worker carries files of: since when its oldest job is out."""
        oldest: dict[Path, float] = {}
        for job, since in self._flying.values():
            path = job.inbox.path
            if since < oldest.get(path, since + 1):
                oldest[path] = since
        return oldest

    # -------------------------------------------------------------- dispatch

    def dispatch(self, now: float, inboxes: Iterable[Inbox]) -> None:
        open_lanes = []
        for lane in self.lanes.values():
            if lane.gate.open:
                open_lanes.append(lane)
            else:
                self._probe(lane, now)
        self._take_turns(open_lanes, now)
        if len(open_lanes) == len(self.lanes) and not any(lane.waiting for lane in open_lanes):
            self._prefetch(inboxes)

    def _probe(self, lane: Lane, now: float) -> None:
        """A paused lane: one probe when due; files that need no API call still move."""
        gate = lane.gate
        if not gate.probing and now >= gate.probe_at and self._capacity > 0:
            probe = self._take_probe(lane)
            if probe is not None:
                gate.probing = True
                self._submit(probe)
        self._submit_rejects(lane)

    def _take_turns(self, lanes: list[Lane], now: float) -> None:
        """Retries due, then files waiting; lanes take turns, so none starves the others."""
        while self._capacity > 0:
            submitted = False
            for lane in lanes:
                if self._capacity <= 0:
                    break
                if lane.retries and lane.retries[0][0] <= now:
                    self._submit(heapq.heappop(lane.retries)[2])
                    submitted = True
                elif lane.waiting:
                    inbox, ready = lane.waiting.popleft()
                    self._submit(Job(inbox, ready=ready, ticket=ready.ticket))
                    submitted = True
            if not submitted:
                return

    def _prefetch(self, inboxes: Iterable[Inbox]) -> None:
        """Workers with nothing to do ask for the upload URLs of settling files."""
        idle = self.workers - self.working()
        for inbox in inboxes:
            if idle <= 0:
                break
            if inbox.online and not inbox.lent and inbox.path not in self._held:
                for name, inode in inbox.tracker.take_prefetch(idle):
                    self._submit(Job(inbox, prefetch=(name, inode)))
                    idle -= 1

    def next_due(self) -> float | None:
        """When dispatch has something to do next without any new input."""
        due: list[float] = []
        for lane in self.lanes.values():
            if lane.gate.open:
                if lane.retries:
                    due.append(lane.retries[0][0])
            elif not lane.gate.probing:
                due.append(lane.gate.probe_at)
        return min(due) if due else None

    def idle(self) -> bool:
        """Nothing queued, nothing to retry, nothing with a worker but in a silent share."""
        return not (any(lane.busy() for lane in self.lanes.values()) or self.working())

    def retrying(self) -> int:
        return sum(len(lane.retries) for lane in self.lanes.values())

    @property
    def _capacity(self) -> int:
        # A job waiting in a silent share has a thread lent for it: it takes no turn.
        return 2 * self.workers - self.working()

    def _submit(self, job: Job) -> None:
        if job.ticket is not None:
            self.ledger.move(job.ticket, Stage.IN_FLIGHT)
        self._flying[id(job)] = (job, time.monotonic())
        self.pool.submit(job)

    def _retry(self, job: Job, now: float, delay: float = 0.0) -> None:
        if job.ticket is not None:
            self.ledger.move(job.ticket, Stage.RETRYING)
        name = self.destination(job)
        held = self._held.get(job.inbox.path)
        if held is not None:
            held.retries.append((name, now + delay, job))
            return
        heapq.heappush(self.lane(name).retries, (now + delay, next(self._seq), job))

    @staticmethod
    def _take_probe(lane: Lane) -> Job | None:
        if lane.retries:
            job = heapq.heappop(lane.retries)[2]
        elif lane.waiting:
            inbox, ready = lane.waiting.popleft()
            job = Job(inbox, ready=ready, ticket=ready.ticket)
        else:
            return None
        job.probe = True
        return job

    def _submit_rejects(self, lane: Lane) -> None:
        keep: deque[tuple[Inbox, Ready]] = deque()
        while lane.waiting:
            inbox, ready = lane.waiting.popleft()
            if ready.reject is not None and self._capacity > 0:
                self._submit(Job(inbox, ready=ready, ticket=ready.ticket))
            else:
                keep.append((inbox, ready))
        lane.waiting = keep

    # --------------------------------------------------------------- workers

    def _run(self, job: Job) -> Outcome:
        spool = job.inbox.spool
        if job.prefetch is not None:
            self.pipeline.prefetch(spool, *job.prefetch)
            return Outcome(Verdict.GONE)
        if job.claim is not None:
            return self.pipeline.carry(spool, job.claim)
        assert job.ready is not None
        ready = job.ready
        return self.pipeline.take(
            spool,
            ready.members,
            rule=ready.rule,
            expect=ready.expect,
            reject=ready.reject,
            probed=time.monotonic() - ready.judged_at < PROBED_FRESH_SECONDS,
        )

    @staticmethod
    def _crashed(job: Job, err: Exception) -> Outcome:
        decision = classify(err)
        return Outcome(decision.verdict, job.claim, decision.reason, decision.code)

    # ------------------------------------------------------------- outcomes

    def finished(self, job: Job, outcome: Outcome) -> None:
        """A worker's report: count it, close or requeue the file, open or trip the breaker."""
        self.pool.finished()
        self._flying.pop(id(job), None)
        if id(job) in self._lent:
            self._lent.discard(id(job))
            self.pool.recall(1)  # its share answered: the thread lent for it goes
        if job.prefetch is not None:
            return
        now = time.monotonic()
        verdict = outcome.verdict
        if job.ready is not None:
            # Not claimed for trouble here (a read-only inbox): not again at once.
            unclaimed = verdict is Verdict.RETRY_LOCAL and outcome.claim is None
            wait = min(FILESYSTEM_RETRY[1], FILESYSTEM_RETRY[0] * 2**self._unclaimed)
            job.inbox.release(job.ready, look_again_in=wait if unclaimed else 0.0)
            self._unclaimed = self._unclaimed + 1 if unclaimed else 0
        ended = verdict in (Verdict.DONE, Verdict.FAILED)
        if verdict is Verdict.DONE:
            self.totals.done += 1
        elif verdict is Verdict.FAILED:
            self.totals.failed += 1
        gate = self.lane(self.destination(job)).gate
        if job.probe or (ended and not gate.open):
            if ended:
                gate.reset()
            else:
                gate.probing = False
        if not ended and outcome.claim is not None:
            inbox = self._inboxes.get(job.inbox.path)
            if inbox is None:
                # Its folder was removed meanwhile: the claim waits on disk.
                self._let_go(Job(job.inbox, claim=outcome.claim, ticket=job.ticket))
                return
            job.inbox = inbox  # the folder was removed and added back meanwhile
            self._requeue(job, outcome.claim, outcome, now)
            return
        if job.ticket is not None:
            self.ledger.finish(job.ticket)
        if verdict is Verdict.RETRY_LOCAL:
            self.totals.deferred += 1
            log.warning("could not claim a file; it stays in the inbox", reason=outcome.reason)

    def _let_go(self, job: Job) -> None:
        if job.ticket is not None:
            self.ledger.finish(job.ticket)
        if job.claim is not None:
            job.inbox.spool.carried.discard(job.claim.id)

    def _requeue(self, job: Job, claim: Claim, outcome: Outcome, now: float) -> None:
        """A claim that did not finish: when to carry it again, and whether sending pauses."""
        retry = Job(job.inbox, claim=claim, ticket=job.ticket)
        gate = self.lane(claim.destination).gate
        match outcome.verdict:
            case Verdict.PAUSE:
                gate.trip(Pause.CONFIG, outcome.reason, now, probe=job.probe)
                self._retry(retry, now)
            case Verdict.SETTLE_AGAIN:
                # A writer came back: look again once the file may have settled.
                self._retry(retry, now, max(self.settle_seconds, 0.5))
            case Verdict.THROTTLED:
                # Over a quota: again after a moment, with no pause (the limiter holds
                # the destination for the answer's Retry-After meanwhile).
                self._retry(retry, now, THROTTLED_RETRY)
            case Verdict.RETRY_LOCAL:
                self.totals.deferred += 1
                first, longest = FILESYSTEM_RETRY
                self._retry(retry, now, min(longest, first * 2 ** min(claim.attempts, 10)))
            case _:
                gate.trip(Pause.OUTAGE, outcome.reason, now, probe=job.probe)
                self._retry(retry, now)
