"""The emulator's page in a real headless Chromium: events appear as they arrive, files open."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from support import ROOT, Folders, drop, files_in, need, run_daemon, wait_until

from flowflexd.emulator import Emulator

ARTIFACTS = ROOT / "test-artifacts"


def one_page_pdf(text: str) -> bytes:
    """A small valid PDF with one page saying ``text``: what Chromium's viewer can show."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def drawn(driver: WebDriver, *, more_than: int) -> bytes | None:
    """A screenshot once it holds more than a blank screen would (PNG size grows with detail)."""
    png = driver.get_screenshot_as_png()
    return png if len(png) > more_than else None


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    need("/usr/bin/chromium", "/usr/bin/chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    )
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_events_as_they_arrive_and_opens_their_files(
    tmp_path: Path, emulator: Emulator, browser: WebDriver
) -> None:
    driver = browser
    rule = {
        "name": "invoice",
        "pattern": "INV-*.pdf",
        "event": "invoice.received",
        "sidecar": "{stem}.json",
        "payload": {
            "assetId": "{file}",
            "customer": "{sidecar.customer}",
            "note": "{sidecar.note}",
        },
    }
    config = Folders(tmp_path).config(emulator, [rule])
    emulator.set_faults(latency_ms=5)
    proc = run_daemon(config)
    try:
        proc.wait_for_log("flowflexd ready")
        driver.get(emulator.url + "/")
        find = driver.find_element
        wait_until(lambda: find(By.ID, "empty").is_displayed())
        wait_until(lambda: find(By.ID, "faults").text == "latency 5 ms")

        hostile = "<img src=x onerror=alert(1)>"  # shown as text, never run
        drop(
            tmp_path / "inbox",
            "INV-7.json",
            json.dumps({"customer": "Müller", "note": hostile}).encode(),
        )
        drop(tmp_path / "inbox", "INV-7.pdf", one_page_pdf("Invoice 7"))
        wait_until(lambda: files_in(tmp_path / "done") == {"INV-7.pdf", "INV-7.json"})
        [sent] = emulator.events()

        card = wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "article"),
            timeout=10,
        )[0]
        assert card.find_element(By.CLASS_NAME, "name").text == "invoice.received"
        assert sent["idempotency_key"] in card.find_element(By.CLASS_NAME, "key").text
        payload = card.find_element(By.TAG_NAME, "pre").text
        assert json.loads(payload) == sent["payload"]  # formatted JSON, as received
        assert hostile in payload
        assert driver.find_elements(By.TAG_NAME, "img") == []
        assert not find(By.ID, "empty").is_displayed()
        asset_id = sent["payload"]["assetId"]
        link = card.find_element(By.CSS_SELECTOR, f"pre a[data-asset='{asset_id}']")
        assert link.text == asset_id
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "emulator-page.png"))

        # A second event arrives while the page is open: it goes on top.
        drop(tmp_path / "inbox", "INV-8.json", b'{"customer": "Ada", "note": ""}')
        drop(tmp_path / "inbox", "INV-8.pdf", one_page_pdf("Invoice 8"))
        wait_until(
            lambda: len(driver.find_elements(By.CSS_SELECTOR, "article")) == 2,
            timeout=10,
        )
        top = driver.find_elements(By.CSS_SELECTOR, "article")[0]
        assert '"Ada"' in top.find_element(By.TAG_NAME, "pre").text
        assert find(By.ID, "count").text == "2"

        href = link.get_attribute("href")
        assert href is not None
        driver.get(href)
        wait_until(
            lambda: driver.execute_script("return document.contentType") == "application/pdf"
        )
        blank = len(driver.get_screenshot_as_png())  # the viewer, before it drew the page
        # The viewer draws out of the page's reach: wait until the screen shows more.
        shot = wait_until(lambda: drawn(driver, more_than=blank * 3), timeout=10)
        (ARTIFACTS / "emulator-pdf.png").write_bytes(shot)
    finally:
        proc.stop()

    with urllib.request.urlopen(f"{emulator.url}/_emulator/assets/{asset_id}") as res:
        assert res.headers["Content-Type"] == "application/pdf"
        assert res.read() == one_page_pdf("Invoice 7")
