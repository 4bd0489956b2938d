"""One file's journey: claim -> sidecar -> upload -> send -> done or failed.

Each stage is a method; ``carry`` resumes a claim wherever it stopped, so a
restart after a crash continues with the same idempotency key. An upload
older than ``REUPLOAD_AFTER`` (a safe margin under FlowFlex's 48 h asset
lifetime) is redone before the event is fired again; otherwise a retry sends
the identical body.

What is sent is what was read: each member's size, mtime and ctime are noted
when it is read, and checked again (with a probe for writers) after the
uploads and before the event fires. A member that changed makes the claim
settle again and upload again under the same idempotency key; one that
changed after its event is reported in failed, never kept silently.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import structlog

from flowflexd.client import FileRef, FlowFlex
from flowflexd.client.filetypes import MAX_FILE_BYTES, mime_for_name
from flowflexd.client.sdk import AnswerExcerpt
from flowflexd.config.model import DEFAULT_DESTINATION
from flowflexd.engine.groupcommit import GroupCommit
from flowflexd.engine.journal import Journal
from flowflexd.engine.limits import Limits
from flowflexd.engine.outcomes import Code, Decision, Verdict, classify
from flowflexd.engine.prefetch import Prefetched, UrlCache
from flowflexd.errors import FileChanged, FileRejected, FlowFlexError, FlowFlexUploadError
from flowflexd.inbox.completeness import Writers, probe_writers
from flowflexd.inbox.layout import split_path
from flowflexd.inbox.reading import content_signature, read_manifest, read_named
from flowflexd.inbox.replayed import sent_before
from flowflexd.inbox.spool import SIDECAR_MAX_BYTES, Claim, FolderUnavailable, Spool
from flowflexd.rules.matching import (
    Match,
    Rule,
    document_name,
    event_name,
    match,
    payload,
    read_sidecar,
)
from flowflexd.rules.metadata import row_digest
from flowflexd.rules.sanitize import asset_name
from flowflexd.rules.templates import MISSING
from flowflexd.support import crashpoints
from flowflexd.support.hashing import HashingReader

log = structlog.get_logger("flowflexd.engine.pipeline")

REUPLOAD_AFTER = 24 * 3600.0


@dataclass
class Outcome:
    """How one attempt at a file ended, and the claim to carry on with (None: not claimed)."""

    verdict: Verdict
    claim: Claim | None = None
    reason: str = ""
    code: str = ""


class Pipeline:
    def __init__(
        self,
        clients: Mapping[str, FlowFlex] | FlowFlex,
        journal: Journal,
        *,
        settle_seconds: float = 2.0,
        limits: dict[str, Limits] | None = None,
    ) -> None:
        # One client per destination (a single one is the default destination's).
        self.clients = (
            {DEFAULT_DESTINATION: clients} if isinstance(clients, FlowFlex) else dict(clients)
        )
        self.limits = limits if limits is not None else {}  # the daemon's, shared
        self.journal = journal
        self.commits = GroupCommit(journal)
        self.settle_seconds = settle_seconds
        self.urls = UrlCache()
        self.timed: Callable[[str, float], None] = lambda call, seconds: None  # for metrics

    def _client(self, destination: str) -> FlowFlex:
        client = self.clients.get(destination)
        if client is None:
            raise FileRejected(
                f"it was claimed for destination {destination!r}, which is no longer configured; "
                "add it back (or replay the file to send it where its folder sends now)",
                code=Code.UNKNOWN_DESTINATION,
            )
        return client

    def _limit(self, destination: str) -> Limits:
        limits = self.limits.get(destination)
        if limits is None:  # no limits configured: still held by a 429
            limits = self.limits[destination] = Limits.of(destination, events=None, uploads=None)
        return limits

    def prefetch(self, spool: Spool, name: str, inode: int) -> None:
        """Ask for the upload URL of a file that is still settling (see prefetch.py)."""
        filename = asset_name(os.path.basename(name))  # name may be below a subfolder
        mime = mime_for_name(filename)
        found = match(spool.folder.rules, *reversed(split_path(name)))
        if mime is None or found is None:
            return  # refused at claim time anyway
        client = self.clients.get(spool.folder.destination_of(found.rule.name))
        if client is None:
            return
        try:
            info = client.create_upload_url(filename=filename, mime=mime)
        except FlowFlexError as err:
            log.debug("prefetching an upload URL failed", file=name, error=err.message)
            return
        if (
            isinstance(info, dict)
            and isinstance(info.get("assetId"), str)
            and isinstance(info.get("uploadUrl"), str)
        ):
            key = (str(spool.inbox), name, inode)
            self.urls.put(key, Prefetched(info["assetId"], info["uploadUrl"], time.monotonic()))

    # ------------------------------------------------------------- entry points

    def take(
        self,
        spool: Spool,
        members: dict[str, str],
        *,
        rule: str,
        expect: tuple[int, int, int, int] | None,
        reject: Decision | None = None,
        probed: bool = False,
    ) -> Outcome:
        try:
            claim = spool.claim(
                members,
                rule=rule,
                expect=expect,
                reject=reject,
                probed=probed,
                destination=spool.folder.destination_of(rule),
            )
        except (OSError, FolderUnavailable) as err:
            return Outcome(
                Verdict.RETRY_LOCAL, reason=f"cannot claim: {err}", code=Code.CLAIM_FAILED
            )
        if claim is None:
            return Outcome(Verdict.GONE)
        log.info(
            "file claimed",
            folder=str(spool.inbox),
            file=claim.name,
            rule=claim.rule or None,
            idempotency_key=claim.key,
            companions=[n for r, n in claim.members.items() if r != "file"] or None,
        )
        return self.carry(spool, claim)

    def carry(self, spool: Spool, claim: Claim) -> Outcome:
        """Take a claim as far as it goes: to done, to failed, or back to wait."""
        started = time.monotonic()
        claim.attempts += 1
        try:
            return self._attempt(spool, claim, started)
        except Exception as err:  # whatever it is, classify() says what it means
            decision, error = classify(err), err
        if decision.verdict is Verdict.FAILED:
            try:
                return self._fail(spool, claim, decision)
            except Exception as err:  # the move to failed itself failed
                decision, error = classify(err), err
        return self._not_now(spool, claim, decision, error)

    def _attempt(self, spool: Spool, claim: Claim, started: float) -> Outcome:
        if claim.answer is None:
            if claim.reject and claim.reject.get("code") == Code.FOLDER_MARKER:
                claim.answer = {"folder_marker": "its batch is finished"}  # nothing to send
                return self._done(spool, claim, started)
            if claim.reject:
                raise Decision.from_record(claim.reject).rejection()
            # present() raises when the whole inbox is away: wait for it, decide nothing.
            present = claim.present()
            if "file" not in present:
                raise FileRejected(
                    f"the claimed file was removed from the work area ({claim.dir}) before it "
                    "was sent; its companions are set aside",
                    code=Code.FILE_GONE,
                )
            waiting = self._send(spool, claim, present)
            if waiting is not None:
                return Outcome(waiting.verdict, claim, waiting.reason, waiting.code)
        return self._done(spool, claim, started)

    def _not_now(
        self, spool: Spool, claim: Claim, decision: Decision, error: BaseException
    ) -> Outcome:
        """The claim stays and is carried again later; say why, and keep its progress."""
        logger = self._log(spool, claim)
        if decision.verdict is Verdict.SETTLE_AGAIN:
            claim.changes += 1
            claim.uploads = {}
            claim.seen = {}
            logger.warning(
                "a file changed before its event was fired; nothing was fired, and it is "
                "uploaded again under the same idempotency key once it has settled",
                reason=decision.reason,
            )
        elif decision.verdict is Verdict.THROTTLED:
            logger.info(
                "FlowFlex asks us to slow down; the file stays claimed and is sent again shortly",
                status=decision.status,
            )
        elif decision.verdict is Verdict.RETRY_REMOTE:
            logger.warning(
                "FlowFlex call failed; the file stays claimed and is retried",
                error=decision.reason,
                status=decision.status,
            )
        elif decision.code == Code.FILESYSTEM:
            logger.warning(
                "cannot finish this file now; it stays claimed and is retried",
                error=decision.reason,
                errno=errno.errorcode.get(getattr(error, "errno", 0) or 0),
            )
        elif decision.code == Code.INTERNAL:
            logger.error("unexpected error; the file stays claimed and is retried", exc_info=error)
            return Outcome(decision.verdict, claim, decision.reason, decision.code)
        self._save_quietly(spool, claim)
        return Outcome(decision.verdict, claim, decision.reason, decision.code)

    # ------------------------------------------------------------------- stages

    @staticmethod
    def _log(spool: Spool, claim: Claim) -> Any:
        """A logger carrying everything known about this file at this moment."""
        context: dict[str, Any] = {
            "folder": str(spool.inbox),
            "destination": claim.destination,
            "file": claim.name,
            "rule": claim.rule or None,
            "idempotency_key": claim.key,
            "attempt": claim.attempts,
        }
        if claim.event:
            context["event_name"] = claim.event
        if claim.rows or len(claim.uploads) > MANY_ASSETS:
            context["rows_done"] = len(claim.rows)  # a manifest: its rows are in the journal
        elif claim.uploads:
            context["asset_ids"] = {r: u["asset_id"] for r, u in claim.uploads.items()}
        return log.bind(**context)

    def _rule(self, spool: Spool, claim: Claim) -> Match:
        rules: dict[str, Rule] = {r.name: r for r in spool.folder.rules}
        rule = rules.get(claim.rule)
        if rule is not None:
            found = rule.matcher.search(claim.name) if rule.regex else None
            groups = found.groupdict() if found else {}
            return Match(rule, claim.name, groups, dir=claim.below, claimed_at=claim.claimed_at)
        found_now = match(spool.folder.rules, claim.name, claim.below)
        if found_now is None:
            raise FileRejected(
                "no rule takes this file any more (the configuration changed)", code=Code.UNMATCHED
            )
        return dataclasses.replace(found_now, dir=claim.below, claimed_at=claim.claimed_at)

    def _sidecar(self, spool: Spool, claim: Claim, found: Match, present: dict[str, str]) -> Any:
        if found.rule.sidecar is None:
            return MISSING
        if "sidecar" not in present:
            if found.rule.sidecar_required:
                raise FileRejected("the sidecar is gone", code=Code.SIDECAR_MISSING)
            return MISSING
        name = claim.members["sidecar"]
        raw, info = read_named(
            claim.path("sidecar"),
            limit=SIDECAR_MAX_BYTES,
            what=f"sidecar {name}",
            too_large=Code.SIDECAR_TOO_LARGE,
        )
        claim.seen["sidecar"] = content_signature(info)
        return read_sidecar(found.rule, raw, name)

    def _send(self, spool: Spool, claim: Claim, present: dict[str, str]) -> Decision | None:
        """Upload and fire; a Decision when the claim must wait (it has not settled again).

        ``present``: the members in the claim folder, as the caller just found them.
        """
        if claim.changes:
            unsettled = self._still_changing(spool, claim)
            if unsettled:
                return Decision(Verdict.SETTLE_AGAIN, Code.FILE_CHANGED, unsettled)
        found = self._rule(spool, claim)
        spool.destination(claim, failed=False)  # where it will go, known before anything is sent
        if found.rule.manifest:
            self._send_rows(spool, claim, found, present)
            return None
        missing = [
            role for role in claim.members if role.startswith("attach.") and role not in present
        ]
        if missing:
            raise FileRejected(f"{', '.join(missing)} is gone", code=Code.ATTACHMENT_MISSING)
        sidecar = self._sidecar(spool, claim, found, present)
        event = claim.event = event_name(found, sidecar=sidecar)
        roles = ["file", *(r for r in claim.members if r.startswith("attach."))]
        # Render once with stand-ins, so a bad template fails before any upload.
        payload(found, sidecar=sidecar, assets={role: f"<{role}>" for role in roles})

        def upload() -> dict[str, str]:
            assets, checked = self._upload(spool, claim, roles)
            self._unchanged(spool, claim, skip=checked)
            return assets

        def forget() -> None:
            claim.uploads = {}  # all of them: their assetIds go together

        answer = self._upload_and_fire(
            spool,
            claim,
            event,
            claim.key,
            upload=upload,
            body=lambda assets: payload(found, sidecar=sidecar, assets=assets),
            forget=forget,
        )
        # The answer is made durable by the journal record that follows; a
        # restart before it resends under the same key, answered as before.
        claim.answer = keepable(answer)
        claim.sent_at = time.time()
        crashpoints.reached("after_send")
        self._log(spool, claim).debug("event sent")
        return None

    def _upload_and_fire(
        self,
        spool: Spool,
        claim: Claim,
        event: str,
        key: str,
        *,
        upload: Callable[[], dict[str, str]],
        body: Callable[[dict[str, str]], Any],
        forget: Callable[[], object],
    ) -> Any:
        """Upload, fire, and return FlowFlex's answer, a JSON object.

        When FlowFlex lost the upload (``ASSET_FILE_MISSING``) the uploads are
        forgotten and done once more. An answer that is not a JSON object is
        raised as retryable: the SDK hands such an answer back as it came, and a
        daemon that promises delivery cannot call an HTML page or broken JSON
        an accepted event, so it asks again under the same key.
        """
        for round_ in (1, 2):
            assets = upload()
            try:
                answer = self._fire(claim, event, body(assets), key)
            except FlowFlexError as err:
                if err.code == "ASSET_FILE_MISSING" and round_ == 1:
                    self._log(spool, claim).warning(
                        "FlowFlex lost the uploaded file; uploading it again"
                    )
                    forget()
                    continue
                raise
            if not isinstance(answer, dict | AnswerExcerpt):
                raise FlowFlexError(
                    f"FlowFlex answered event {event!r} with {_describe(answer)}, not a JSON "
                    "object; it is sent again under the same idempotency key",
                    code=Code.UNEXPECTED_ANSWER,
                    retryable=True,
                )
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------- manifests

    @staticmethod
    def _claimed_rows(claim: Claim, found: Match) -> list[tuple[int, dict[str, Any]]]:
        """The rows of the manifest as claimed (what is sent is what is read now)."""
        rows, info = read_manifest(found.rule, claim.path("file"), claim.name)
        claim.seen["file"] = content_signature(info)
        return rows

    def _send_rows(self, spool: Spool, claim: Claim, found: Match, present: dict[str, str]) -> None:
        """One event per row, each under its own key, each durable in the claim once answered.

        A row FlowFlex refuses for good is noted and the others go on; a
        transient error leaves the claim to be carried again, and rows already
        answered are not sent again. Ends with every row sent, or raises
        MANIFEST_ROWS_FAILED naming the refused rows.
        """
        rows = self._claimed_rows(claim, found)
        if not claim.rows and sent_before(spool, claim, rows):
            self._log(spool, claim).info(
                "a replayed manifest: rows sent before are not sent again",
                sent_before=len(claim.rows),
            )
        roles = {name: role for role, name in claim.members.items() if role != "file"}
        for number, row in rows:
            if str(number) in claim.rows:
                continue
            try:
                name = document_name(found, number, row)
                role = roles.get(name)
                if role is None or role not in present:
                    raise FileRejected(
                        f"{name} is not in the batch (it was not there when the manifest was "
                        "taken, or was removed from the work area)",
                        code=Code.MANIFEST_ROWS_BAD,
                    )
                answer, sent = self._send_row(spool, claim, found.for_row(number, row, name), role)
            except (FileRejected, FlowFlexError) as err:
                decision = classify(err)
                if decision.verdict is not Verdict.FAILED:
                    raise
                claim.rows[str(number)] = {
                    "key": row_key(claim, number),
                    "digest": row_digest(row),
                    "failed": decision.as_record(),
                }
            else:
                claim.rows[str(number)] = {
                    **sent,
                    "answer": keepable(answer),
                    "sent_at": time.time(),
                }
            spool.save_delta(claim, rows={str(number): claim.rows[str(number)]})
            crashpoints.reached("after_row")
        refused = sorted((int(n) for n, r in claim.rows.items() if "failed" in r))
        if refused:
            listed = ", ".join(map(str, refused[:MAX_ROWS_LISTED]))
            more = " ..." if len(refused) > MAX_ROWS_LISTED else ""
            first = claim.rows[str(refused[0])]["failed"]
            raise FileRejected(
                f"{len(refused)} of {len(rows)} rows were not sent (rows {listed}{more}; row "
                f"{refused[0]}: {first.get('code')}: {first.get('reason')}); the other "
                f"{len(rows) - len(refused)} were; the report lists each row, and replay "
                "sends only those not sent",
                code=Code.MANIFEST_ROWS_FAILED,
            )
        claim.answer = {"rows": len(rows), "sent": len(claim.rows)}
        claim.sent_at = time.time()

    def _send_row(
        self, spool: Spool, claim: Claim, found: Match, role: str
    ) -> tuple[Any, dict[str, Any]]:
        """Upload a row's document (once per document) and fire the row's event."""
        assert found.manifest
        number = int(found.manifest["row"])
        event = event_name(found)
        payload(found, assets={"file": "<file>"})  # a bad template fails before any upload
        key = row_key(claim, number)

        def upload() -> dict[str, str]:
            asset_id, checked = self._upload_role(spool, claim, role)
            self._unchanged(spool, claim, roles=("file", role), skip=checked)
            return {"file": asset_id}

        answer = self._upload_and_fire(
            spool,
            claim,
            event,
            key,
            upload=upload,
            body=lambda assets: payload(found, assets=assets),
            forget=lambda: claim.uploads.pop(role, None),
        )
        sent = {
            "key": key,
            "digest": row_digest(found.row),
            "file": found.name,
            "event": event,
            "asset_id": claim.uploads[role]["asset_id"],
        }
        return answer, sent

    def _fire(self, claim: Claim, event: str, body: Any, key: str) -> Any:
        client = self._client(claim.destination)
        self._limit(claim.destination).events.take()
        started = time.monotonic()
        answer = client.fire_event(event, body, key)
        self.timed("event", time.monotonic() - started)
        return answer

    def _upload_role(self, spool: Spool, claim: Claim, role: str) -> tuple[str, str]:
        """One member's assetId, and the member checked as its upload ended ("" for none).

        Uploaded now (and checked), or earlier in this claim and still fresh.
        """
        done = claim.uploads.get(role)
        if done is not None and time.time() - done["uploaded_at"] < REUPLOAD_AFTER:
            return str(done["asset_id"]), ""
        claim.uploads[role] = self._upload_one(spool, claim, role)
        spool.save_delta(claim, uploads={role: claim.uploads[role]}, seen={role: claim.seen[role]})
        crashpoints.reached("after_upload")
        return str(claim.uploads[role]["asset_id"]), role

    def _upload(self, spool: Spool, claim: Claim, roles: list[str]) -> tuple[dict[str, str], str]:
        """The members' assetIds, and the member checked as its upload ended ("" for none).

        Only the last member uploaded counts as checked: the others were read
        before it, so the check before the event looks at them again.
        """
        now = time.time()
        fresh = all(
            role in claim.uploads and now - claim.uploads[role]["uploaded_at"] < REUPLOAD_AFTER
            for role in roles
        )
        checked = ""
        if not fresh:
            uploads: dict[str, dict[str, Any]] = {}
            for role in roles:
                uploads[role] = self._upload_one(spool, claim, role)
            claim.uploads = uploads
            spool.save(claim)
            crashpoints.reached("after_upload")
            checked = roles[-1]
        return {role: claim.uploads[role]["asset_id"] for role in roles}, checked

    def _upload_one(self, spool: Spool, claim: Claim, role: str) -> dict[str, Any]:
        """Upload one member and check it on the same descriptor: unchanged, and nobody writes it.

        The check after the upload stands in for the one before the event
        (``_unchanged``) for this member: it looks at the same file a few
        milliseconds sooner, without opening it again.
        """
        fd, info = spool.open_member(claim, role, max_bytes=MAX_FILE_BYTES)
        try:
            reader = HashingReader(fd, info.st_size)
            ref = FileRef(
                cast(BinaryIO, reader), filename=asset_name(claim.members[role]), size=info.st_size
            )
            prefetched = self.urls.take((str(spool.inbox), claim.source(role), info.st_ino))
            client = self._client(claim.destination)
            self._limit(claim.destination).uploads.take()
            started = time.monotonic()
            asset_id = self._put_prefetched(client, ref, prefetched) if prefetched else None
            if asset_id is None:
                asset_id = client.upload_file(ref)
            self.timed("upload", time.monotonic() - started)
            digest = reader.digest()
            after = os.fstat(fd)
            writers = probe_writers(fd).writers
        finally:
            os.close(fd)
        name = claim.members[role]
        if content_signature(after) != content_signature(info):
            raise FileChanged(
                f"{name} changed while it was uploaded "
                f"({_difference(content_signature(info), after)})"
            )
        if writers is Writers.OPEN:
            raise FileChanged(f"{name} is open for writing by another process")
        claim.seen[role] = content_signature(info)
        return {
            "asset_id": asset_id,
            "uploaded_at": time.time(),
            "sha256": digest,
            "size": info.st_size,
        }

    def _unchanged(
        self, spool: Spool, claim: Claim, roles: tuple[str, ...] = (), skip: str = ""
    ) -> None:
        """Raise FileChanged when a member (of ``roles``, or any) differs from what was read.

        ``skip`` is a member checked just now, as its upload ended.
        """
        for role, was in claim.seen.items():
            if (roles and role not in roles) or role == skip:
                continue
            now = spool.member_now(claim, role)
            if now is None:
                continue  # a member gone from the work area is the claim's own trouble
            info, writers = now
            name = claim.members[role]
            if writers is Writers.OPEN:
                raise FileChanged(f"{name} is open for writing by another process")
            if content_signature(info) != was:
                raise FileChanged(f"{name} changed after it was read ({_difference(was, info)})")

    def _still_changing(self, spool: Spool, claim: Claim) -> str:
        """Why a claim that changed before has not settled again ("" once it has)."""
        for role, name in claim.members.items():
            now = spool.member_now(claim, role)  # None for a member not there
            if now is None:
                continue
            info, writers = now
            if writers is Writers.OPEN:
                return f"{name} is still open for writing by another process"
            age = time.time() - info.st_ctime
            if age < self.settle_seconds:
                return f"{name} changed {age:.1f} s ago; it settles again first"
        return ""

    def _changed_since_sent(self, spool: Spool, claim: Claim) -> str:
        """How a member now differs from what FlowFlex received ("" when none does).

        Size and mtime only: the move to done links the file, which sets ctime.
        """
        for role, was in claim.seen.items():
            try:
                info = os.lstat(claim.path(role))
            except FileNotFoundError:
                continue
            if [info.st_size, info.st_mtime_ns] != was[:2]:
                return f"{claim.members[role]} changed after its event ({_difference(was, info)})"
        return ""

    @staticmethod
    def _put_prefetched(client: FlowFlex, ref: FileRef, prefetched: Prefetched) -> str | None:
        """Upload to a prefetched URL; None when storage refuses it (then ask anew)."""
        client.check_file(ref)
        try:
            client.put_file(ref, prefetched.upload_url)
        except FlowFlexUploadError as err:
            if err.status is None or err.retryable:
                raise
            log.debug(
                "a prefetched upload URL was refused; asking for a new one", status=err.status
            )
            return None
        return prefetched.asset_id

    # ----------------------------------------------------------------- endings

    def _done(self, spool: Spool, claim: Claim, started: float) -> Outcome:
        changed = self._changed_since_sent(spool, claim)
        entry = self._entry(spool, claim, "done")
        if changed:
            entry["changed_after_event"] = changed
        else:
            entry["placed"] = self._placed(spool, claim)
        # Written now and fsynced by the group commit, or just below before a
        # changed file's move to failed: a claim stays until its record is durable.
        self._record(claim, entry, sync=False)
        crashpoints.reached("after_answer")
        if changed:
            # FlowFlex has the bytes it was sent; these differ. Set them aside
            # with the reason, so that someone decides (replay sends them anew).
            reason = (
                f"the event was fired, but {changed}: FlowFlex has the earlier content "
                f"(sha256 {entry['sha256']}); check the file and replay it to send it as "
                "a new event"
            )
            report = self._report(claim, Code.CHANGED_AFTER_EVENT, reason)
            self.journal.sync()
            moved = spool.finish(claim, report=report)
            self._log(spool, claim).error(
                "a file changed after its event was fired; set aside in failed with the reason",
                reason=changed,
                moved_to=moved["file"],
            )
            return Outcome(Verdict.DONE, claim)
        placed = spool.place(claim)
        self.commits.add(spool, placed)
        self._log(spool, claim).info(
            "file done",
            moved_to=placed.moved["file"],
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return Outcome(Verdict.DONE, claim)

    def _record(self, claim: Claim, entry: dict[str, Any], *, sync: bool = True) -> None:
        """Journal a claim's outcome once, however often its move has to be retried."""
        if not claim.recorded:
            (self.journal.record if sync else self.journal.write)(entry)
            claim.recorded = True

    @staticmethod
    def _report(claim: Claim, code: str, reason: str, status: int | None = None) -> dict[str, Any]:
        rows = {"rows": rows_report(claim)} if claim.rows else {}
        return {
            **rows,
            "file": claim.name,
            "reason": reason,
            "code": code,
            "status": status,
            "rule": claim.rule or None,
            "event": claim.event,
            "idempotency_key": claim.key,
            "attempts": claim.attempts,
            "time": _now_iso(),
            "members": claim.members,
            "dir": claim.below,
        }

    def _fail(self, spool: Spool, claim: Claim, failed: Decision) -> Outcome:
        code, reason, status = str(failed.code), failed.reason, failed.status
        report = self._report(claim, code, reason, status)
        if claim.reject is None:
            # Decided now, and durable before anything moves: a restart part-way
            # through the move must report this reason, not what it then finds.
            claim.reject = failed.as_record()
            spool.save(claim)
        entry = self._entry(spool, claim, "failed")
        self._record(claim, {**entry, "code": code, "reason": reason, "status": status})
        moved = spool.finish(claim, report=report)
        self._log(spool, claim).warning(
            "file failed", code=code, reason=reason, moved_to=moved["file"]
        )
        return Outcome(Verdict.FAILED, claim, reason, code)

    def _entry(self, spool: Spool, claim: Claim, outcome: str) -> dict[str, Any]:
        file_upload = claim.uploads.get("file", {})
        return {
            "time": _now_iso(),
            "outcome": outcome,
            "folder": str(spool.inbox),
            "file": claim.name,
            "dir": claim.below,
            "claim": claim.id,
            "sha256": file_upload.get("sha256"),
            "rule": claim.rule or None,
            "event": claim.event,
            "idempotency_key": claim.key,
            "asset_ids": {r: u["asset_id"] for r, u in claim.uploads.items()},
            "answer": claim.answer,
            "attempts": claim.attempts,
            **({"rows": rows_journalled(claim)} if claim.rows else {}),
        }

    @staticmethod
    def _placed(spool: Spool, claim: Claim) -> dict[str, Any] | None:
        """Where a claim's files go in done, and what they are: retention's proof they are ours."""
        try:
            folder = spool.destination(claim, failed=False)
        except FileRejected:
            return None
        seen = {claim.members[role]: sig[:2] for role, sig in claim.seen.items()}
        return {"folder": str(folder), "seen": seen}

    @staticmethod
    def _save_quietly(spool: Spool, claim: Claim) -> None:
        try:
            spool.save(claim)
        except OSError as err:
            log.warning("cannot save claim progress", file=claim.name, error=str(err))


