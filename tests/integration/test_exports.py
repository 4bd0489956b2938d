"""What ERP and capture software export: markers, XML and CSV sidecars, manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from support import (
    PDF_END,
    Folders,
    RawServer,
    RunningDaemon,
    drop,
    files_in,
    pdf,
    read_report,
    wait_until,
)

from flowflexd.commands.replay import replay_one
from flowflexd.commands.views import explain
from flowflexd.config.model import load
from flowflexd.emulator import Emulator
from flowflexd.emulator.state import error
from flowflexd.engine.lifecycle import Stage

MARKED = {"name": "inv", "pattern": "INV-*.pdf", "event": "invoice", "marker": "{name}.ok"}


@pytest.fixture
def layout(tmp_path: Path) -> Folders:
    return Folders(tmp_path)


def test_a_file_waits_for_its_marker_and_the_marker_travels_with_it(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [MARKED])) as running:
        drop(layout.inbox, "INV-7.pdf", b"%PDF invoice 7" + PDF_END)
        wait_until(lambda: running.daemon.ledger.count(Stage.WAITING) == 1)  # settled, waits
        assert emulator.events() == []
        drop(layout.inbox, "INV-7.pdf.ok", b"")  # empty: the usual marker
        wait_until(lambda: files_in(layout.done) == {"INV-7.pdf", "INV-7.pdf.ok"})

    [event] = emulator.events()
    assert [a["filename"] for a in event["assets"].values()] == ["INV-7.pdf"]  # not the marker


def test_a_marker_that_comes_first_waits_for_its_file(layout: Folders, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [MARKED])):
        drop(layout.inbox, "INV-8.pdf.ok", b"done at 12:00\n")  # any content counts
        drop(layout.inbox, "INV-8.pdf", b"%PDF invoice 8" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"INV-8.pdf", "INV-8.pdf.ok"})

    assert len(emulator.events()) == 1


def test_a_marker_that_never_comes_fails_the_file_unsent(
    layout: Folders, emulator: Emulator
) -> None:
    rule = {**MARKED, "marker_timeout": 0.5}
    with RunningDaemon(layout.config(emulator, [rule])):
        drop(layout.inbox, "INV-9.pdf", b"%PDF invoice 9" + PDF_END)
        wait_until(lambda: "INV-9.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "INV-9.pdf")
    assert report["code"] == "MARKER_MISSING"
    assert "INV-9.pdf.ok did not arrive within 0.5 s" in report["reason"]
    assert emulator.events() == []


# ------------------------------------------------------------ XML and CSV sidecars

# As an ERP writes it: a code page in the declaration, namespaces, attributes,
# repeated line elements.
ERP_XML = """<?xml version="1.0" encoding="windows-1252"?>
<inv:Invoice xmlns:inv="urn:erp:invoice:v2" version="2">
  <inv:Header>
    <inv:Number>INV-21</inv:Number>
    <inv:Total currency="EUR">1.250,50</inv:Total>
    <inv:Customer id="4711">Müller GmbH</inv:Customer>
  </inv:Header>
  <inv:Lines>
    <inv:Line no="1"><inv:Sku>A-1</inv:Sku></inv:Line>
    <inv:Line no="2"><inv:Sku>B-2</inv:Sku></inv:Line>
  </inv:Lines>
