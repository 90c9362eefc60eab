"""Every read and write the bot makes to MongoDB, through PyMongo's AsyncMongoClient.

Queries stay within what both real MongoDB and the embedded nx-27017 server do
correctly (docs/embedded-store.md): string ids, one document per message, no $push, no
ObjectId equality on other fields, explicit index names, string states
instead of booleans in filters.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from engine.errors import StoreUnavailable
from engine.store.outbox import Outbox

log = logging.getLogger(__name__)

FLUSH_MAX_DELAY_S = 5.0      # longest wait between retries of kept writes once the database is away

INDEXES: dict[str, list[tuple[str, list[tuple[str, int]], dict]]] = {
    "conversations": [("conv_owner_scope", [("owner", ASCENDING), ("scope", ASCENDING), ("state", ASCENDING)], {})],
    "messages": [("msg_conv_ts", [("conv_id", ASCENDING), ("ts", ASCENDING)], {}),
                 ("msg_conv_key", [("conv_id", ASCENDING), ("request_key", ASCENDING)], {})],
    "prefs": [("prefs_user", [("user", ASCENDING)], {})],
    "inbox": [("inbox_state", [("state", ASCENDING), ("ts", ASCENDING)], {})],
    # One document per summary revision; the unique index makes a concurrent second writer of a revision fail.
    "summaries": [("summary_conv_rev", [("conv_id", ASCENDING), ("rev", ASCENDING)], {"unique": True})],
    "pins": [("pins_conv", [("conv_id", ASCENDING), ("state", ASCENDING), ("ts", ASCENDING)], {})],
    "users": [], "characters": [], "links": [], "scenes": [],
}


def eq(**fields: Any) -> dict[str, dict[str, Any]]:
    """Equality filters written as ``$eq``: the same match in MongoDB, but the embedded store turns a bare
    value into "equal or an array holding it", which no index serves, and scans the whole collection."""
    return {k: {"$eq": v} for k, v in fields.items()}


def new_id() -> str:
    return uuid.uuid4().hex


def keyed_id(*parts: str) -> str:
    """A stable id for a record that must exist once: a retried or replayed write of it is a harmless duplicate."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _guard(fn):
    """Driver errors that mean 'the database is not there' become StoreUnavailable."""

    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        try:
            return await fn(self, *args, **kwargs)
        except (ConnectionFailure, asyncio.TimeoutError) as e:
            raise StoreUnavailable(f"{fn.__name__}: {e}") from e
        except OperationFailure:
            raise
        except PyMongoError as e:
            if "timed out" in str(e).lower() or "connection" in str(e).lower():
                raise StoreUnavailable(f"{fn.__name__}: {e}") from e
            raise

    return wrapper


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


