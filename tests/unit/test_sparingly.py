from __future__ import annotations

from flowflexd.support.sparingly import Sparingly


def test_the_first_is_said_at_once_and_the_rest_of_the_while_counted_into_the_next() -> None:
    said = Sparingly(60)

    assert said.came(1000.0) == 1
    assert [said.came(1000.0 + t) for t in (0.1, 5, 59.9)] == [None, None, None]
    assert said.came(1060.0) == 4  # three kept quiet, and this one
    assert said.came(1061.0) is None
    assert said.came(1200.0) == 2


def test_a_thing_that_comes_seldom_is_said_every_time() -> None:
    said = Sparingly(60)

    assert [said.came(t) for t in (0.0, 61.0, 500.0)] == [1, 1, 1]
