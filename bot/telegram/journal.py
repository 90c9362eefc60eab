"""The bot's own record of received updates, so a reply cut off by a crash is resumed once, not lost or doubled.

python-telegram-bot confirms updates to the server before handlers finish;
each update is written to the store's inbox before it is handled and marked
done only after its reply was fully sent. What a handler already sent is
noted as ``progress`` so a resume continues instead of sending it again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from engine.errors import StoreUnavailable
from engine.store.repository import Store

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One update being handled: its key, whether it is journaled, and its progress so far."""

    key: str
    store: Store | None
    progress: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    async def save(self, **changes: Any) -> None:
        """Update and persist the progress; a store outage only costs the crash-resume of this step."""
        self.progress.update(changes)
        if self.store is None:
            return
        try:
            await self.store.inbox_progress(self.key, self.progress)
        except StoreUnavailable as e:
            log.warning("progress of %s not recorded: %s", self.key, e.detail)


class Journal:
    def __init__(self, store: Store, bot_id: int, max_attempts: int):
        self.store = store
        self.prefix = f"telegram:{bot_id}:"
        self.max_attempts = max_attempts

    def key(self, update_id: int) -> str:
        return f"{self.prefix}{update_id}"

    async def record(self, update_id: int, payload: dict) -> Entry | None:
        """The entry to handle, or None when this update was handled already (a repeated delivery)."""
        key = self.key(update_id)
        try:
            if await self.store.inbox_add(key, payload):
                return Entry(key, self.store, {"attempts": 1})
            doc = await self.store.inbox_get(key)
        except StoreUnavailable as e:
            # Answering without a record beats not answering; only the crash-resume is lost.
            log.warning("update %s not journaled: %s", key, e.detail)
            return Entry(key, None)
        if doc is None or doc.get("state") == "done":
            return None
        return await self._reopen(doc)

    async def pending(self) -> list[tuple[Entry, dict]]:
        """Updates left unfinished by an earlier run, oldest first, with their payloads."""
        out = []
        for doc in await self.store.inbox_pending(self.prefix):
            entry = await self._reopen(doc)
            if entry is not None:
                out.append((entry, doc["payload"]))
        return out

    async def _reopen(self, doc: dict) -> Entry | None:
        progress = dict(doc.get("progress") or {})
        attempts = int(progress.get("attempts", 1)) + 1
        if attempts > self.max_attempts:
            # An update that kept failing (or kept killing the bot) must not be retried forever.
            log.error("update %s given up after %d attempts", doc["_id"], attempts - 1)
            await self.done(Entry(doc["_id"], self.store, progress), "gave_up")
            return None
        entry = Entry(doc["_id"], self.store, progress, resumed=True)
        await entry.save(attempts=attempts)
        return entry

    async def done(self, entry: Entry, outcome: str = "answered") -> None:
        if entry.store is None:
            return
        try:
            await self.store.inbox_done(entry.key, {"outcome": outcome})
        except StoreUnavailable as e:
            log.warning("update %s not marked done: %s", entry.key, e.detail)