</inv:Invoice>
""".encode("cp1252")

XML_RULE = {
    "name": "erp",
    "pattern": "INV-*.pdf",
    "event": "invoice.{sidecar.Invoice.Header.Number}",
    "sidecar": "{stem}.xml",
    "payload": {
        "assetId": "{file}",
        "invoice_no": "{sidecar.Invoice.Header.Number}",
        "currency": "{sidecar.Invoice.Header.Total@currency}",
        "total": "{sidecar.Invoice.Header.Total}",
        "customer": "{sidecar.Invoice.Header.Customer}",
        "first_sku": "{sidecar.Invoice.Lines.Line[0].Sku}",
        "document": "{sidecar}",
    },
}


def test_an_erp_xml_sidecar_feeds_the_payload(layout: Folders, emulator: Emulator) -> None:
    with RunningDaemon(layout.config(emulator, [XML_RULE])):
        drop(layout.inbox, "INV-21.pdf", pdf(b"invoice 21"))
        drop(layout.inbox, "INV-21.xml", ERP_XML)
        wait_until(lambda: files_in(layout.done) == {"INV-21.pdf", "INV-21.xml"})

    [event] = emulator.events()
    assert event["event"] == "invoice.INV-21"
    body = event["payload"]
    assert body["invoice_no"] == "INV-21"
    assert body["currency"] == "EUR"
    assert body["total"] == "1.250,50"
    assert body["customer"] == "Müller GmbH"  # windows-1252 read as declared
    assert body["first_sku"] == "A-1"
    assert body["document"]["Invoice"]["Lines"]["Line"][1] == {"@no": "2", "Sku": "B-2"}


def test_a_cp1252_csv_sidecar_with_semicolons(layout: Folders, emulator: Emulator) -> None:
    rule = {
        "name": "export",
        "pattern": "*.pdf",
        "event": "document",
        "sidecar": "{stem}.csv",
        "sidecar_encoding": "cp1252",
        "payload": {"assetId": "{file}", "customer": "{sidecar.Kunde}", "city": "{sidecar.Ort}"},
    }
    with RunningDaemon(layout.config(emulator, [rule])):
        drop(layout.inbox, "LS-9.pdf", pdf(b"delivery note"))
        drop(layout.inbox, "LS-9.csv", "Kunde;Ort;Betrag\r\n4711;Köln;12,50\r\n".encode("cp1252"))
        wait_until(lambda: files_in(layout.done) == {"LS-9.pdf", "LS-9.csv"})

    [event] = emulator.events()
    assert event["payload"]["customer"] == "4711"
    assert event["payload"]["city"] == "Köln"


def billion_laughs() -> bytes:
    """The classic XML bomb: nine levels of ten entities each, 10^9 "lol"s when expanded."""
    entities = [b'<!ENTITY lol0 "lol">'] + [
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1)) * 10) for i in range(1, 10)
    ]
    return b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n%s\n]>\n<lolz>&lol9;</lolz>\n' % (
        b"\n".join(entities)
    )


EVIL_XML = {
    "bomb.xml": billion_laughs(),
    "entity.xml": b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
    b"\n<x>&secret;</x>\n",
}


def test_hostile_xml_sidecars_fail_with_a_reason_and_nothing_is_fetched(
    layout: Folders, emulator: Emulator
) -> None:
    fetcher = RawServer("close")  # counts any connection the parser might make
    try:
        evil = {
            **EVIL_XML,
            "fetch.xml": b'<?xml version="1.0"?>\n<!DOCTYPE x SYSTEM "%s/evil.dtd">\n<x/>\n'
            % fetcher.url.encode(),
            "broken.xml": b"<Invoice>\n  <Number>1</Number>\n</Invoce>\n",
        }
        rule = {**XML_RULE, "pattern": "*.pdf", "event": "doc", "payload": {"n": "{sidecar}"}}
        with RunningDaemon(layout.config(emulator, [rule])):
            for name, body in evil.items():
                stem = name.removesuffix(".xml")
                drop(layout.inbox, f"{stem}.pdf", pdf(stem.encode()))
                drop(layout.inbox, name, body)
            wait_until(
                lambda: len([n for n in files_in(layout.failed) if n.endswith(".json")]) == 4
            )
        assert fetcher.accepted == 0
    finally:
        fetcher.close()

    reasons = {
        stem: read_report(layout.failed, f"{stem}.pdf")
        for stem in ("bomb", "entity", "fetch", "broken")
    }
    assert {r["code"] for r in reasons.values()} == {"SIDECAR_INVALID"}
    for stem in ("bomb", "entity", "fetch"):
        assert f"sidecar {stem}.xml is refused: it has a DOCTYPE" in reasons[stem]["reason"]
    assert "mismatched tag (line 3, column 3)" in reasons["broken"]["reason"]
    assert "root:" not in " ".join(r["reason"] for r in reasons.values())  # /etc/passwd unread
    assert files_in(layout.failed) >= {f"{s}.pdf" for s in reasons} | set(evil)  # nothing lost
    assert emulator.events() == []


def test_a_csv_sidecar_of_30000_rows_is_refused_unsent(layout: Folders, emulator: Emulator) -> None:
    rule = {"name": "export", "pattern": "*.pdf", "event": "doc", "sidecar": "{stem}.csv"}
    with RunningDaemon(layout.config(emulator, [rule])):
        drop(
            layout.inbox, "big.csv", b"id,name\n" + b"".join(b"%d,row\n" % i for i in range(30_000))
        )
        drop(layout.inbox, "big.pdf", pdf(b"big"))
        wait_until(lambda: "big.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "big.pdf")
    assert report["code"] == "SIDECAR_INVALID"
    assert "more than one data row (another on line 3)" in report["reason"]
    assert files_in(layout.failed) == {"big.pdf", "big.csv", "big.pdf.error.json"}
    assert emulator.events() == []


# ---------------------------------------------------------------------- manifests

CSV_MANIFEST_RULE = {
    "name": "batch",
    "manifest": "*.idx.csv",
    "file_column": "{row.File}",
    "event": "document.indexed",
    "sidecar_encoding": "cp1252",
    "payload": {
        "assetId": "{file}",
        "doc_type": "{row.DocType}",
        "batch": "{manifest.stem}",
        "row": "{manifest.row}",
    },
}


def csv_manifest(rows: list[tuple[str, str]]) -> bytes:
    """An index as Docsvault-style exports write it: cp1252, ';', CRLF, a header."""
    lines = ["File;DocType;Customer"] + [f"{f};{t};Müller" for f, t in rows]
    return ("\r\n".join(lines) + "\r\n").encode("cp1252")


def test_a_csv_manifest_of_200_rows_sends_one_event_per_row(
    layout: Folders, emulator: Emulator
) -> None:
    rule = CSV_MANIFEST_RULE
    names = [f"scan-{i:03}.pdf" for i in range(200)]
    with RunningDaemon(layout.config(emulator, [rule])):
        for name in names:
            drop(layout.inbox, name, pdf(name.encode()))
        drop(layout.inbox, "unlisted.pdf", pdf(b"named by no row"))
        drop(layout.inbox, "B-17.idx.csv", csv_manifest([(n, "invoice") for n in names]))
        wait_until(lambda: len(files_in(layout.done)) == 201, timeout=60)

    assert files_in(layout.done) == {*names, "B-17.idx.csv"}
    assert files_in(layout.inbox) == {"unlisted.pdf"}  # named by no row: stays
    events = emulator.events()
    assert len(events) == 200
    assert len({e["idempotency_key"] for e in events}) == 200
    by_row = {e["payload"]["row"]: e for e in events}
    assert sorted(by_row) == list(range(1, 201))
    assert by_row[7]["payload"]["doc_type"] == "invoice"
    assert by_row[7]["payload"]["batch"] == "B-17.idx"
    [asset] = by_row[7]["assets"].values()
    assert asset["filename"] == "scan-006.pdf"


THREE_LEVEL_XML = """<?xml version="1.0" encoding="UTF-8"?>
<ImportBatch xmlns="http://www.kofax.com/ascent/release" BatchName="B-9">
  <Documents>
    <Document DocType="invoice">
      <Files><File>a.pdf</File></Files>
      <Index Name="Amount">10</Index>
    </Document>
    <Document DocType="receipt">
      <Files><File>b.pdf</File></Files>
      <Index Name="Amount">20</Index>
    </Document>
    <Document DocType="invoice">
      <Files><File>c.pdf</File></Files>
      <Index Name="Amount">30</Index>
    </Document>
  </Documents>
