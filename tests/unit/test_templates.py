from __future__ import annotations

import time

import pytest

from flowflexd.errors import FileRejected
from flowflexd.rules.templates import (
    MISSING,
    Context,
    Placeholder,
    TemplateError,
    compile_tree,
    name_pattern,
    parse,
    render_text,
    render_tree,
    render_value,
    split_name,
)

SIDECAR = {
    "customer": {"id": 42, "name": "Ada"},
    "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}],
    "total": 12.5,
    "paid": False,
    "note": None,
}


def ctx(**overrides: object) -> Context:
    values: dict[str, object] = {
        "name": "INV-1001.pdf",
        "stem": "INV-1001",
        "ext": "pdf",
        "match": {"number": "1001", "suffix": None},
        "sidecar": SIDECAR,
        "assets": {"file": "asset_file", "attach.label": "asset_label"},
    }
    values.update(overrides)
    return Context(**values)  # type: ignore[arg-type]


def test_parse_splits_literals_and_placeholders() -> None:
    template = parse("INV {match.number} of {name}")

    assert template.parts == (
        "INV ",
        Placeholder("match", key="number", text="{match.number}"),
        " of ",
        Placeholder("name", text="{name}"),
    )


def test_doubled_braces_are_literal() -> None:
    assert render_text(parse("{{trigger.assetId}}"), ctx()) == "{trigger.assetId}"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{file", "never closed"),
        ("file}", "closes nothing"),
        ("{nope}", "unknown placeholder {nope}"),
        ("{attach.}", "needs a name"),
        ("{sidecar..a}", "cannot read the path"),
        ("{sidecar.items[x]}", "cannot read the path"),
    ],
)
def test_parse_errors_say_what_is_wrong(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("[", r"\[")):
        parse(source)


def test_sidecar_paths_parse_keys_and_indexes() -> None:
    ph = parse("{sidecar.items[0].sku}").single

    assert ph is not None
    assert ph.path == ("items", 0, "sku")
    assert ph.path_text == "sidecar.items[0].sku"


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("{sidecar.customer.id}", 42),
        ("{sidecar.customer}", {"id": 42, "name": "Ada"}),
        ("{sidecar.items}", SIDECAR["items"]),
        ("{sidecar.items[1].qty}", 1),
        ("{sidecar.total}", 12.5),
        ("{sidecar.paid}", False),
        ("{sidecar.note}", None),
        ("{sidecar}", SIDECAR),
        ("{file}", "asset_file"),
        ("{attach.label}", "asset_label"),
        ("{match.number}", "1001"),
        ("{stem}", "INV-1001"),
    ],
)
def test_a_placeholder_alone_keeps_its_json_type(source: str, value: object) -> None:
    assert render_value(parse(source), ctx()) == value


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("n={sidecar.customer.id}", "n=42"),
        ("{sidecar.paid}!", "false!"),
        ("c:{sidecar.customer}", 'c:{"id":42,"name":"Ada"}'),
        ("{name}/{stem}/{ext}", "INV-1001.pdf/INV-1001/pdf"),
        ("x{match.suffix}y", "xy"),
        ("id {file}", "id asset_file"),
    ],
)
def test_mixed_text_renders_a_string(source: str, text: str) -> None:
    assert render_value(parse(source), ctx()) == text


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("{sidecar.customer.email}", "sidecar.customer.email"),
        ("{sidecar.items[5].sku}", "sidecar.items[5].sku"),
        ("{sidecar.total.cents}", "sidecar.total.cents"),
    ],
)
def test_a_missing_sidecar_path_fails_naming_the_path(source: str, named: str) -> None:
    with pytest.raises(FileRejected, match=named.replace("[", r"\[").replace("]", r"\]")) as caught:
        render_value(parse(source), ctx())

    assert caught.value.code == "SIDECAR_PATH_MISSING"


def test_a_sidecar_placeholder_without_a_sidecar_fails() -> None:
    with pytest.raises(FileRejected) as caught:
        render_value(parse("{sidecar.customer.id}"), ctx(sidecar=MISSING))

    assert caught.value.code == "SIDECAR_MISSING"


def test_render_tree_renders_nested_payloads() -> None:
    tree = compile_tree(
        {
            "assetId": "{file}",
            "lines": [{"sku": "{sidecar.items[0].sku}"}],
            "fixed": 3,
            "src": "s-3",
        }
    )

    assert render_tree(tree, ctx()) == {
        "assetId": "asset_file",
        "lines": [{"sku": "A-1"}],
        "fixed": 3,
        "src": "s-3",
    }


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("INV-1.pdf", ("INV-1", "pdf")),
        ("archive.tar.gz", ("archive.tar", "gz")),
        ("README", ("README", "")),
        ("trailing.", ("trailing", "")),
    ],
)
def test_split_name(name: str, parts: tuple[str, str]) -> None:
    assert split_name(name) == parts


def test_name_pattern_recognises_what_a_template_can_produce() -> None:
    pattern = name_pattern(parse("{stem}.json"))

    assert pattern.fullmatch("INV-1.json")
    assert not pattern.fullmatch("INV-1.pdf")
    assert name_pattern(parse("{stem}-label.{ext}")).fullmatch("a-label.png")


# ------------------------------------------------ a file's place and claim time


def test_dir_and_path_say_where_the_file_is_below_its_inbox() -> None:
    nested = ctx(dir="alice/2026")
    assert render_text(parse("{dir}|{dir[0]}|{dir[1]}|{path}"), nested) == (
        "alice/2026|alice|2026|alice/2026/INV-1001.pdf"
    )
    top = ctx()
    assert render_text(parse("[{dir}] {path}"), top) == "[] INV-1001.pdf"


@pytest.mark.parametrize(("folder", "where"), [("", "the top of the inbox"), ("a", "'a'")])
def test_a_folder_the_file_is_not_in_fails_it_with_the_reason(folder: str, where: str) -> None:
    with pytest.raises(FileRejected) as caught:
        render_text(parse("{dir[1]}"), ctx(dir=folder))
    assert caught.value.code == "PATH_SEGMENT_MISSING"
    assert "{dir[1]} names a folder the file is not in" in caught.value.message
    assert where in caught.value.message


def test_date_renders_the_claim_time_in_local_time_with_strftime() -> None:
    claimed = 1_780_000_000.0
    expected = time.strftime("%Y-%m-%d %H", time.localtime(claimed))
    assert render_text(parse("{date:%Y-%m-%d %H}"), ctx(claimed_at=claimed)) == expected
    assert render_value(parse("{date:%Y}"), ctx(claimed_at=claimed)) == time.strftime(
        "%Y", time.localtime(claimed)
    )


@pytest.mark.parametrize("source", ["{date}", "{date:}", "{date:YYYY}", "{dir[x]}", "{dirs}"])
def test_place_placeholders_written_wrong_are_refused_at_load(source: str) -> None:
    with pytest.raises(TemplateError):
        parse(source)
