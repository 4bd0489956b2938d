"""XML, CSV and JSON metadata read the way exporters write them, and refused with a reason."""

from __future__ import annotations

import pytest

from flowflexd.engine.outcomes import Code
from flowflexd.errors import FileRejected
from flowflexd.rules.metadata import format_of, manifest_rows, parse, row_digest
from flowflexd.rules.templates import Context, render_value
from flowflexd.rules.templates import parse as parse_template

# As an ERP writes it: a declaration naming the code page, a namespace with a
# prefix and a default one, attributes, repeated and single elements.
INVOICE_XML = """<?xml version="1.0" encoding="windows-1252"?>
<inv:Invoice xmlns:inv="urn:example:invoice" xmlns="urn:example:lines" version="2">
  <inv:Header>
    <inv:Number>INV-7</inv:Number>
    <inv:Total currency="EUR">1.250,50</inv:Total>
    <inv:Customer id="4711">Müller GmbH</inv:Customer>
    <inv:Note/>
  </inv:Header>
  <Lines>
    <Line no="1"><Sku>A-1</Sku><Qty>2</Qty></Line>
    <Line no="2"><Sku>B-2</Sku><Qty>1</Qty></Line>
  </Lines>
  <Single><Item>only</Item></Single>
</inv:Invoice>
""".encode("cp1252")


def value(document: object, template: str) -> object:
    ctx = Context(name="INV-7.pdf", stem="INV-7", ext="pdf", sidecar=document)
    return render_value(parse_template(template), ctx)


def test_an_xml_document_maps_to_json_as_documented() -> None:
    doc = parse(INVOICE_XML, "sidecar INV-7.xml", fmt="xml")
    assert doc["Invoice"]["@version"] == "2"
    assert doc["Invoice"]["Header"]["Number"] == "INV-7"
    assert doc["Invoice"]["Header"]["Total"] == {"@currency": "EUR", "#text": "1.250,50"}
    assert doc["Invoice"]["Header"]["Note"] == ""
    assert [line["@no"] for line in doc["Invoice"]["Lines"]["Line"]] == ["1", "2"]
    assert doc["Invoice"]["Header"]["Customer"]["#text"] == "Müller GmbH"  # cp1252 decoded


def test_placeholders_reach_elements_attributes_and_list_items() -> None:
    doc = parse(INVOICE_XML, "sidecar INV-7.xml", fmt="xml")
    assert value(doc, "{sidecar.Invoice.Header.Number}") == "INV-7"
    assert value(doc, "{sidecar.Invoice.Header.Total@currency}") == "EUR"
    assert value(doc, "{sidecar.Invoice.Header.Total}") == "1.250,50"  # its text
    assert value(doc, "{sidecar.Invoice.Lines.Line[1].Sku}") == "B-2"
    assert value(doc, "{sidecar.Invoice.Single.Item[0]}") == "only"  # one element, [0] works
    with pytest.raises(FileRejected) as err:
        value(doc, "{sidecar.Invoice.Lines.Line[5].Sku}")
    assert err.value.code == Code.SIDECAR_PATH_MISSING
    assert "of 2 items" in err.value.message


def test_a_json_key_spelled_with_at_is_still_found() -> None:
    assert value({"mail": {"a@b": 1}}, "{sidecar.mail.a@b}") == 1


@pytest.mark.parametrize(
    ("xml", "says"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><x>&lol2;</x>',
            "it has a DOCTYPE",
        ),
        (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>', "DOCTYPE"),
        (b'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/evil.dtd"><x/>', "DOCTYPE"),
        (b"<x><y></x>", "not well-formed XML: mismatched tag (line 1, column 9)"),
        (b"<x>\n<y>\n</x>", "(line 3"),
        (b"", "not well-formed XML"),
    ],
)
def test_hostile_or_broken_xml_is_refused_with_the_reason(xml: bytes, says: str) -> None:
    with pytest.raises(FileRejected) as err:
        parse(xml, "sidecar a.xml", fmt="xml")
    assert err.value.code == Code.SIDECAR_INVALID
    assert says in err.value.message
    assert err.value.message.startswith("sidecar a.xml ")


def test_xml_nested_past_the_limit_is_refused() -> None:
    deep = b"<a>" * 200 + b"</a>" * 200
    with pytest.raises(FileRejected, match="deeper than 64"):
        parse(deep, "sidecar a.xml", fmt="xml")


def test_a_cp1252_csv_with_semicolons_gives_its_one_row() -> None:
    raw = "Kunde;Betrag;Straße\r\n4711;1.250,50;Hauptstraße 1\r\n".encode("cp1252")
    row = parse(raw, "sidecar a.csv", fmt="csv", encoding="cp1252")
    assert row == {"Kunde": "4711", "Betrag": "1.250,50", "Straße": "Hauptstraße 1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b\n1,2\n", {"a": "1", "b": "2"}),
        ("a\tb\n1\t2\n", {"a": "1", "b": "2"}),
        ("a|b\n1|2\n", {"a": "1", "b": "2"}),
        ('a;b\n"x;y";2\n\n', {"a": "x;y", "b": "2"}),  # quoted, trailing blank line
        ("only\n42\n", {"only": "42"}),  # one column: no delimiter at all
    ],
)
def test_the_delimiter_is_sniffed_from_the_header(text: str, expected: dict[str, str]) -> None:
    assert parse(text.encode(), "s", fmt="csv") == expected


