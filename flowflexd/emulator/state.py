"""What the emulated FlowFlex backend knows: assets, events, idempotency, faults.

No HTTP here: the server turns requests into calls on ``EmulatorState`` and
its answers (``Answer``) back into responses. Everything is guarded by one
lock, so concurrent retries of one idempotency key act exactly once.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import math
import os
import random
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flowflexd.client.filetypes import ALLOWED_MIMES, MAX_FILE_BYTES

UPLOAD_URL_LIFETIME = 2 * 3600.0
ASSET_LIFETIME = 48 * 3600.0
ASSET_ID = re.compile(r"asset_[0-9a-f]{24}")


class Clock:
    """Wall-clock time plus an offset that tests move forward."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._offset += seconds
        return self.now()

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, JSON body (or ``raw`` bytes), extra headers.

    ``drip``: seconds between bytes, the whole answer (status line included)
    sent one byte at a time, as a server on its last legs does.
    """

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    content_type: str = "application/json"
    drip: float = 0.0


def error(status: int, code: str, message: str, **headers: str) -> Answer:
    return Answer(status, {"error": message, "code": code}, tuple(headers.items()))


@dataclass
class Asset:
    asset_id: str
    filename: str
    mime: str
    declared_size: int | None
    token: str
    url_expires_at: float
    created_at: float
    uploaded_at: float | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Injected:
    """A failure to answer with; ``after_processing``: the call still takes effect."""

    answer: Answer
    after_processing: bool = False
    only: str | None = None  # "event" or "upload-url": the kind of call it strikes


@dataclass
class Faults:
    """Injected trouble: a delay on every answer and a share of failed API calls.

    ``scripted`` failures are used first, one per API call, in order; tests
    use them where a random share would make an assertion uncertain.
    """

    latency_ms: float = 0.0
    fail_rate: float = 0.0
    storage_fail_rate: float = 0.0
    retry_after_seconds: int = 1
    scripted: list[Injected] = field(default_factory=list)
    # Events accepted per second at most, as an API quota counts them: a bucket
    # holding one second's worth; above it, 429 with Retry-After.
    quota_per_second: float | None = None


@dataclass
class Stats:
    upload_urls: int = 0
    uploads: int = 0
    events_fired: int = 0
    event_replays: int = 0
    asset_missing: int = 0
    auth_failures: int = 0
    injected_503: int = 0
    injected_429: int = 0
    quota_refused: int = 0  # events answered 429 for going over --quota-per-second
    injected_after_processing: int = 0
    connections: int = 0
    requests_by_path: dict[str, int] = field(default_factory=dict)


class EmulatorState:
    """The backend's memory, mirrored to ``data_dir`` so a restart keeps it."""

    def __init__(
        self,
        *,
        data_dir: Path,
        api_key: str,
        api_secret: str,
        integration_code: str,
        faults: Faults,
        clock: Clock | None = None,
        seed: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.api_key = api_key
        self.api_secret = api_secret
        self.integration_code = integration_code
        self.faults = faults
        self.clock = clock or Clock()
        self.stats = Stats()
        self._random = random.Random(seed)  # noqa: S311 -- fault injection, not cryptography
        self._lock = threading.RLock()
        self._assets: dict[str, Asset] = {}
        self._events: list[dict[str, Any]] = []
        self._answers: dict[tuple[str, str], Answer] = {}
        expected = base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        self._expected_auth = f"Basic {expected}"
        self._assets_dir = data_dir / "assets"
        self._assets_dir.mkdir(parents=True, exist_ok=True)
        self._events_file = data_dir / "events.jsonl"
        self._quota_tokens = faults.quota_per_second or 0.0
        self._quota_at = time.monotonic()
        self._load()

    # ----------------------------------------------------------- persistence

    def _load(self) -> None:
        for meta in sorted(self._assets_dir.glob("*.json")):
            with contextlib.suppress(ValueError, TypeError, OSError):
                asset = Asset(**json.loads(meta.read_text()))
                self._assets[asset.asset_id] = asset
        if self._events_file.exists():
            for line in self._events_file.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    record = json.loads(line)
                    self._events.append(record["event"])
                    key = (record["event"]["integration_code"], record["event"]["idempotency_key"])
                    self._answers[key] = Answer(record["status"], record["answer"])

    def _save_asset(self, asset: Asset) -> None:
        path = self._assets_dir / f"{asset.asset_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(asset)))
        os.replace(tmp, path)

    def asset_path(self, asset_id: str) -> Path:
        return self._assets_dir / f"{asset_id}.bin"

    # -------------------------------------------------------------- checks

    def authenticate(self, header: str | None) -> Answer | None:
        if header is not None and hmac.compare_digest(
            header.encode(), self._expected_auth.encode()
        ):
            return None
        with self._lock:
            self.stats.auth_failures += 1
        return error(401, "UNAUTHORIZED", "Invalid API key or secret")

    def count(self, path: str) -> None:
        with self._lock:
            self.stats.requests_by_path[path] = self.stats.requests_by_path.get(path, 0) + 1

    def over_quota(self) -> Answer | None:
        """A 429 when this event would go over the quota (a bucket of one second's events)."""
        quota = self.faults.quota_per_second
        if not quota:
            return None
        with self._lock:
            now = time.monotonic()
            tokens = min(quota, self._quota_tokens + (now - self._quota_at) * quota)
            self._quota_at = now
            if tokens >= 1.0:
                self._quota_tokens = tokens - 1.0
                return None
            self._quota_tokens = tokens
            self.stats.quota_refused += 1
            wait = max(1, math.ceil((1.0 - tokens) / quota))
        return error(
            429,
            "RATE_LIMITED",
            f"Over the quota of {quota:g} events per second",
            **{"Retry-After": str(wait)},
        )

    def rate_limited(self) -> Answer:
        return error(
            429,
            "RATE_LIMITED",
            "Too many requests (injected by the emulator)",
            **{"Retry-After": str(self.faults.retry_after_seconds)},
        )

    @staticmethod
    def unavailable() -> Answer:
        return error(503, "UNAVAILABLE", "Service unavailable (injected by the emulator)")

    def injected_failure(self, *, storage: bool = False, call: str = "") -> Injected | None:
        """Maybe fail this call: 503 mostly, sometimes 429 with Retry-After.

        Half of the 503s on an API call strike after the call took effect:
        the answer is lost on its way back, as a timeout or a proxy error
        would lose it, which is what idempotency keys exist for.
        """
        with self._lock:
            scripted = self.faults.scripted
            mine = (
                next((i for i, s in enumerate(scripted) if s.only in (None, call)), None)
                if not storage
                else None
            )
            if mine is not None:
                injected = scripted.pop(mine)
            else:
                rate = self.faults.storage_fail_rate if storage else self.faults.fail_rate
                if rate <= 0 or self._random.random() >= rate:
                    return None
                if not storage and self._random.random() < 0.25:
                    injected = Injected(self.rate_limited())
                else:
                    lost = not storage and self._random.random() < 0.5
                    injected = Injected(self.unavailable(), after_processing=lost)
            if injected.answer.status == 429:
                self.stats.injected_429 += 1
            else:
                self.stats.injected_503 += 1
            if injected.after_processing:
                self.stats.injected_after_processing += 1
            return injected

    def fail_next(self, count: int, *, status: int = 503, after_processing: bool = False) -> None:
        """Answer the next ``count`` API calls with ``status`` (503 or 429)."""
        answer = (
            self.rate_limited()
            if status == 429
            else error(status, "UNAVAILABLE", f"Injected {status} (scripted by a test)")
        )
        with self._lock:
            self.faults.scripted.extend(
                Injected(answer, after_processing=after_processing) for _ in range(count)
            )

    def answer_next(
        self, count: int, answer: Answer, *, after_processing: bool, only: str | None = None
    ) -> None:
        """Answer the next ``count`` API calls (of kind ``only``) with ``answer``.

        Odd bodies, slow bytes, JSON errors with codes. With ``after_processing``
        the call takes effect first: an event is accepted, and only its answer
        is replaced.
        """
        with self._lock:
            self.faults.scripted.extend(
                Injected(answer, after_processing=after_processing, only=only) for _ in range(count)
            )

    def note_connection(self) -> None:
        with self._lock:
            self.stats.connections += 1

    # -------------------------------------------------------------- assets

    def create_upload(self, body: Any, base_url: str) -> Answer:
        if not isinstance(body, dict):
            return error(400, "INVALID_BODY", "Expected a JSON object")
        filename, mime, size = body.get("filename"), body.get("mime"), body.get("size")
        if not isinstance(filename, str) or not filename:
            return error(400, "FILENAME_REQUIRED", "filename is required")
        if not isinstance(mime, str) or not mime:
            return error(400, "MIME_REQUIRED", "mime is required")
        if mime not in ALLOWED_MIMES:
            return error(400, "MIME_NOT_ALLOWED", f"File type {mime} is not allowed")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            return error(400, "INVALID_SIZE", "size must be a non-negative integer")
        if size is not None and size > MAX_FILE_BYTES:
            return error(
                413, "FILE_TOO_LARGE", f"File is {size} bytes; the limit is {MAX_FILE_BYTES}"
            )
        now = self.clock.now()
        asset = Asset(
            asset_id=f"asset_{secrets.token_hex(12)}",
            filename=filename,
            mime=mime,
            declared_size=size,
            token=secrets.token_urlsafe(24),
            url_expires_at=now + UPLOAD_URL_LIFETIME,
            created_at=now,
        )
        with self._lock:
            self._assets[asset.asset_id] = asset
            self._save_asset(asset)
            self.stats.upload_urls += 1
        url = f"{base_url}/_storage/{asset.asset_id}?token={asset.token}"
        return Answer(200, {"assetId": asset.asset_id, "uploadUrl": url, "token": asset.token})

    def check_upload(
        self,
        asset_id: str,
        token: str | None,
        *,
        content_type: str | None,
        has_authorization: bool,
        length: int | None,
    ) -> Answer | None:
        """Everything storage checks before it accepts bytes for a presigned URL."""
        with self._lock:
            asset = self._assets.get(asset_id)
        if asset is None or token is None or not hmac.compare_digest(asset.token, token):
            return error(403, "SIGNATURE_INVALID", "The upload URL is not valid")
        if self.clock.now() > asset.url_expires_at:
            return error(403, "URL_EXPIRED", "The upload URL has expired (valid for 2 hours)")
        if has_authorization:
            return error(
                400,
                "AUTH_NOT_ALLOWED",
                "Only one auth mechanism allowed: the presigned URL; drop the Authorization header",
            )
        if content_type != asset.mime:
            return error(
                403,
                "CONTENT_TYPE_MISMATCH",
                f"Content-Type {content_type!r} does not match the declared {asset.mime!r}",
            )
        if length is None:
            return error(411, "LENGTH_REQUIRED", "Content-Length is required")
        if length > MAX_FILE_BYTES:
            return error(413, "FILE_TOO_LARGE", f"The limit is {MAX_FILE_BYTES} bytes")
        if asset.declared_size is not None and length != asset.declared_size:
            return error(
                400,
                "SIZE_MISMATCH",
                f"Body is {length} bytes; {asset.declared_size} were declared",
            )
        return None

    def finish_upload(self, asset_id: str, size: int, sha256: str) -> None:
        with self._lock:
            asset = self._assets[asset_id]
            asset.uploaded_at = self.clock.now()
            asset.size = size
            asset.sha256 = sha256
            self._save_asset(asset)
            self.stats.uploads += 1

    def _live_asset(self, asset_id: str) -> Asset | None:
        """The asset if its file is stored and younger than 48 hours; expired ones go."""
        asset = self._assets.get(asset_id)
        if asset is None or asset.uploaded_at is None:
            return None
        if self.clock.now() - asset.uploaded_at > ASSET_LIFETIME:
            del self._assets[asset_id]
            for path in (self.asset_path(asset_id), self._assets_dir / f"{asset_id}.json"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return None
        return asset

    # -------------------------------------------------------------- events

    def fire_event(
        self, code: str, event: str | None, key: str | None, body: Any
    ) -> tuple[Answer, bool]:
        """Act on an event once per idempotency key; the flag is True for a replay."""
        if code != self.integration_code:
            return error(404, "INTEGRATION_NOT_FOUND", f"No integration with code {code!r}"), False
        if not event:
            return error(400, "EVENT_REQUIRED", "The x-event header is required"), False
        if not isinstance(body, dict):
            return error(400, "INVALID_PAYLOAD", "The event payload must be a JSON object"), False
        with self._lock:
            if key and (code, key) in self._answers:
                self.stats.event_replays += 1
                return self._answers[(code, key)], True
            assets: dict[str, Any] = {}
            for asset_id in sorted(set(_asset_ids_in(body))):
                asset = self._live_asset(asset_id)
                if asset is None:
                    self.stats.asset_missing += 1
                    message = f"Asset {asset_id} has no uploaded file (never uploaded, or expired)"
                    return error(422, "ASSET_FILE_MISSING", message), False
                assets[asset_id] = {
                    "filename": asset.filename,
                    "mime": asset.mime,
                    "size": asset.size,
                    "sha256": asset.sha256,
                }
            record = {
                "id": f"evt_{secrets.token_hex(12)}",
                "integration_code": code,
                "event": event,
                "idempotency_key": key,
                "payload": body,
                "assets": assets,
                "received_at": self.clock.now(),
            }
            answer = Answer(200, {"ok": True, "eventId": record["id"], "event": event})
            self._events.append(record)
            self.stats.events_fired += 1
            if key:
                self._answers[(code, key)] = answer
            with self._events_file.open("a") as fh:
                line = {"event": record, "status": answer.status, "answer": answer.body}
                fh.write(json.dumps(line) + "\n")
            return answer, False

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events[since:])

    def stored(self, asset_id: str) -> tuple[Path, Asset] | None:
        """An uploaded asset's bytes on disk and what it is, for the page's links."""
        if not ASSET_ID.fullmatch(asset_id):
            return None
        with self._lock:
            asset = self._assets.get(asset_id)
        if asset is None or asset.uploaded_at is None:
            return None
        return self.asset_path(asset_id), asset

    def info(self) -> dict[str, Any]:
        """The clock, the faults injected and the quota, as the page shows them."""
        faults = self.faults
        parts = []
        if faults.latency_ms:
            parts.append(f"latency {faults.latency_ms:g} ms")
        if faults.fail_rate:
            parts.append(f"{faults.fail_rate:.0%} of calls fail")
        if faults.storage_fail_rate:
            parts.append(f"{faults.storage_fail_rate:.0%} of uploads fail")
        with self._lock:
            scripted = len(faults.scripted)
        if scripted:
            parts.append(f"{scripted} scripted answers next")
        return {
            "now": self.clock.now(),
            "clock_offset_s": round(self.clock.offset),
            "faults": asdict(faults) | {"scripted": scripted},
            "faults_text": ", ".join(parts) or "none",
            "quota_text": (
                f"{faults.quota_per_second:g} events/s ({self.stats.quota_refused} refused)"
                if faults.quota_per_second
                else "none"
            ),
        }

    def stats_snapshot(self) -> dict[str, Any]:
        with self._lock:
            snapshot = asdict(self.stats)
            snapshot["events"] = len(self._events)
            snapshot["now"] = self.clock.now()
            return snapshot


def _asset_ids_in(value: Any) -> list[str]:
    """Every string in a payload, at any depth, that is an assetId."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if ASSET_ID.fullmatch(item):
                found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found
