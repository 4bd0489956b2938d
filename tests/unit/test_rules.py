from __future__ import annotations

import re

import pytest

from flowflexd.errors import FileRejected
from flowflexd.rules.matching import (
    Rule,
    companion_patterns,
    companions,
    could_be_companion,
    event_name,
    glob_matcher,
    is_temporary_name,
    match,
    payload,
)
from flowflexd.rules.templates import MISSING, compile_tree, parse


def rule(
    name: str = "r", *, pattern: str | None = None, regex: str | None = None, **kw: object
) -> Rule:
    matcher = glob_matcher(pattern) if pattern else re.compile(regex or "")
    kw.setdefault("event", parse("doc.received"))
    return Rule(name=name, matcher=matcher, pattern=pattern, regex=regex, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "scan.tmp",
        "scan.PART",
        "~$report.docx",
        ".hidden.pdf",
        "Thumbs.db",
        ".DS_Store",
        "desktop.ini",
        "Desktop.INI",
        "x.crdownload",
        "x.filepart",
    ],
)
def test_temporary_names_are_never_taken(name: str) -> None:
    assert is_temporary_name(name)


@pytest.mark.parametrize("name", ["INV-1.pdf", "scan.pdf", "report.docx", "tmp.pdf", "a~$b.pdf"])
def test_ordinary_names_are_candidates(name: str) -> None:
    assert not is_temporary_name(name)


def test_the_first_matching_rule_wins() -> None:
    rules = [rule("inv", pattern="INV-*.pdf"), rule("any", pattern="*.pdf")]

    assert match(rules, "INV-7.pdf").rule.name == "inv"  # type: ignore[union-attr]
    assert match(rules, "other.pdf").rule.name == "any"  # type: ignore[union-attr]
    assert match(rules, "other.png") is None


def test_globs_ignore_case() -> None:
    assert match([rule(pattern="*.pdf")], "SCAN0001.PDF") is not None


def test_regex_groups_are_captured() -> None:
    found = match([rule(regex=r"^INV-(?P<number>\d+)\.pdf$")], "INV-1001.pdf")

    assert found is not None
    assert found.groups == {"number": "1001"}


def test_companions_render_from_the_file_name() -> None:
    found = match(
        [
            rule(
                pattern="*.pdf", sidecar=parse("{stem}.json"), attach={"label": parse("{stem}.png")}
            )
        ],
        "INV-1.pdf",
    )

    assert found is not None
    assert companions(found) == {"sidecar": "INV-1.json", "attach.label": "INV-1.png"}


@pytest.mark.parametrize("template", ["../{stem}.json", "/etc/{stem}", "..", "{name}"])
def test_companion_names_cannot_leave_the_folder_or_be_the_file(template: str) -> None:
    found = match([rule(pattern="*.pdf", sidecar=parse(template))], "INV-1.pdf")

    assert found is not None
    with pytest.raises(FileRejected) as caught:
        companions(found)
    assert caught.value.code == "BAD_COMPANION_NAME"


def test_a_companion_from_a_regex_group_cannot_carry_a_slash() -> None:
    found = match([rule(regex=r"(?P<x>.+)\.pdf", sidecar=parse("{match.x}.json"))], "a.pdf")
    assert found is not None
    assert companions(found) == {"sidecar": "a.json"}


def test_event_names_render_placeholders() -> None:
    found = match([rule(pattern="*.pdf", event=parse("doc.{sidecar.kind}"))], "a.pdf")
    assert found is not None

    assert event_name(found, sidecar={"kind": "invoice"}) == "doc.invoice"


def test_an_event_name_with_control_characters_is_refused() -> None:
    found = match([rule(pattern="*.pdf", event=parse("doc.{sidecar.kind}"))], "a.pdf")
    assert found is not None

    with pytest.raises(FileRejected, match="control characters"):
        event_name(found, sidecar={"kind": "x\r\nX-Evil: 1"})


def test_an_empty_event_name_is_refused() -> None:
    found = match([rule(pattern="*.pdf", event=parse("{sidecar.kind}"))], "a.pdf")
    assert found is not None

    with pytest.raises(FileRejected, match="empty"):
        event_name(found, sidecar={"kind": " "})


def test_the_default_payload_is_the_sidecar_plus_the_asset_ids() -> None:
    found = match([rule(pattern="*.pdf", attach={"label": parse("{stem}.png")})], "a.pdf")
    assert found is not None

    body = payload(
        found,
        sidecar={"customer": 7, "assetId": "from-sidecar"},
        assets={"file": "asset_1", "attach.label": "asset_2"},
    )

    assert body == {"customer": 7, "assetId": "asset_1", "label": "asset_2"}


def test_the_default_payload_without_a_sidecar() -> None:
    found = match([rule(pattern="*.pdf")], "a.pdf")
    assert found is not None

    assert payload(found, sidecar=MISSING, assets={"file": "asset_1"}) == {"assetId": "asset_1"}


def test_a_configured_payload_is_rendered() -> None:
    found = match(
        [rule(regex=r"INV-(?P<n>\d+)", payload=compile_tree({"id": "{file}", "n": "{match.n}"}))],
        "INV-9.pdf",
    )
    assert found is not None

    assert payload(found, assets={"file": "asset_1"}) == {"id": "asset_1", "n": "9"}


def test_an_early_sidecar_is_recognised_as_one() -> None:
    rules = [rule(pattern="INV-*.pdf", sidecar=parse("{stem}.json"))]
    patterns = companion_patterns(rules)

    assert could_be_companion(patterns, "INV-1.json") is rules[0]
    assert could_be_companion(patterns, "INV-1.csv") is None
