from __future__ import annotations

import os

import pytest

from flowflexd.rules.sanitize import asset_name, printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("INV-1.pdf", "INV-1.pdf"),
        ("Rechnung ä.pdf", "Rechnung ä.pdf"),
        ("a\nb.pdf", "a\\nb.pdf"),
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("tab\there", "tab\\there"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("evil\u202egnp.pdf", "evil\\u202egnp.pdf"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("c1\x85", "c1\\x85"),
    ],
)
def test_printable_escapes_what_could_break_a_line(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_undecodable_bytes_show_as_hex() -> None:
    name = os.fsdecode(b"scan-\xff\xfe.pdf")

    assert printable(name) == "scan-\\xff\\xfe.pdf"


def test_asset_names_are_valid_utf8_without_controls() -> None:
    assert asset_name("INV-1.pdf") == "INV-1.pdf"
    assert asset_name(os.fsdecode(b"scan-\xff.pdf")) == "scan-\ufffd.pdf"
    assert asset_name("a\nb\x1b[2J.pdf") == "a_b_[2J.pdf"
    assert asset_name("evil\u202egnp.pdf") == "evil_gnp.pdf"
