"""The guard every log line passes: secrets out, control characters escaped, the rest as is."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowflexd.support import log
from flowflexd.support.log import add_secret, guard

SECRET = "guard-test-secret-7f3a"


@pytest.fixture(autouse=True)
def _secrets_of_this_test_only() -> Iterator[None]:
    """The secrets a test adds are forgotten after it.

    They live for the process, and a test in the same worker that logs a
    value holding "1234" would otherwise find it redacted.
    """
    known, longest_first = set(log._secrets), list(log._longest_first)
    yield
    with log._secrets_lock:
        log._secrets.clear()
        log._secrets.update(known)
        log._longest_first = longest_first


def guarded(**values: object) -> dict[str, object]:
    return dict(guard(None, "info", dict(values)))


def test_a_secret_is_replaced_wherever_it_stands_in_a_value() -> None:
    add_secret(SECRET)

    line = guarded(
        error=f"401 for cik_x:{SECRET} at https://api",
        answer={"detail": SECRET, SECRET: "as a key"},
        tried=[f"a {SECRET}", (SECRET,)],
    )

    assert line == {
        "error": "401 for cik_x:*** at https://api",
        "answer": {"detail": "***", "***": "as a key"},
        "tried": ["a ***", ["***"]],
    }


def test_control_characters_are_escaped_at_any_depth() -> None:
    line = guarded(file="a\nforged=line.pdf", rows=[{"name": "\x1b[2Jx"}])

    assert line == {"file": "a\\nforged=line.pdf", "rows": [{"name": "\\x1b[2Jx"}]}


def test_numbers_flags_and_nothing_pass_unchanged() -> None:
    add_secret("1234")  # a secret that looks like a number never turns a number into text

    line = guarded(status=1234, took=0.25, retry=True, asset=None, text="plain")

    assert line == {"status": 1234, "took": 0.25, "retry": True, "asset": None, "text": "plain"}
    assert type(line["status"]) is int and type(line["retry"]) is bool


def test_a_value_of_another_type_is_shown_as_it_is() -> None:
    class Code:
        def __repr__(self) -> str:
            return "Code()"

    value = Code()

    assert guarded(code=value) == {"code": value}