</ImportBatch>
"""


def test_a_three_level_xml_manifest(layout: Folders, emulator: Emulator) -> None:
    rule = {
        "name": "kofax",
        "manifest": "*.xml",
        "file_column": "{row.Files.File}",
        "event": "document.{row@DocType}",
        "payload": {"assetId": "{file}", "amount": "{row.Index}", "name": "{name}"},
    }
    with RunningDaemon(layout.config(emulator, [rule])):
        for name in ("a.pdf", "b.pdf", "c.pdf"):
            drop(layout.inbox, name, pdf(name.encode()))
        drop(layout.inbox, "release.xml", THREE_LEVEL_XML.encode())
        wait_until(lambda: len(files_in(layout.done)) == 4)

    events = sorted(emulator.events(), key=lambda e: e["payload"]["name"])
    assert [e["event"] for e in events] == [
        "document.invoice",
        "document.receipt",
        "document.invoice",
    ]
    assert [e["payload"]["amount"] for e in events] == ["10", "20", "30"]


def test_a_json_manifest(layout: Folders, emulator: Emulator) -> None:
    rule = {
        "name": "json",
        "manifest": "*.manifest.json",
        "file_column": "{row.document.file}",
        "event": "doc.{row.kind}",
    }
    manifest = {
        "batch": "B-4",
        "documents": [
            {"document": {"file": "x.pdf"}, "kind": "invoice", "amount": 12.5},
            {"document": {"file": "y.pdf"}, "kind": "memo", "amount": 3},
        ],
    }
    with RunningDaemon(layout.config(emulator, [rule])):
        drop(layout.inbox, "x.pdf", pdf(b"x"))
        drop(layout.inbox, "y.pdf", pdf(b"y"))
        drop(layout.inbox, "B-4.manifest.json", json.dumps(manifest).encode())
        wait_until(lambda: len(files_in(layout.done)) == 3)

    events = sorted(emulator.events(), key=lambda e: e["event"])
    assert [e["event"] for e in events] == ["doc.invoice", "doc.memo"]
    # Without a payload: the row as it is, plus the document's assetId.
    assert events[0]["payload"]["amount"] == 12.5
    assert events[0]["payload"]["assetId"] in events[0]["assets"]


def test_bad_rows_hold_the_batch_then_fail_it_naming_each_row(
    layout: Folders, emulator: Emulator
) -> None:
    rule = {**CSV_MANIFEST_RULE, "manifest_timeout": 1}
    rows = [
        ("good.pdf", "invoice"),
        ("../../etc/passwd", "invoice"),  # leaves the folder
        ("/etc/shadow", "invoice"),  # so does an absolute path
        ("missing.pdf", "invoice"),
        ("tool.exe", "invoice"),  # a type FlowFlex refuses
    ]
    with RunningDaemon(layout.config(emulator, [rule])):
        drop(layout.inbox, "good.pdf", pdf(b"good"))
        drop(layout.inbox, "tool.exe", b"MZ not a document")
        drop(layout.inbox, "other.pdf", pdf(b"named by no row"))
        drop(layout.inbox, "B-1.idx.csv", csv_manifest(rows))
        wait_until(lambda: "B-1.idx.csv.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "B-1.idx.csv")
    assert report["code"] == "MANIFEST_ROWS_BAD"
    reason = report["reason"]
    assert reason.startswith("4 of 5 rows cannot be sent after 1 s (manifest_timeout), so none was")
    assert "row 2: the document '../../etc/passwd' contains '/'" in reason
    assert "row 3: the document '/etc/shadow' contains '/'" in reason
    assert "row 4: missing.pdf is not in the folder" in reason
    assert "row 5: tool.exe is a type FlowFlex does not take" in reason
    # The manifest and the document it names rightly go with it; the rest stays.
    assert files_in(layout.failed) == {"B-1.idx.csv", "B-1.idx.csv.error.json", "good.pdf"}
    assert files_in(layout.inbox) == {"tool.exe", "other.pdf"}
    assert "root:" not in json.dumps(report)
    assert emulator.events() == []


def test_a_manifest_of_30000_rows_is_refused_and_its_documents_stay(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [CSV_MANIFEST_RULE])):
        drop(layout.inbox, "a.pdf", pdf(b"a"))
        drop(layout.inbox, "huge.idx.csv", csv_manifest([("a.pdf", "x")] * 30_000))
        wait_until(lambda: "huge.idx.csv.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "huge.idx.csv")
    assert report["code"] == "MANIFEST_INVALID"
    assert "more than 10,000 rows; split the export" in report["reason"]
    assert files_in(layout.inbox) == {"a.pdf"}
    assert emulator.events() == []


def test_rows_refused_after_others_were_sent_fail_the_batch_and_replay_sends_only_those(
    layout: Folders, emulator: Emulator
) -> None:
    config = layout.config(emulator, [CSV_MANIFEST_RULE])
    names = ["d1.pdf", "d2.pdf", "d3.pdf", "d4.pdf"]
    with RunningDaemon(config):
        for name in names:
            drop(layout.inbox, name, pdf(name.encode()))
        # Rows go in order: the first event FlowFlex sees (row 1) is refused for good.
        refused = error(422, "INVALID_PAYLOAD", "doc_type is not known to this flow")
        emulator.answer_next(1, refused, only="event")
        drop(layout.inbox, "B-2.idx.csv", csv_manifest([(n, "invoice") for n in names]))
        wait_until(lambda: "B-2.idx.csv.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "B-2.idx.csv")
    assert report["code"] == "MANIFEST_ROWS_FAILED"
    assert report["reason"].startswith("1 of 4 rows were not sent (rows 1; row 1: INVALID_PAYLOAD")
    rows = {r["row"]: r for r in report["rows"]}
    assert rows[1]["sent"] is False and rows[1]["code"] == "INVALID_PAYLOAD"
    assert [rows[n]["sent"] for n in (2, 3, 4)] == [True, True, True]
    assert all(rows[n]["asset_id"] and rows[n]["answer"]["ok"] for n in (2, 3, 4))
    assert files_in(layout.failed) == {*names, "B-2.idx.csv", "B-2.idx.csv.error.json"}
    sent_first = {e["payload"]["row"] for e in emulator.events()}
    assert sent_first == {2, 3, 4}

    replay_one(load(config), layout.failed / "B-2.idx.csv")
    with RunningDaemon(config):
        wait_until(lambda: files_in(layout.done) == {*names, "B-2.idx.csv"})

    events = emulator.events()
    assert sorted(e["payload"]["row"] for e in events) == [1, 2, 3, 4]  # row 1 once, now
    assert emulator.stats()["event_replays"] == 0  # the sent rows were not even resent
    assert files_in(layout.failed) == set()


# ------------------------------------------------------------------- folder markers

BATCHED = {"name": "scans", "pattern": "*.pdf", "event": "scan", "folder_marker": "READY"}


def test_a_folder_marker_releases_the_folder_as_one_batch_and_follows_it(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [BATCHED])) as running:
        for i in range(5):
            drop(layout.inbox, f"scan-{i}.pdf", pdf(b"scan %d" % i))
        wait_until(lambda: running.daemon.ledger.count(Stage.WAITING) == 5)
        assert emulator.events() == []
        drop(layout.inbox, "READY", b"")
        wait_until(lambda: len(files_in(layout.done)) == 6)

    assert files_in(layout.done) == {*(f"scan-{i}.pdf" for i in range(5)), "READY"}
    assert len(emulator.events()) == 5  # one per file; none for the marker
    assert files_in(layout.inbox) == set()


def test_folder_markers_count_per_subfolder_in_a_tree(layout: Folders, emulator: Emulator) -> None:
    config = layout.config(emulator, [BATCHED])
    spec = yaml.safe_load(config.read_text())
    spec["folders"][0]["recursive"] = True
    config.write_text(yaml.safe_dump(spec))
    with RunningDaemon(config):
        for part in ("north", "south"):
            (layout.inbox / part).mkdir()
            drop(layout.inbox / part, "a.pdf", pdf(part.encode()))
        drop(layout.inbox / "north", "READY", b"export finished 12:00\n")
        wait_until(lambda: {"a.pdf", "READY"} <= files_in(layout.done))
        assert files_in(layout.inbox / "south") == {"a.pdf"}  # its folder has no marker yet

    assert len(emulator.events()) == 1


def test_a_folder_marker_that_never_comes_fails_the_files_unsent(
    layout: Folders, emulator: Emulator
) -> None:
    with RunningDaemon(layout.config(emulator, [{**BATCHED, "marker_timeout": 0.5}])):
        drop(layout.inbox, "lonely.pdf", pdf(b"lonely"))
        wait_until(lambda: "lonely.pdf.error.json" in files_in(layout.failed))

    report = read_report(layout.failed, "lonely.pdf")
    assert report["code"] == "MARKER_MISSING"
    assert "the folder marker READY did not arrive within 0.5 s" in report["reason"]
    assert emulator.events() == []


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_marker_that_is_a_link_or_a_fifo_is_never_trusted_or_read(
    layout: Folders, emulator: Emulator, tmp_path: Path, kind: str
) -> None:
    outside = tmp_path / "outside-secret"
    outside.write_bytes(b"secret")
    with RunningDaemon(
        layout.config(emulator, [MARKED, {**BATCHED, "pattern": "B-*.pdf", "marker_timeout": 1}])
    ):
        drop(layout.inbox, "INV-1.pdf", pdf(b"invoice"))
        drop(layout.inbox, "B-1.pdf", pdf(b"batch"))
        for name in ("INV-1.pdf.ok", "READY"):
            if kind == "symlink":
                (layout.inbox / name).symlink_to(outside)
            else:
                os.mkfifo(layout.inbox / name)
        wait_until(
            lambda: (
                {"INV-1.pdf.error.json", "B-1.pdf.error.json", "READY.error.json"}
                <= files_in(layout.failed)
                | {p.name for p in layout.failed.iterdir() if p.is_fifo()}
            )
        )

    code = "SYMLINK" if kind == "symlink" else "NOT_A_REGULAR_FILE"
    per_file = read_report(layout.failed, "INV-1.pdf")
    assert per_file["code"] == code
    assert "its marker INV-1.pdf.ok is a" in per_file["reason"]
    assert read_report(layout.failed, "READY")["code"] == code  # the folder marker itself
    assert read_report(layout.failed, "B-1.pdf")["code"] == "MARKER_MISSING"
    assert outside.read_bytes() == b"secret"  # the target untouched
    assert emulator.events() == []
    assert os.listdir(layout.inbox) == [".flowflexd"]  # nothing lost: all in failed


def test_a_marker_link_judged_in_the_same_look_as_its_file_goes_with_that_file(
    layout: Folders, emulator: Emulator, tmp_path: Path
) -> None:
    """Present at start, each file and its link settle in one step, in no set order: the
    link is never set aside alone while the file it marks waits for it (CI saw that)."""
    outside = tmp_path / "outside-secret"
    outside.write_bytes(b"secret")
    for i in range(20):
        drop(layout.inbox, f"INV-{i}.pdf", pdf(b"invoice %d" % i))
        (layout.inbox / f"INV-{i}.pdf.ok").symlink_to(outside)
    with RunningDaemon(layout.config(emulator, [MARKED])):
        wait_until(
            lambda: sum(n.endswith(".pdf.error.json") for n in files_in(layout.failed)) == 20
        )

    for i in range(20):
        report = read_report(layout.failed, f"INV-{i}.pdf")
        assert (report["code"], report["reason"]) == (
            "SYMLINK",
            f"its marker INV-{i}.pdf.ok is a symbolic link, not a regular file; both are set "
            "aside unread",
        )
    assert outside.read_bytes() == b"secret"
    assert emulator.events() == []
    assert os.listdir(layout.inbox) == [".flowflexd"]


def test_explain_reads_a_manifest_row_by_row(layout: Folders, emulator: Emulator) -> None:
    config = load(layout.config(emulator, [CSV_MANIFEST_RULE]))
    drop(layout.inbox, "a.pdf", pdf(b"a"))
    manifest = drop(
        layout.inbox, "B-3.idx.csv", csv_manifest([("a.pdf", "invoice"), ("../x.pdf", "memo")])
    )

    lines = explain(config.folders[0], manifest)

    assert "  rule: batch (manifest *.idx.csv)" in lines
    assert "  a manifest of 2 rows, one event each (up to 5 shown):" in lines
    assert "    row 1: a.pdf (present)" in lines
    assert any(line.startswith("    row 2: bad: the document '../x.pdf'") for line in lines)
    assert "    row 1's event: document.indexed" in lines
    assert '        "doc_type": "invoice",' in lines