def test_a_configured_delimiter_wins_over_the_sniffed_one() -> None:
    raw = b"name;amount,currency\nMuller;12,50 EUR\n"  # more commas than semicolons
    assert parse(raw, "s", fmt="csv", delimiter=";") == {
        "name": "Muller",
        "amount,currency": "12,50 EUR",
    }


def test_a_bom_wins_over_the_configured_encoding() -> None:
    raw = "name,city\nZoë,Köln\n".encode("utf-16")  # with its byte order mark
    assert parse(raw, "s", fmt="csv", encoding="cp1252") == {"name": "Zoë", "city": "Köln"}
    assert parse(b"\xef\xbb\xbf" + "a\nü\n".encode(), "s", fmt="csv", encoding="cp1252") == {
        "a": "ü"
    }


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"a,b\n1,2\n3,4\n", "more than one data row (another on line 3)"),
        (b"a,b\n1,2,3\n", "line 2 has 3 fields; the header has 2"),
        (b"a,a\n1,2\n", "repeated column name"),
        (b"a,b\n", "no data row"),
        (b"\n1,2\n", "no header row"),
        (b'a,b\n"open,2\n', "is not valid CSV"),
        (b"a,b\n\xff,2\n", "is not UTF-8 text (byte 0xff on line 2)"),
    ],
)
def test_a_csv_sidecar_that_is_not_one_row_is_refused(raw: bytes, says: str) -> None:
    with pytest.raises(FileRejected) as err:
        parse(raw, "sidecar a.csv", fmt="csv")
    assert err.value.code == Code.SIDECAR_INVALID
    assert says in err.value.message


def test_thirty_thousand_rows_are_refused_without_reading_them_all() -> None:
    raw = b"id,name\n" + b"".join(b"%d,row\n" % i for i in range(30_000))
    with pytest.raises(FileRejected, match="another on line 3"):
        parse(raw, "sidecar big.csv", fmt="csv")


def test_json_errors_name_the_line() -> None:
    # A value missing: every Python from 3.11 places it alike (3.13 places a
    # trailing comma on the comma's line, earlier ones on the next).
    with pytest.raises(FileRejected, match=r"line 2, column 7"):
        parse(b'{"a": 1,\n "b": }', "sidecar a.json", fmt="json")


@pytest.mark.parametrize(
    ("name", "configured", "fmt"),
    [
        ("a.xml", None, "xml"),
        ("A.XML", None, "xml"),
        ("a.csv", None, "csv"),
        ("a.txt", None, "csv"),
        ("a.json", None, "json"),
        ("a.meta", None, "json"),
        ("a.json", "xml", "xml"),
    ],
)
def test_the_format_follows_the_rule_then_the_extension(
    name: str, configured: str | None, fmt: str
) -> None:
    assert format_of(name, configured) == fmt


# ---------------------------------------------------------------------- manifests


def rows_of(raw: bytes, fmt: str, **options: object) -> list[tuple[int, dict[str, object]]]:
    return manifest_rows(raw, "manifest m", fmt=fmt, **options)  # type: ignore[arg-type]


def test_xml_manifest_rows_are_found_down_the_one_path() -> None:
    xml = b"""<Batch id="7"><Documents>
      <Document><File>a.pdf</File></Document>
      <Document><File>b.pdf</File></Document>
    </Documents></Batch>"""
    assert rows_of(xml, "xml") == [(1, {"File": "a.pdf"}), (2, {"File": "b.pdf"})]


def test_a_manifest_of_one_document_is_one_row() -> None:
    xml = b"<Batch><Documents><Document><File>a.pdf</File><Type>x</Type></Document></Documents>"
    xml += b"</Batch>"
    assert rows_of(xml, "xml") == [(1, {"File": "a.pdf", "Type": "x"})]


def test_where_two_lists_could_be_rows_manifest_rows_says_which() -> None:
    xml = b"""<Batch><Pages><Page>1</Page><Page>2</Page></Pages>
      <Docs><Doc><F>a.pdf</F></Doc><Doc><F>b.pdf</F></Doc></Docs></Batch>"""
    with pytest.raises(FileRejected, match="say which holds the rows with manifest_rows"):
        rows_of(xml, "xml")
    rows = rows_of(xml, "xml", rows_path=("Batch", "Docs", "Doc"))
    assert [row["F"] for _, row in rows] == ["a.pdf", "b.pdf"]
    with pytest.raises(FileRejected, match=r"has nothing at Batch\.Nope"):
        rows_of(xml, "xml", rows_path=("Batch", "Nope"))


def test_json_manifests_are_a_list_of_objects() -> None:
    assert rows_of(b'[{"File": "a.pdf"}]', "json") == [(1, {"File": "a.pdf"})]
    assert rows_of(b'{"documents": [{"File": "a.pdf"}]}', "json") == [(1, {"File": "a.pdf"})]
    with pytest.raises(FileRejected, match="row 2 is str, not an object"):
        rows_of(b'[{"File": "a.pdf"}, "b.pdf"]', "json")
    with pytest.raises(FileRejected, match="lists no documents"):
        rows_of(b"[]", "json")


def test_manifest_errors_are_manifest_invalid() -> None:
    with pytest.raises(FileRejected) as err:
        rows_of(b"<x><y></x>", "xml")
    assert err.value.code == Code.MANIFEST_INVALID
    assert "line 1" in err.value.message


def test_a_row_digest_ignores_key_order() -> None:
    assert row_digest({"a": "1", "b": "2"}) == row_digest({"b": "2", "a": "1"})
    assert row_digest({"a": "1"}) != row_digest({"a": "2"})