class Store:
    """The engine's MongoDB repository: conversations, messages, preferences, links, characters, journals.

    Only the engine holds it; surfaces reach it through the EngineAPI (engine/api.py).
    Durable writes survive a database outage in an outbox (in memory and in a file) retried with back-off.
    """

    def __init__(self, uri: str, default_db: str, server_selection_timeout_ms: int = 3000,
                 outbox_path: Path | None = None):
        """``outbox_path``: a file that keeps durable writes the database did not take, replayed at start."""
        # The user's URI is passed untouched: replicaSet, TLS, authSource and the rest are the driver's.
        self.client: AsyncMongoClient = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=server_selection_timeout_ms, tz_aware=True,
        )
        self.db = self.client.get_default_database(default=default_db)
        self._indexes_ready = False
        self._outbox = Outbox(outbox_path)
        self._flusher: asyncio.Task | None = None
        self._flush_lock = asyncio.Lock()     # one drainer at a time: two would pop each other's entries

    # life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._outbox.load()
        try:
            await self.ensure_indexes()
        except StoreUnavailable as e:
            log.error("the database is unavailable (%s); the bot keeps running and retries", e.detail)
        if self._outbox.items:
            await self.flush(attempts=1)
            self._ensure_flusher()

    @_guard
    async def ensure_indexes(self) -> None:
        for coll, specs in INDEXES.items():
            for name, keys, opts in specs:
                await self.db[coll].create_index(keys, name=name, **opts)
        self._indexes_ready = True

    async def ping(self) -> bool:
        try:
            await self.client.admin.command("ping")
        except PyMongoError:
            return False
        if not self._indexes_ready:
            try:
                await self.ensure_indexes()
            except (StoreUnavailable, PyMongoError):
                return False
        if self._outbox.items and not self._flush_lock.locked():
            await self.flush(attempts=1)       # the database is back: drain now rather than at the next back-off
        return True

    async def close(self) -> None:
        if self._flusher:
            self._flusher.cancel()
        await self.flush(attempts=3)
        if self._outbox.items:
            where = f"; kept in {self._outbox.path} for the next start" if self._outbox.path else ""
            log.error("%d message(s) could not be written before shutdown%s", len(self._outbox.items), where)
        await self.client.close()

    # durable writes -------------------------------------------------------------------------------

    async def _put(self, coll: str, doc: dict) -> None:
        # By _id, so a retried write lands once and a finished reply replaces its own progress writes.
        await self.db[coll].replace_one({"_id": doc["_id"]}, doc, upsert=True)

    async def _insert_durable(self, coll: str, doc: dict) -> None:
        """Insert now, or keep the document and retry until the database is back."""
        try:
            await self._put(coll, doc)
        except (ConnectionFailure, PyMongoError) as e:
            log.warning("database write failed (%s); kept for retry", type(e).__name__)
            self._outbox.add(coll, doc)
            self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        if self._outbox.items and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        delay = 0.5
        while self._outbox.items:
            await asyncio.sleep(delay)
            await self.flush(attempts=1)
            delay = min(delay * 2, FLUSH_MAX_DELAY_S)

    async def flush(self, attempts: int = 1) -> None:
        """Write what the outbox holds, oldest first; a replay of a write already taken is a harmless duplicate."""
        async with self._flush_lock:
            await self._flush(attempts)

    async def _flush(self, attempts: int) -> None:
        for _ in range(attempts):
            taken = 0
            while self._outbox.items:
                coll, doc = self._outbox.items[0]
                try:
                    await self._put(coll, doc)
                except PyMongoError:
                    break
                self._outbox.items.pop(0)
                taken += 1
            if taken:
                self._outbox.sync()
                log.info("%d kept write(s) stored, %d pending", taken, len(self._outbox.items))
            if not self._outbox.items:
                return
            await asyncio.sleep(0.2)

    @property
    def pending_writes(self) -> int:
        return len(self._outbox.items)

    # users and preferences ------------------------------------------------------------------------

    @_guard
    async def touch_user(self, user_id: str, name: str, lang: str | None) -> None:
        now = time.time()
        update: dict[str, Any] = {"$set": {"name": name, "seen": now}, "$setOnInsert": {"created": now}}
        if lang:
            update["$set"]["platform_lang"] = lang
        await self.db.users.update_one({"_id": user_id}, update, upsert=True)

    @_guard
    async def get_pref(self, user_id: str, key: str, default: Any = None) -> Any:
        doc = await self.db.prefs.find_one({"_id": f"{user_id}|{key}"})
        return doc["value"] if doc else default

    @_guard
    async def set_pref(self, user_id: str, key: str, value: Any) -> None:
        if value is None:
            await self.db.prefs.delete_one({"_id": f"{user_id}|{key}"})
        else:
            await self.db.prefs.replace_one({"_id": f"{user_id}|{key}"},
                                            {"_id": f"{user_id}|{key}", "user": user_id, "key": key, "value": value},
                                            upsert=True)

    # conversations --------------------------------------------------------------------------------

    @_guard
    async def active_conversation(self, owner: str, scope: str, mode: str, character: str | None) -> str:
        fields = {"owner": owner, "scope": scope, "mode": mode, "character": character or "", "state": "active"}
        query = eq(**fields)
        found = await self.db.conversations.find(query).sort("created", ASCENDING).limit(1).to_list(None)
        if found:
            return found[0]["_id"]
        # Not an upsert: nx-27017 ignores $setOnInsert's _id in find_one_and_update and makes an ObjectId.
        mine = new_id()
        await self.db.conversations.insert_one({**fields, "_id": mine, "created": time.time_ns()})
        # Two first messages at once may both insert; everyone settles on the oldest. A reset at the same
        # moment may have closed them all: then this caller keeps the one it made.
        found = await self.db.conversations.find(query).sort("created", ASCENDING).limit(1).to_list(None)
        return found[0]["_id"] if found else mine

    @_guard
    async def reset(self, owner: str, scope: str) -> int:
        """Close the owner's active conversations in a scope; the old ones stay stored."""
        result = await self.db.conversations.update_many(
            eq(owner=owner, scope=scope, state="active"),
            {"$set": {"state": "closed", "closed": time.time_ns()}},
        )
        return result.modified_count

    @_guard
    async def get_conversation(self, conv_id: str) -> dict | None:
        return await self.db.conversations.find_one({"_id": conv_id})

    @_guard
    async def conversations_of(self, owner: str, limit: int = 50) -> list[dict]:
        cursor = self.db.conversations.find(eq(owner=owner)).sort("created", DESCENDING).limit(limit)
        return await cursor.to_list(None)

    # messages -------------------------------------------------------------------------------------

    @_guard
    async def add_message(self, conv_id: str, role: str, content: str, *, request_key: str | None = None,
                          status: str = "done", meta: dict | None = None, durable: bool = False,
                          speaker: str = "", message_id: str | None = None) -> str:
        """Store one message; with a ``request_key`` the same request is stored once per status.

        ``speaker`` names who said it where several may (a scene's people and characters).
        ``status`` is "done" for a complete message, else why a reply ended early
        ("cancelled", "error"); a partial reply does not stand in for a later
        complete one. ``durable`` writes are kept and retried if the database is
        down (a finished reply must not be lost); others raise StoreUnavailable
        so the user learns at once that their message was not taken. A ``message_id``
        already stored (a reply's progress) is replaced.
        """
        if request_key and not message_id:      # a reply's own progress document is replaced, not looked up
            try:
                found = await self.db.messages.find_one({**eq(conv_id=conv_id, request_key=request_key),
                                                         "role": role, "status": status})
            except PyMongoError:
                if not durable:
                    raise
                found = None                  # the keyed id below keeps a later replay from doubling it
            if found:
                return found["_id"]
        msg_id = message_id or (keyed_id(conv_id, request_key, role, status) if request_key else new_id())
        doc = {"_id": msg_id, "conv_id": conv_id, "ts": time.time_ns(), "role": role, "content": content,
               "request_key": request_key or "", "status": status, "meta": meta or {}, "speaker": speaker}
        if durable:
            await self._insert_durable("messages", doc)
        elif message_id:
            await self._put("messages", doc)
        else:
            await self.db.messages.insert_one(doc)
        return doc["_id"]

    @_guard
    async def recent_messages(self, conv_id: str, limit: int, after_ts: int | None = None) -> list[dict]:
        """The newest ``limit`` messages of a conversation (only those after ``after_ts`` if given), oldest first."""
        if limit <= 0:
            return []
        query: dict[str, Any] = eq(conv_id=conv_id)
        if after_ts is not None:
            query["ts"] = {"$gt": after_ts}
        cursor = self.db.messages.find(query).sort("ts", DESCENDING).limit(limit)
        docs = await cursor.to_list(None)
        return docs[::-1]

    @_guard
    async def find_reply(self, conv_id: str, request_key: str) -> dict | None:
        """The complete reply already given to a request, if any (a partial one does not count)."""
        return await self.db.messages.find_one({**eq(conv_id=conv_id, request_key=request_key), "role": "assistant",
                                                "status": "done"})

    @_guard
    async def count_messages(self, conv_id: str) -> int:
        return await self.db.messages.count_documents(eq(conv_id=conv_id))

    # memory: summary revisions and pinned facts -----------------------------------------------------

    @_guard
    async def latest_summary(self, conv_id: str) -> dict | None:
        found = await self.db.summaries.find(eq(conv_id=conv_id)).sort("rev", DESCENDING).limit(1).to_list(None)
        return found[0] if found else None

    @_guard
    async def summary_revisions(self, conv_id: str) -> list[dict]:
        return await self.db.summaries.find(eq(conv_id=conv_id)).sort("rev", ASCENDING).to_list(None)

    @_guard
    async def add_summary(self, conv_id: str, rev: int, text: str, covers: dict, by: str,
                          folded_ids: list[str] | None = None) -> bool:
        """Store revision ``rev``; False when that revision already exists (someone wrote it first)."""
        doc = {"_id": new_id(), "conv_id": conv_id, "rev": rev, "text": text, "covers": covers, "by": by,
               "folded_ids": folded_ids or [], "ts": time.time()}
        try:
            await self.db.summaries.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    @_guard
    async def pins(self, conv_id: str) -> list[dict]:
        """The conversation's pinned facts, oldest first."""
        return await self.db.pins.find(eq(conv_id=conv_id, state="active")).sort("ts", ASCENDING).to_list(None)

    @_guard
    async def add_pin(self, conv_id: str, text: str, by: str) -> str:
        doc = {"_id": new_id(), "conv_id": conv_id, "text": text, "by": by, "state": "active", "ts": time.time_ns()}
        await self.db.pins.insert_one(doc)
        return doc["_id"]

    @_guard
    async def remove_pins(self, conv_id: str, pin_ids: list[str] | None = None) -> int:
        """Unpin some (or, with no ids, all) of a conversation's facts; they stay stored, marked removed."""
        query: dict[str, Any] = eq(conv_id=conv_id, state="active")
        if pin_ids is not None:
            query["_id"] = {"$in": pin_ids}
        result = await self.db.pins.update_many(query, {"$set": {"state": "removed", "removed": time.time_ns()}})
        return result.modified_count

    # platform message → conversation links (reply chains) ----------------------------------------

    @_guard
    async def link(self, key: str, conv_id: str) -> None:
        await self.db.links.replace_one({"_id": key}, {"_id": key, "conv_id": conv_id, "ts": time.time()}, upsert=True)

    @_guard
    async def linked(self, key: str) -> str | None:
        doc = await self.db.links.find_one({"_id": key})
        return doc["conv_id"] if doc else None

    # characters imported at run time ---------------------------------------------------------------

    @_guard
    async def save_character(self, name: str, data: dict, image: bytes | None, by: str) -> None:
        # The card PNG as base64 text: nx-27017 cannot replace a document holding binary data. The card's
        # fields as JSON text: its extensions may hold what BSON cannot (ints past 8 bytes, "$" keys).
        doc = {"_id": name.casefold(), "name": name, "card_json": json.dumps(data, ensure_ascii=False),
               "image_b64": _b64(image), "by": by, "ts": time.time()}
        await self.db.characters.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    @_guard
    async def list_characters(self) -> list[dict]:
        """Stored cards, ``data`` as a dict and ``image`` as bytes (older documents hold them as such already)."""
        docs = await self.db.characters.find({}).sort("_id", ASCENDING).to_list(None)
        for doc in docs:
            if "card_json" in doc:
                doc["data"] = json.loads(doc.pop("card_json"))
            b64 = doc.pop("image_b64", None)
            doc["image"] = base64.b64decode(b64) if b64 is not None else doc.get("image")
        return docs

    @_guard
    async def delete_character(self, name: str) -> bool:
        return (await self.db.characters.delete_one({"_id": name.casefold()})).deleted_count == 1

    # a surface's journal of received events (e.g. Telegram updates) --------------------------------

    @_guard
    async def inbox_add(self, key: str, payload: dict) -> bool:
        """Record an event once; False if it was already recorded."""
        try:
            await self.db.inbox.insert_one({"_id": key, "payload": payload, "state": "pending", "ts": time.time()})
            return True
        except DuplicateKeyError:
            return False

    @_guard
    async def inbox_done(self, key: str, result: dict | None = None) -> None:
        await self.db.inbox.update_one({"_id": key}, {"$set": {"state": "done", "result": result or {},
                                                               "done_ts": time.time()}})

    @_guard
    async def inbox_progress(self, key: str, progress: dict) -> None:
        """Note how far handling a pending event got (e.g. what was already sent), so a resume continues it."""
        await self.db.inbox.update_one({"_id": key, "state": "pending"}, {"$set": {"progress": progress}})

    @_guard
    async def inbox_get(self, key: str) -> dict | None:
        return await self.db.inbox.find_one({"_id": key})

    @_guard
    async def inbox_pending(self, prefix: str) -> list[dict]:
        docs = await self.db.inbox.find({"state": "pending"}).sort("ts", ASCENDING).to_list(None)
        return [d for d in docs if d["_id"].startswith(prefix)]

    # admin ----------------------------------------------------------------------------------------

    @_guard
    async def database_names(self) -> list[str]:
        return await self.client.list_database_names()

    @_guard
    async def collection_names(self, db_name: str) -> list[str] | None:
        if db_name not in await self.client.list_database_names():
            return None
        return sorted(await self.client[db_name].list_collection_names())
