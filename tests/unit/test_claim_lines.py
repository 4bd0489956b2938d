"""A claim file: state lines and the delta lines after them, read back as a crash left them."""

from __future__ import annotations

import json

from flowflexd.inbox.spool import Claim


def claim() -> Claim:
    return Claim("c1", "/srv/in", {"file": "B.idx.csv", "doc.1": "a.pdf"}, "k", "batch", 1.0)


def test_delta_lines_after_the_state_are_applied_in_order() -> None:
    c = claim()
    lines = [
        c.to_json(),
        c.delta(uploads={"doc.1": {"asset_id": "as_1", "uploaded_at": 2.0}}),
        c.delta(rows={"1": {"key": "r1", "answer": {"ok": True}}}),
        c.delta(rows={"1": {"key": "r1", "answer": {"ok": True, "again": 1}}}),
    ]
    back = Claim.from_lines(b"\n".join(lines) + b"\n")
    assert back.uploads == {"doc.1": {"asset_id": "as_1", "uploaded_at": 2.0}}
    assert back.rows == {"1": {"key": "r1", "answer": {"ok": True, "again": 1}}}


def test_a_torn_or_mistyped_delta_is_passed_over() -> None:
    c = claim()
    good = c.delta(rows={"1": {"key": "r1"}})
    mistyped = json.dumps({"delta": {"rows": {"2": "not an object"}}}).encode()
    unknown = json.dumps({"delta": {"key": "stolen"}}).encode()
    torn = c.delta(rows={"3": {"key": "r3"}})[:-5]
    data = b"\n".join([c.to_json(), good, mistyped, unknown, torn])
    back = Claim.from_lines(data)
    assert back.rows == {"1": {"key": "r1"}}
    assert back.key == "k"


def test_a_state_line_after_deltas_is_the_state() -> None:
    c = claim()
    first = c.delta(rows={"1": {"key": "r1"}})
    c.rows = {"1": {"key": "r1"}, "2": {"key": "r2"}}
    back = Claim.from_lines(b"\n".join([claim().to_json(), first, c.to_json()]))
    assert back.rows == {"1": {"key": "r1"}, "2": {"key": "r2"}}
