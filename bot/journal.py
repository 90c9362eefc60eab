"""A surface's own record of received events, so a reply cut off by a crash is resumed once, not lost or doubled.

Platforms confirm events before handlers finish (python-telegram-bot confirms
updates at once; Discord's gateway forgets events at a new session); each
event that starts a reply is written to the store's inbox before it is handled
and marked done only after its reply was fully sent. What a handler already
sent is noted as ``progress`` so a resume continues instead of sending it again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from engine.api import EngineAPI, PlatformStore
from engine.errors import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One update being handled: its key, its journal (None when not journaled), and its progress so far."""

    key: str                             # "{surface}:{event}", e.g. "telegram:{bot id}:{update id}"
    store: PlatformStore | None
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> str:
        """The event's key within the surface's journal (after the last colon)."""
        return self.key.rsplit(":", 1)[1]

    async def save(self, **changes: Any) -> None:
        """Update and persist the progress; a store outage only costs the crash-resume of this step."""
        self.progress.update(changes)
        if self.store is None:
            return
        try:
            await self.store.progress(self.local, self.progress)
        except StoreUnavailable as e:
            log.warning("progress of %s not recorded: %s", self.key, e.detail)


class Journal:
    """A surface's journal, kept through the engine's platform-store seam under ``name`` (``telegram:{bot id}``).

    Event ids must not contain a colon.
    """

    def __init__(self, engine: EngineAPI, name: str, max_attempts: int):
        self.store = engine.platform_store(name)
        self.prefix = f"{self.store.name}:"
        self.max_attempts = max_attempts

    def key(self, update_id: int | str) -> str:
        return f"{self.prefix}{update_id}"

    def _entry(self, local: str, store: PlatformStore | None, progress: dict) -> Entry:
        return Entry(self.prefix + local, store, progress)

    async def record(self, update_id: int | str, payload: dict) -> Entry | None:
        """The entry to handle, or None when this update was handled already (a repeated delivery)."""
        local = str(update_id)
        try:
            if await self.store.add(local, payload):
                return self._entry(local, self.store, {"attempts": 1})
            doc = await self.store.get(local)
        except StoreUnavailable as e:
            # Answering without a record beats not answering; only the crash-resume is lost.
            log.warning("update %s not journaled: %s", self.key(update_id), e.detail)
            return self._entry(local, None, {})
        if doc is None or doc.get("state") == "done":
            return None
        return await self._reopen(doc)

    async def pending(self) -> list[tuple[Entry, dict]]:
        """Updates left unfinished by an earlier run, oldest first, with their payloads."""
        out = []
        for doc in await self.store.pending():
            entry = await self._reopen(doc)
            if entry is not None:
                out.append((entry, doc["payload"]))
        return out

    async def _reopen(self, doc: dict) -> Entry | None:
        progress = dict(doc.get("progress") or {})
        attempts = int(progress.get("attempts", 1)) + 1
        entry = self._entry(doc["_id"], self.store, progress)
        if attempts > self.max_attempts:
            # An update that kept failing (or kept killing the bot) must not be retried forever.
            log.error("update %s given up after %d attempts", entry.key, attempts - 1)
            await self.done(entry, "gave_up")
            return None
        await entry.save(attempts=attempts)
        return entry

    async def done(self, entry: Entry, outcome: str = "answered") -> None:
        if entry.store is None:
            return
        try:
            await entry.store.done(entry.local, {"outcome": outcome})
        except StoreUnavailable as e:
            log.warning("update %s not marked done: %s", entry.key, e.detail)