ANSWER_KEPT = 4096  # characters of an answer kept in a claim and the journal
MAX_ROWS_LISTED = 20  # refused rows named in a reason; the report lists all
MANY_ASSETS = 8  # more uploads than this are counted in log lines, not listed


def row_key(claim: Claim, number: int) -> str:
    """A manifest row's idempotency key: derived, so a restart sends each row under its own."""
    return str(uuid.uuid5(uuid.UUID(claim.key), f"row {number}"))


def rows_report(claim: Claim) -> list[dict[str, Any]]:
    """Each row tried, for the failed folder's report: sent (with its answer) or why not."""
    out = []
    for number in sorted(claim.rows, key=int):
        row = claim.rows[number]
        failed = row.get("failed")
        entry = {"row": int(number), "sent": failed is None, "idempotency_key": row.get("key")}
        entry.update(
            {k: row[k] for k in ("file", "event", "asset_id", "answer", "digest") if k in row}
        )
        if failed:
            entry.update(code=failed.get("code"), reason=failed.get("reason"))
        if row.get("sent_before"):
            entry["sent_before"] = True
        out.append(entry)
    return out


def rows_journalled(claim: Claim) -> dict[str, Any]:
    """A manifest's rows as the journal keeps them: key, assetId, and whether each was sent."""
    return {
        number: {
            "key": row.get("key"),
            "asset_id": row.get("asset_id"),
            "sent": "failed" not in row,
        }
        for number, row in claim.rows.items()
    }


def keepable(answer: Any) -> Any:
    """The answer as kept: whole when small, else an excerpt with its size."""
    text = json.dumps(answer, ensure_ascii=False, default=str)
    if len(text) <= ANSWER_KEPT and not isinstance(answer, AnswerExcerpt):
        return answer
    size = "over 1 MiB" if isinstance(answer, AnswerExcerpt) else f"{len(text.encode()):,} bytes"
    return {"excerpt": text[:ANSWER_KEPT], "size": size}


def _describe(answer: Any) -> str:
    if isinstance(answer, str):
        start = " ".join(answer[:60].split())
        return f"text ({start!r}...)" if start else "an empty body"
    return f"JSON {type(answer).__name__}"


def _difference(before: list[int], now: os.stat_result) -> str:
    """How ``now`` differs from a stored content_signature, in words."""
    if before[0] != now.st_size:
        return f"{before[0]:,} bytes, now {now.st_size:,}"
    if before[1] != now.st_mtime_ns:
        return "same size, modified again"
    return "same size and mtime, its status changed"


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
