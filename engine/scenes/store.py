"""Scenes in the store: one document per scope (who is present, auto turns, last speaker) and its conversation."""
from __future__ import annotations

import time

from engine.scenes.model import Scene
from engine.scenes.prompt import Line
from engine.store.repository import Store, _guard

MODE = "scene"


def owner_of(scope: str) -> str:
    """The conversation owner of a scope's scenes: the scene is everyone's, so no person owns it."""
    return f"scene|{scope}"


class SceneStore:
    """Reads and writes scenes through the Store's database (string ids, string states, one doc per message)."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def db(self):
        return self.store.db

    @_guard
    async def get(self, scope: str) -> Scene | None:
        doc = await self.db.scenes.find_one({"_id": scope, "state": "active"})
        if doc is None:
            return None
        return Scene(scope=scope, conversation_id=doc["conv_id"], characters=list(doc.get("characters") or []),
                     auto_turns=int(doc.get("auto_turns") or 0), last_speaker=doc.get("last_speaker") or None,
                     started_by=doc.get("started_by") or "")

    async def new_conversation(self, scope: str) -> str:
        """Close the scope's previous scene conversation and open a new one."""
        await self.store.reset(owner_of(scope), scope)
        return await self.store.active_conversation(owner_of(scope), scope, MODE, None)

    @_guard
    async def save(self, scene: Scene) -> None:
        await self.db.scenes.replace_one({"_id": scene.scope}, {
            "_id": scene.scope, "conv_id": scene.conversation_id, "characters": list(scene.characters),
            "auto_turns": scene.auto_turns, "last_speaker": scene.last_speaker or "", "started_by": scene.started_by,
            "state": "active", "ts": time.time()}, upsert=True)

    @_guard
    async def end(self, scope: str) -> bool:
        result = await self.db.scenes.update_one({"_id": scope, "state": "active"},
                                                 {"$set": {"state": "ended", "ended": time.time()}})
        await self.store.reset(owner_of(scope), scope)
        return result.modified_count == 1

    async def lines(self, conversation_id: str, limit: int) -> list[Line]:
        docs = await self.store.recent_messages(conversation_id, limit)
        return [Line(d["role"], d.get("speaker") or ("User" if d["role"] == "user" else "?"), d["content"])
                for d in docs if d["role"] in ("user", "assistant") and d["content"].strip()]

    async def add_line(self, conversation_id: str, line: Line, *, status: str = "done", durable: bool = False,
                       request_key: str | None = None, meta: dict | None = None) -> None:
        await self.store.add_message(conversation_id, line.role, line.content, speaker=line.speaker, status=status,
                                     durable=durable, request_key=request_key, meta=meta)
