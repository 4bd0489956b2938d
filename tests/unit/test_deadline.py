"""The deadline watcher: cuts what overruns, and keeps no trace of what ended in time."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from support import wait_until

from flowflexd.client.deadline import _Watcher


def test_exchanges_that_end_in_time_do_not_pile_up() -> None:
    watcher = _Watcher()
    for _ in range(10_000):
        watcher.disarm(watcher.arm(100.0))

    assert len(watcher) <= 2  # the last one, and at most one not yet passed over


def test_an_earlier_deadline_armed_after_a_later_one_still_cuts_in_time() -> None:
    watcher = _Watcher()
    watcher.arm(300.0)  # the watcher now sleeps until this one
    ours, theirs = socket.socketpair()
    with ours, theirs:
        armed = watcher.arm(0.2)
        armed.note(SimpleNamespace(sock=ours))
        wait_until(lambda: armed.fired, timeout=5, what="the short deadline cut its socket")

        ours.settimeout(5)
        assert ours.recv(1) == b""  # shut down: a blocked read ends at once


def test_a_disarmed_exchange_is_never_cut() -> None:
    watcher = _Watcher()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        armed = watcher.arm(0.1)
        armed.note(SimpleNamespace(sock=ours))
        watcher.disarm(armed)
        tripwire = watcher.arm(0.3)  # a later deadline that does fire: time has passed
        wait_until(lambda: tripwire.fired, timeout=5, what="the later deadline fired")

        assert not armed.fired
        theirs.sendall(b"x")
        ours.settimeout(5)
        assert ours.recv(1) == b"x"  # still open
