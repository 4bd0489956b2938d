"""Real SMB, FTP, SFTP, rsync and cp writers into a watched inbox, with the daemon running.

For every writer: a batch of small files, two big files throttled so each takes
longer than settle_seconds, a writer paused longer than settle_seconds mid-file,
and a writer killed mid-file. What must hold each time: every complete file in
done exactly once and byte for byte what FlowFlex received; no event ever for a
partial or paused file; a killed writer's partial PDF fails as INCOMPLETE_FILE.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from support import RunningDaemon, files_in, nothing_sent, read_report, wait_until

from field.conftest import Site
from field.writers import Writer
from flowflexd.emulator import Emulator

SETTLE = 1.0
PAUSE = 2.5 * SETTLE  # how long a paused writer stays paused: well past settling
RULES = [{"name": "scan", "pattern": "*.pdf", "event": "scan.received", "incomplete_timeout": 2}]


def config(site: Site, emulator: Emulator) -> Path:
    return site.config(emulator, RULES, settle_seconds=SETTLE)


def make_pdf(folder: Path, name: str, size: int) -> Path:
    """A file of ``size`` bytes that starts and ends like a PDF (random in between)."""
    path = folder / name
    path.write_bytes(b"%PDF-1.7\n" + os.urandom(size - 16) + b"\n%%EOF\n")
    path.chmod(0o644)
    return path


def inbox_bytes(inbox: Path) -> int:
    """Bytes written so far into the inbox's files, temporary names included.

    Counted by allocated blocks, not sizes: a Windows copy sets the full size first.
    """
    total = 0
    for entry in os.scandir(inbox):
        if entry.is_file(follow_symlinks=False):
            info = entry.stat(follow_symlinks=False)
            total += min(info.st_size, info.st_blocks * 512)
    return total


def assert_delivered(site: Site, emulator: Emulator, expected: dict[str, bytes]) -> None:
    """Each file in done once, as sent, and FlowFlex holds exactly those bytes, once each."""
    assert files_in(site.done) == set(expected)
    events = emulator.events()
    assert len(events) == len(expected)
    received: dict[str, bytes] = {}
    for event in events:
        [(asset_id, info)] = event["assets"].items()
        assert info["filename"] not in received, f"{info['filename']} was sent twice"
        received[info["filename"]] = (emulator.data_dir / "assets" / f"{asset_id}.bin").read_bytes()
    for name, data in expected.items():
        assert (site.done / name).read_bytes() == data, name
        assert received[name] == data, name


def test_a_batch_of_small_files(site: Site, emulator: Emulator, writer: Writer) -> None:
    batch = site.scratch / "batch"
    batch.mkdir()
    batch.chmod(0o755)
    srcs = [make_pdf(batch, f"small-{i:02}.pdf", 20_000 + 997 * i) for i in range(20)]
    with RunningDaemon(config(site, emulator)):
        writer.upload_many(srcs)
        wait_until(lambda: len(files_in(site.done)) == 20, timeout=60)

    assert_delivered(site, emulator, {s.name: s.read_bytes() for s in srcs})


def test_big_files_throttled_past_settling(site: Site, emulator: Emulator, writer: Writer) -> None:
    srcs = [make_pdf(site.scratch, f"big-{i}.pdf", 20_000_000) for i in range(2)]
    rate = 8_000_000  # 2.5 s each: longer than settle_seconds
    with RunningDaemon(config(site, emulator)):
        transfers = [writer.upload(src, src.name, rate=rate) for src in srcs]
        for transfer in transfers:
            transfer.wait()
        wait_until(lambda: len(files_in(site.done)) == 2, timeout=60)

    assert_delivered(site, emulator, {s.name: s.read_bytes() for s in srcs})


def test_a_writer_paused_mid_file(site: Site, emulator: Emulator, writer: Writer) -> None:
    src = make_pdf(site.scratch, "paused.pdf", 4_000_000)
    with RunningDaemon(config(site, emulator)) as running:
        transfer = writer.upload(src, "paused.pdf", rate=2_000_000)
        wait_until(lambda: inbox_bytes(site.inbox) >= 1_000_000, what="a first part written")
        transfer.pause()
        if writer.leaves_partial:
            # Under its final name the paused file settles; the daemon must see
            # that it is not whole (it is still open for writing) and wait.
            wait_until(
                lambda: running.daemon.snapshot.incomplete == 1,
                timeout=30,
                what="the paused file judged not whole",
            )
        else:
            time.sleep(PAUSE)  # a temporary name: the stall itself, longer than settling
        assert inbox_bytes(site.inbox) < src.stat().st_size, "paused after the last byte"
        nothing_sent(emulator)
        assert files_in(site.done) == set()
        transfer.resume()
        transfer.wait()
        wait_until(lambda: "paused.pdf" in files_in(site.done), timeout=60)

    assert_delivered(site, emulator, {"paused.pdf": src.read_bytes()})


def test_a_writer_killed_mid_file(site: Site, emulator: Emulator, writer: Writer) -> None:
    src = make_pdf(site.scratch, "killed.pdf", 4_000_000)
    with RunningDaemon(config(site, emulator)):
        transfer = writer.upload(src, "killed.pdf", rate=2_000_000)
        wait_until(lambda: inbox_bytes(site.inbox) >= 1_000_000, what="a first part written")
        transfer.kill()
        if writer.leaves_partial:
            wait_until(lambda: "killed.pdf.error.json" in files_in(site.failed), timeout=60)
        else:
            # The server drops its temporary file: nothing ever reaches the inbox's name.
            wait_until(lambda: inbox_bytes(site.inbox) == 0, timeout=60)

    nothing_sent(emulator)
    assert files_in(site.done) == set()
    if writer.leaves_partial:
        report = read_report(site.failed, "killed.pdf")
        assert report["code"] == "INCOMPLETE_FILE"
        # Cut short: a PDF without its trailer, or (a Windows copy) an end never written.
        assert "%%EOF" in report["reason"] or "never written" in report["reason"]
        kept, whole = (site.failed / "killed.pdf").read_bytes(), src.read_bytes()
        assert kept != whole
        assert whole.startswith(kept[:1_000_000])  # the prefix, kept for someone to look at
