"""Upload URLs asked for while a file settles, so its upload starts the moment it is complete.

A presigned URL only needs the file's name and type, both known long before
the file is complete; asking for it while the file settles, on a worker that
would otherwise wait, takes one of the three round trips per file off the
path between "complete" and "event sent". Nothing of the file leaves before
it is claimed. A URL older than an hour (they live two) is not used.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

MAX_AGE_SECONDS = 3600.0

Key = tuple[str, str, int]  # inbox, file name, inode


@dataclass(frozen=True)
class Prefetched:
    asset_id: str
    upload_url: str
    fetched_at: float  # monotonic


class UrlCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Key, Prefetched] = {}

    def put(self, key: Key, item: Prefetched) -> None:
        with self._lock:
            self._items[key] = item

    def take(self, key: Key) -> Prefetched | None:
        """The URL fetched for this file, if fresh; each is handed out once."""
        with self._lock:
            item = self._items.pop(key, None)
        if item is None or time.monotonic() - item.fetched_at > MAX_AGE_SECONDS:
            return None
        return item

    def purge(self) -> None:
        """Forget URLs for files that were never claimed (gone, renamed, refused)."""
        limit = time.monotonic() - MAX_AGE_SECONDS
        with self._lock:
            for key in [k for k, v in self._items.items() if v.fetched_at < limit]:
                del self._items[key]
