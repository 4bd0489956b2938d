"""The ledger: one owner of where each file is in its life, with counts kept as it moves."""

from __future__ import annotations

import itertools

import pytest

from flowflexd.engine.lifecycle import IllegalMove, Ledger, Stage, Ticket

S = Stage
BEFORE_CLAIM = [S.SETTLING, S.WAITING, S.INCOMPLETE, S.EMPTY, S.IGNORED, S.COMPANION]

# The life of a file, written out as the specification (not derived from the
# module's own table): what may follow each stage.
ALLOWED = {
    **{stage: {*BEFORE_CLAIM, S.READY} for stage in BEFORE_CLAIM},
    S.READY: {S.IN_FLIGHT, *BEFORE_CLAIM},
    S.IN_FLIGHT: {S.READY, S.RETRYING},
    S.RETRYING: {S.IN_FLIGHT},
}
# How to bring a new file to each stage.
ROUTE = {
    **{stage: [stage] for stage in BEFORE_CLAIM},
    S.READY: [S.SETTLING, S.READY],
    S.IN_FLIGHT: [S.SETTLING, S.READY, S.IN_FLIGHT],
    S.RETRYING: [S.RETRYING],
}


def at(ledger: Ledger, stage: Stage, *, folder: str = "/in", since: float = 0.0) -> Ticket:
    first, *rest = ROUTE[stage]
    ticket = ledger.enter(folder, first, since=since)
    for step in rest:
        ledger.move(ticket, step)
    return ticket


def assert_counts_match(ledger: Ledger) -> None:
    assert sum(ledger.count(stage) for stage in Stage) == len(ledger)


@pytest.mark.parametrize(("start", "to"), list(itertools.product(Stage, Stage)))
def test_every_move_is_allowed_exactly_when_a_files_life_connects_the_stages(
    start: Stage, to: Stage
) -> None:
    ledger = Ledger()
    ticket = at(ledger, start)
    version = ledger.version
    if to is start:
        ledger.move(ticket, to)
        assert ledger.version == version  # nothing changed, nothing to republish
    elif to in ALLOWED[start]:
        ledger.move(ticket, to)
        assert ledger.stage(ticket) is to
        assert (ledger.count(start), ledger.count(to)) == (0, 1)
        assert ledger.version > version
    else:
        with pytest.raises(IllegalMove, match=f"from {start.value} to {to.value}"):
            ledger.move(ticket, to)
        assert ledger.stage(ticket) is start
        assert (ledger.count(start), ledger.count(to)) == (1, 0)
    assert_counts_match(ledger)


@pytest.mark.parametrize("stage", list(Stage))
def test_a_file_starts_its_life_seen_in_the_inbox_or_as_a_claim_found_at_start(
    stage: Stage,
) -> None:
    ledger = Ledger()
    if stage in (*BEFORE_CLAIM, S.RETRYING):
        ticket = ledger.enter("/in", stage, since=1.0)
        assert ledger.stage(ticket) is stage
    else:
        with pytest.raises(IllegalMove):
            ledger.enter("/in", stage, since=1.0)
        assert len(ledger) == 0


@pytest.mark.parametrize("stage", list(Stage))
def test_a_file_may_finish_from_any_stage_and_finishing_twice_changes_nothing(
    stage: Stage,
) -> None:
    ledger = Ledger()
    ticket = at(ledger, stage)
    other = at(ledger, S.SETTLING)
    ledger.finish(ticket)
    assert ledger.stage(ticket) is None
    version = ledger.version
    ledger.finish(ticket)
    assert ledger.version == version
    assert (len(ledger), ledger.count(S.SETTLING)) == (1, 1)
    assert ledger.stage(other) is S.SETTLING
    assert_counts_match(ledger)


def test_counts_are_kept_per_folder_and_in_total() -> None:
    ledger = Ledger()
    for _ in range(3):
        at(ledger, S.IGNORED, folder="/a")
    waiting = at(ledger, S.WAITING, folder="/b")
    at(ledger, S.IN_FLIGHT, folder="/b")
    assert ledger.count(S.IGNORED) == 3
    assert ledger.count(S.IGNORED, folder="/a") == 3
    assert ledger.count(S.IGNORED, folder="/b") == 0
    assert ledger.count(S.WAITING, S.IN_FLIGHT, folder="/b") == 2
    assert ledger.count(S.WAITING, folder="/nowhere") == 0
    ledger.finish(waiting)
    assert ledger.count(S.WAITING, S.IN_FLIGHT, folder="/b") == 1


def test_the_oldest_waiting_file_follows_files_as_they_go_and_come_back() -> None:
    ledger = Ledger()
    first = at(ledger, S.SETTLING, since=100.0)
    at(ledger, S.IGNORED, since=50.0)  # never on its way: not waiting
    second = at(ledger, S.INCOMPLETE, since=200.0)
    assert ledger.oldest_waiting() == 100.0
    ledger.move(first, S.READY)
    assert ledger.oldest_waiting() == 100.0  # queued still waits
    ledger.move(first, S.IN_FLIGHT)
    assert ledger.oldest_waiting() == 200.0  # handed to a worker: no longer waiting
    ledger.move(first, S.READY)  # unstarted at a stop: back in the queue
    assert ledger.oldest_waiting() == 100.0
    ledger.finish(first)
    ledger.move(second, S.IGNORED)
    assert ledger.oldest_waiting() is None


def test_finding_the_oldest_stays_small_while_an_old_file_waits_and_many_pass() -> None:
    ledger = Ledger()
    stuck = at(ledger, S.INCOMPLETE, since=1.0)
    for i in range(20_000):
        ticket = at(ledger, S.SETTLING, since=10.0 + i)
        ledger.move(ticket, S.READY)
        ledger.move(ticket, S.IN_FLIGHT)
        ledger.finish(ticket)
    assert ledger.oldest_waiting() == 1.0
    assert len(ledger._oldest) < 2_000  # stale entries are dropped, not kept forever
    ledger.finish(stuck)
    assert ledger.oldest_waiting() is None


def test_a_finished_file_cannot_come_back_to_life() -> None:
    ledger = Ledger()
    ticket = at(ledger, S.IN_FLIGHT)
    ledger.finish(ticket)
    for stage in Stage:
        with pytest.raises(IllegalMove, match="finished"):
            ledger.move(ticket, stage)
    assert len(ledger) == 0
