from __future__ import annotations

import io
import random
from email.utils import formatdate

import pytest

from flowflexd.client.sdk import (
    FlowFlex,
    _Body,
    _parse_retry_after,
    _Redactor,
    is_loopback_host,
    normalize_base_url,
    redact_url,
)
from flowflexd.errors import FlowFlexUploadError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.flowflex.ai", "https://api.flowflex.ai"),
        ("https://api.flowflex.ai/", "https://api.flowflex.ai"),
        ("https://api.flowflex.ai/api", "https://api.flowflex.ai"),
        ("https://api.flowflex.ai/api/", "https://api.flowflex.ai"),
        ("https://api.flowflex.ai/api//", "https://api.flowflex.ai"),
        ("https://x.test/v2/api", "https://x.test/v2"),
        ("https://x.test/apis", "https://x.test/apis"),
    ],
)
def test_normalize_base_url(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("api.flowflex.ai", False),
        ("10.0.0.1", False),
        (None, False),
    ],
)
def test_loopback_hosts(host: str | None, expected: bool) -> None:
    assert is_loopback_host(host) is expected


def test_redact_url_drops_the_signature() -> None:
    assert redact_url("https://s.test/b/k?X-Sig=abc&t=1") == "https://s.test/b/k?<redacted>"
    assert redact_url("https://s.test/b/k") == "https://s.test/b/k"


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert _parse_retry_after("7", now=0) == 7.0
    assert _parse_retry_after(formatdate(1000.0, usegmt=True), now=990.0) == pytest.approx(10.0)
    assert _parse_retry_after("soon", now=0) is None
    assert _parse_retry_after(None, now=0) is None


def test_backoff_is_full_jitter_under_a_capped_exponential() -> None:
    client = FlowFlex(
        api_key="k",
        api_secret="secret-value",
        integration_code="c",
        base_url="https://x.test",
        backoff_base_seconds=0.5,
        backoff_max_seconds=4.0,
    )
    client._random = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [client._backoff(attempt) for _ in range(500)]
        assert 0 <= min(delays) < ceiling * 0.1
        assert ceiling * 0.9 < max(delays) <= ceiling


def test_redactor_scrubs_text_and_nested_values() -> None:
    redact = _Redactor("hunter2-long", "dG9rZW4tdmFsdWU=")

    assert redact.text("x hunter2-long y") == "x *** y"
    assert redact.value({"a": ["dG9rZW4tdmFsdWU=", 1], "hunter2-long": None}) == {
        "a": ["***", 1],
        "***": None,
    }


def test_a_body_that_shrinks_fails_instead_of_stalling() -> None:
    body = _Body(io.BytesIO(b"12345"), 10, "short.pdf")

    assert body.read(4) == b"1234"
    assert body.read(4) == b"5"
    with pytest.raises(FlowFlexUploadError, match="shrank"):
        body.read(4)


def test_a_body_that_grows_is_cut_at_its_checked_length() -> None:
    body = _Body(io.BytesIO(b"0123456789-more"), 10, "grows.pdf")

    assert b"".join(body) == b"0123456789"
