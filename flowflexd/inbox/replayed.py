"""A replayed manifest's rows that were sent before: known by their report, used once.

``flowflexd replay`` moves a failed batch back into its inbox and its report
into ``failed/replayed/``. That report says which rows FlowFlex accepted.
When the manifest is claimed again, those rows (known by what they say, so
a manifest fixed row by row still matches) are marked sent in the new claim
and not sent again; the report is then renamed ``.used`` so that a later
manifest of the same name starts afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from typing import Any

from flowflexd.inbox.layout import REPLAYED_DIR, REPORT_SUFFIX
from flowflexd.inbox.spool import Claim, Spool
from flowflexd.rules.metadata import row_digest

USED_SUFFIX = ".used"
MAX_REPORT_BYTES = 64 * 1024 * 1024


def _sent_rows(path: str, claim: Claim) -> list[dict[str, Any]] | None:
    """The rows a report says were sent, if it is the report of this manifest."""
    try:
        if os.lstat(path).st_size > MAX_REPORT_BYTES:
            return None
        with open(path, "rb") as fh:
            report = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        return None
    members = report.get("members")
    if not isinstance(members, dict) or members.get("file") != claim.name:
        return None
    if (report.get("dir") or "") != claim.below or report.get("folder", claim.inbox) != claim.inbox:
        return None
    return [r for r in report["rows"] if isinstance(r, dict) and r.get("sent") is True]


def sent_before(spool: Spool, claim: Claim, rows: list[tuple[int, dict[str, Any]]]) -> bool:
    """Mark in ``claim`` the rows its replayed report says were sent; True when there were any.

    The newest matching report counts. The claim is saved before the report is
    renamed, so a crash between the two leaves the rows marked and the report
    merely unused.
    """
    replayed = spool.folder.failed / REPLAYED_DIR
    try:
        entries = [e for e in os.scandir(replayed) if e.name.endswith(REPORT_SUFFIX)]
    except OSError:
        return False
    entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime, reverse=True)
    for entry in entries:
        sent = _sent_rows(entry.path, claim)
        if not sent:
            continue
        left = Counter(str(r.get("digest")) for r in sent)
        by_digest = {str(r.get("digest")): r for r in sent}
        for number, row in rows:
            digest = row_digest(row)
            if left[digest] > 0:
                left[digest] -= 1
                before = by_digest[digest]
                claim.rows[str(number)] = {
                    "key": before.get("idempotency_key"),
                    "digest": digest,
                    "file": before.get("file"),
                    "event": before.get("event"),
                    "asset_id": before.get("asset_id"),
                    "answer": before.get("answer"),
                    "sent_before": True,
                }
        if not claim.rows:
            continue
        spool.save(claim)
        with contextlib.suppress(OSError):
            os.rename(entry.path, entry.path + USED_SUFFIX)
        return True
    return False
