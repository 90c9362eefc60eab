"""A surface's journal of received events (the PlatformStore seam): the store's inbox under one name."""
from __future__ import annotations

from engine.store.repository import Store


class Journal:
    """Events of one surface, keyed ``{name}:{key}``; each is pending until marked done."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.name = name
        self.prefix = f"{name}:"

    async def add(self, key: str, payload: dict) -> bool:
        """Record an event once; False if it was already recorded."""
        return await self.store.inbox_add(self.prefix + key, payload)

    async def done(self, key: str, result: dict | None = None) -> None:
        await self.store.inbox_done(self.prefix + key, result)

    async def progress(self, key: str, progress: dict) -> None:
        """Note how far handling a pending event got, so a resume continues it."""
        await self.store.inbox_progress(self.prefix + key, progress)

    async def get(self, key: str) -> dict | None:
        doc = await self.store.inbox_get(self.prefix + key)
        return self._local(doc) if doc else None

    async def pending(self) -> list[dict]:
        """Events not yet done, oldest first; each ``_id`` is the key given to ``add``."""
        return [self._local(d) for d in await self.store.inbox_pending(self.prefix)]

    def _local(self, doc: dict) -> dict:
        return doc | {"_id": doc["_id"][len(self.prefix):]}
