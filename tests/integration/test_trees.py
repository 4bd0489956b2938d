"""Inboxes that are trees: a folder per user or device, trees moved in whole, depth limits,
folders never entered, and files that remember where they came from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import (
    PDF_END,
    Folders,
    RunningDaemon,
    child_env,
    drop,
    files_below,
    files_in,
    flowflexd_argv,
    folder_spec,
    read_report,
    wait_until,
    write_config,
)

from flowflexd.commands import views
from flowflexd.commands.replay import replay_one
from flowflexd.config.model import load
from flowflexd.emulator import Emulator

PDF = {"name": "pdf", "pattern": "*.pdf", "event": "scan.received"}


def tree_config(
    tmp_path: Path, emulator: Emulator, rules: list[dict[str, Any]] | None = None, **folder: Any
) -> Path:
    spec = {**folder_spec(tmp_path, rules or [PDF]), "recursive": True, **folder}
    return write_config(tmp_path / "config.yaml", emulator, folders=[spec], rescan_seconds=600)


def sent_paths(emulator: Emulator) -> list[str]:
    return sorted(str(e["payload"].get("path")) for e in emulator.events())


def test_a_new_user_folder_is_taken_from_and_the_file_knows_its_place(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    rule = {
        **PDF,
        "payload": {"assetId": "{file}", "user": "{dir[0]}", "folder": "{dir}", "path": "{path}"},
    }
    config = tree_config(tmp_path, emulator, [rule], done=str(tmp_path / "done" / "{dir}"))
    with RunningDaemon(config):
        (layout.inbox / "alice" / "2026").mkdir(parents=True)  # made while running
        drop(layout.inbox / "alice" / "2026", "scan.pdf", b"%PDF alice" + PDF_END)
        wait_until(lambda: files_below(layout.done) == {"alice/2026/scan.pdf"})

    [event] = emulator.events()
    assert {k: event["payload"][k] for k in ("user", "folder", "path")} == {
        "user": "alice",
        "folder": "alice/2026",
        "path": "alice/2026/scan.pdf",
    }
    assert (layout.inbox / "alice" / "2026").is_dir()  # emptied folders stay for the scanner


def test_a_whole_tree_moved_in_at_once_goes_without_waiting_for_a_rescan(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    staging = tmp_path / "staging" / "export"
    count = 0
    for a in range(4):
        for b in range(5):
            folder = staging / f"company-{a}" / f"2026-{b:02}"
            folder.mkdir(parents=True)
            for c in range(10):
                (folder / f"doc-{c}.pdf").write_bytes(f"%PDF {a} {b} {c}".encode() + PDF_END)
                count += 1
    rule = {**PDF, "payload": {"assetId": "{file}", "path": "{path}"}}
    with RunningDaemon(tree_config(tmp_path, emulator, [rule])):
        staging.rename(layout.inbox / "export")  # one mv; rescans are 10 minutes apart
        wait_until(lambda: len(emulator.events()) == count, timeout=60)

    assert count == 200
    assert len(set(sent_paths(emulator))) == 200
    assert all(p.startswith("export/company-") for p in sent_paths(emulator))
    assert files_below(layout.inbox) == set()


def test_max_depth_limits_how_deep_files_are_taken_from(tmp_path: Path, emulator: Emulator) -> None:
    layout = Folders(tmp_path)
    (layout.inbox / "a" / "b").mkdir(parents=True)
    drop(layout.inbox / "a", "one-level.pdf", b"%PDF 1" + PDF_END)
    drop(layout.inbox / "a" / "b", "two-levels.pdf", b"%PDF 2" + PDF_END)
    with RunningDaemon(tree_config(tmp_path, emulator, max_depth=1)):
        wait_until(lambda: files_in(layout.done) == {"one-level.pdf"})
        drop(layout.inbox / "a" / "b", "later.pdf", b"%PDF 3" + PDF_END)
        drop(layout.inbox, "top.pdf", b"%PDF 0" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"one-level.pdf", "top.pdf"})

    assert files_below(layout.inbox / "a") == {"b/two-levels.pdf", "b/later.pdf"}
    assert len(emulator.events()) == 2


def test_own_junk_hidden_and_linked_folders_are_never_entered(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    drop(outside, "secret.pdf", b"%PDF not for flowflexd" + PDF_END)
    (layout.inbox / "linked").symlink_to(outside, target_is_directory=True)
    untouched = {}
    for junk in ("@eaDir", "#recycle", ".snapshot", "$RECYCLE.BIN", ".hidden"):
        (layout.inbox / junk).mkdir()
        drop(layout.inbox / junk, "thumb.pdf", b"%PDF junk" + PDF_END)
        untouched[f"{junk}/thumb.pdf"] = True
    done_inside = layout.inbox / "done"
    config = tree_config(tmp_path, emulator, done=str(done_inside))
    with RunningDaemon(config):
        (layout.inbox / "bob").mkdir()
        drop(layout.inbox / "bob", "real.pdf", b"%PDF bob" + PDF_END)
        wait_until(lambda: files_in(done_inside) == {"real.pdf"})
        drop(layout.inbox / "bob", "second.pdf", b"%PDF bob 2" + PDF_END)
        wait_until(lambda: files_in(done_inside) == {"real.pdf", "second.pdf"})

    assert len(emulator.events()) == 2  # the done folder inside the inbox was not taken from
    assert files_in(outside) == {"secret.pdf"}
    assert (layout.inbox / "linked").is_symlink()  # left where it was, not followed
    for junk in untouched:
        assert (layout.inbox / junk).is_file(), junk


def test_a_sidecar_pairs_in_the_files_own_folder(tmp_path: Path, emulator: Emulator) -> None:
    layout = Folders(tmp_path)
    rule = {**PDF, "sidecar": "{stem}.json", "payload": {"assetId": "{file}", "n": "{sidecar.n}"}}
    for who, n in (("ann", 1), ("ben", 2)):
        (layout.inbox / who).mkdir()
        drop(layout.inbox / who, "INV.json", f'{{"n": {n}}}'.encode())
        drop(layout.inbox / who, "INV.pdf", f"%PDF {who}".encode() + PDF_END)
    with RunningDaemon(tree_config(tmp_path, emulator, [rule])):
        wait_until(lambda: len(files_in(layout.done)) == 4)

    assert sorted(e["payload"]["n"] for e in emulator.events()) == [1, 2]
    # Same names from two folders in one flat done folder: the second carries its claim's id.
    names = files_in(layout.done)
    assert {"INV.pdf", "INV.json"} <= names
    assert len([n for n in names if n.startswith("INV (")]) == 2


def test_a_failed_file_from_a_subfolder_is_replayed_back_into_it(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    rules = [PDF, {"name": "any", "pattern": "*", "event": "other"}]
    config = tree_config(tmp_path, emulator, rules)
    (layout.inbox / "carol").mkdir()
    with RunningDaemon(config):
        drop(layout.inbox / "carol", "bad.exe", b"MZ")
        wait_until(lambda: "bad.exe.error.json" in files_in(layout.failed))
    assert read_report(layout.failed, "bad.exe")["dir"] == "carol"
    os.rmdir(layout.inbox / "carol")  # even when the folder is gone meanwhile

    replay_one(load(config), layout.failed / "bad.exe")

    assert files_in(layout.inbox / "carol") == {"bad.exe"}


def test_a_reload_that_turns_recursive_on_takes_what_waits_in_subfolders(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    (layout.inbox / "dave").mkdir()
    drop(layout.inbox / "dave", "waiting.pdf", b"%PDF dave" + PDF_END)
    flat = layout.config(emulator, [PDF])
    deep = tmp_path / "deep.yaml"
    spec = yaml.safe_load(flat.read_text())
    spec["folders"][0]["recursive"] = True
    deep.write_text(yaml.safe_dump(spec))
    deep.chmod(0o600)
    with RunningDaemon(flat, reload_config=lambda: load(deep)) as running:
        drop(layout.inbox, "top.pdf", b"%PDF top" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"top.pdf"})
        assert files_in(layout.inbox / "dave") == {"waiting.pdf"}  # not taken while flat
        running.daemon.request_reload()
        wait_until(lambda: files_in(layout.done) == {"top.pdf", "waiting.pdf"})


def test_a_reload_that_deepens_max_depth_watches_the_folders_it_now_takes_from(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    (layout.inbox / "a" / "b").mkdir(parents=True)  # depth 2: not watched with max_depth 1
    shallow = tree_config(tmp_path, emulator, max_depth=1)
    deeper = tmp_path / "deeper.yaml"
    spec = yaml.safe_load(shallow.read_text())
    spec["folders"][0]["max_depth"] = 3
    deeper.write_text(yaml.safe_dump(spec))
    deeper.chmod(0o600)
    with RunningDaemon(shallow, reload_config=lambda: load(deeper)) as running:
        running.daemon.request_reload()
        wait_until(lambda: running.daemon.config.folders[0].max_depth == 3)
        # Past the reload's own look at the tree: a file at the top goes through.
        drop(layout.inbox, "after-reload.pdf", b"%PDF top" + PDF_END)
        wait_until(lambda: files_in(layout.done) == {"after-reload.pdf"})
        # Only a watch on a/b can tell of this one; rescans are 10 minutes apart.
        (layout.inbox / "a" / "b" / "c").mkdir()
        drop(layout.inbox / "a" / "b" / "c", "deep.pdf", b"%PDF deep" + PDF_END)
        wait_until(lambda: "deep.pdf" in files_in(layout.done))


@pytest.mark.parametrize("recursive", [True, False])
def test_status_counts_what_waits_where_files_are_taken_from(
    tmp_path: Path, emulator: Emulator, recursive: bool
) -> None:
    layout = Folders(tmp_path)
    (layout.inbox / "eve").mkdir()
    drop(layout.inbox / "eve", "a.pdf", b"%PDF a" + PDF_END)
    drop(layout.inbox, "b.pdf", b"%PDF b" + PDF_END)
    spec = {**folder_spec(tmp_path, [PDF]), "recursive": recursive}
    config = write_config(tmp_path / "config.yaml", emulator, folders=[spec])

    [row] = views.status(load(config))

    assert row.waiting == (2 if recursive else 1)


def test_explain_takes_a_path_below_the_inbox_and_shows_its_place(
    tmp_path: Path, emulator: Emulator
) -> None:
    rule = {**PDF, "payload": {"assetId": "{file}", "user": "{dir[0]}", "path": "{path}"}}
    config = tree_config(tmp_path, emulator, [rule])
    layout_inbox = tmp_path / "inbox"
    (layout_inbox / "fay").mkdir(parents=True)
    drop(layout_inbox / "fay", "x.pdf", b"%PDF fay" + PDF_END)
    loaded = load(config)

    folder = views.folder_for(loaded, layout_inbox / "fay" / "x.pdf")
    assert folder is not None
    text = "\n".join(views.explain(folder, layout_inbox / "fay" / "x.pdf"))

    assert '"user": "fay"' in text
    assert '"path": "fay/x.pdf"' in text


def test_a_path_pattern_takes_only_files_below_its_folders(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    rules = [
        {**PDF, "name": "invoices", "path_pattern": "invoices/**", "event": "invoice"},
        {**PDF, "name": "rest", "event": "other"},
    ]
    for where in ("invoices/2026", "letters"):
        (layout.inbox / where).mkdir(parents=True)
        drop(layout.inbox / where, "doc.pdf", f"%PDF {where}".encode() + PDF_END)
    with RunningDaemon(tree_config(tmp_path, emulator, rules)):
        wait_until(lambda: len(emulator.events()) == 2)

    by_event = {e["event"]: e for e in emulator.events()}
    assert set(by_event) == {"invoice", "other"}
    assert next(iter(by_event["invoice"]["assets"].values()))["filename"] == "doc.pdf"


def test_status_by_folder_counts_what_waits_in_each_subfolder(
    tmp_path: Path, emulator: Emulator
) -> None:
    for where, count in (("gil", 2), ("hal/scans", 1)):
        (tmp_path / "inbox" / where).mkdir(parents=True)
        for i in range(count):
            drop(tmp_path / "inbox" / where, f"w{i}.pdf", b"%PDF w" + PDF_END)
    drop(tmp_path / "inbox", "top.pdf", b"%PDF top" + PDF_END)
    config = tree_config(tmp_path, emulator)

    [row] = views.status(load(config))
    done = subprocess.run(
        flowflexd_argv("status", "-c", str(config), "--by-folder"),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )

    assert row.by_folder == {"": 1, "gil": 2, "hal/scans": 1}
    assert done.returncode == 0, done.stderr
    assert "waiting in" in done.stdout
    assert "2  gil" in done.stdout and "1  hal/scans" in done.stdout
    assert "1  (the inbox itself)" in done.stdout


def test_the_same_name_twice_in_a_nested_done_folder_keeps_both(
    tmp_path: Path, emulator: Emulator
) -> None:
    layout = Folders(tmp_path)
    (layout.inbox / "ivy").mkdir()
    config = tree_config(tmp_path, emulator, done=str(tmp_path / "done" / "{dir}"))
    with RunningDaemon(config):
        drop(layout.inbox / "ivy", "same.pdf", b"%PDF first" + PDF_END)
        wait_until(lambda: files_in(tmp_path / "done" / "ivy") == {"same.pdf"})
        drop(layout.inbox / "ivy", "same.pdf", b"%PDF second" + PDF_END)
        wait_until(lambda: len(files_in(tmp_path / "done" / "ivy")) == 2)

    names = sorted(files_in(tmp_path / "done" / "ivy"))
    assert names[0].startswith("same (") and names[1] == "same.pdf"
    bodies = {(tmp_path / "done" / "ivy" / n).read_bytes() for n in names}
    assert bodies == {b"%PDF first" + PDF_END, b"%PDF second" + PDF_END}
