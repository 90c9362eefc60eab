"""Conformance: every query shape the store uses, against the embedded server, plus a dead database."""
from __future__ import annotations

import asyncio

import pytest

from engine.errors import StoreUnavailable
from engine.store.embedded import EmbeddedMongo
from engine.store.repository import Store


async def test_conversations_and_messages(store):
    a = await store.active_conversation("u1", "s", "chat", None)
    assert isinstance(a, str) and a == await store.active_conversation("u1", "s", "chat", None)
    assert a != await store.active_conversation("u1", "s", "roleplay", "Aria")
    ids = [await store.add_message(a, r, f"m{i}") for i, r in enumerate(["user", "assistant"] * 3)]
    assert len(set(ids)) == 6
    recent = await store.recent_messages(a, 4)
    assert [m["content"] for m in recent] == ["m2", "m3", "m4", "m5"]
    assert await store.reset("u1", "s") == 2
    b = await store.active_conversation("u1", "s", "chat", None)
    assert b != a and await store.recent_messages(b, 10) == []
    assert len(await store.recent_messages(a, 10)) == 6
    assert (await store.get_conversation(a))["state"] == "closed"
    assert {c["_id"] for c in await store.conversations_of("u1")} >= {a, b}


async def test_request_key_dedupe_and_reply_lookup(store):
    c = await store.active_conversation("u2", "s", "chat", None)
    m1 = await store.add_message(c, "user", "hi", request_key="k1")
    assert await store.add_message(c, "user", "hi", request_key="k1") == m1
    assert await store.find_reply(c, "k1") is None
    await store.add_message(c, "assistant", "hel", request_key="k1", status="cancelled", durable=True)
    assert await store.find_reply(c, "k1") is None          # a partial reply is not given again
    await store.add_message(c, "assistant", "hello", request_key="k1", durable=True)
    assert (await store.find_reply(c, "k1"))["content"] == "hello"
    assert len(await store.recent_messages(c, 10)) == 3


async def test_users_prefs_links(store):
    await store.touch_user("u3", "Ann", "ko")
    await store.touch_user("u3", "Annie", None)
    doc = await store.db.users.find_one({"_id": "u3"})
    assert doc["name"] == "Annie" and doc["platform_lang"] == "ko" and "created" in doc
    assert await store.get_pref("u3", "lang", "ko") == "ko"
    await store.set_pref("u3", "lang", "en")
    assert await store.get_pref("u3", "lang") == "en"
    await store.set_pref("u3", "lang", None)
    assert await store.get_pref("u3", "lang", "x") == "x"
    await store.link("discord:msg:1", "conv-1")
    await store.link("discord:msg:1", "conv-2")
    assert await store.linked("discord:msg:1") == "conv-2" and await store.linked("nope") is None


async def test_characters_and_inbox(store):
    await store.save_character("Aria", {"spec": "chara_card_v2", "data": {"name": "Aria"}}, b"\x89PNG...", "admin")
    await store.save_character("aria", {"spec": "chara_card_v2", "data": {"name": "aria"}}, None, "admin")
    chars = await store.list_characters()
    assert [c["name"] for c in chars] == ["aria"] and chars[0]["image"] is None
    assert await store.delete_character("ARIA") and await store.list_characters() == []
    # A card's extensions are free-form: an int past 8 bytes or a "$" key is kept, not a failed import.
    odd = {"spec": "chara_card_v2", "data": {"name": "Big", "extensions": {"n": 10 ** 30, "$x": [1, {"a.b": None}]}}}
    await store.save_character("Big", odd, None, "admin")
    assert [c["data"] for c in await store.list_characters()] == [odd]
    assert await store.delete_character("big")
    assert await store.inbox_add("tg:1", {"u": 1}) is True
    assert await store.inbox_add("tg:1", {"u": 1}) is False
    await store.inbox_add("tg:2", {"u": 2})
    await store.inbox_add("other:1", {})
    await store.inbox_done("tg:1", {"sent": [5]})
    assert [d["_id"] for d in await store.inbox_pending("tg:")] == ["tg:2"]
    assert (await store.inbox_get("tg:1"))["result"] == {"sent": [5]}


async def test_admin_listing(store):
    await store.add_message("c", "user", "x")
    assert store.db.name in await store.database_names()
    assert "messages" in await store.collection_names(store.db.name)
    assert await store.collection_names("no_such_db_xyz") is None


async def test_large_message_and_unicode_round_trip(store):
    text = "한국어와 English 🐉 " * 20000          # ~400 KB
    c = await store.active_conversation("u4", "s", "chat", None)
    await store.add_message(c, "user", text)
    assert (await store.recent_messages(c, 1))[0]["content"] == text


async def test_dead_database_is_a_clear_error_and_loses_no_finished_reply(tmp_path):
    server = EmbeddedMongo(tmp_path / "m")
    await server.start()
    store = Store(server.uri, "llmbot", server_selection_timeout_ms=500)
    await store.start()
    conv = await store.active_conversation("u", "s", "chat", None)
    await server.stop()
    with pytest.raises(StoreUnavailable):
        await store.add_message(conv, "user", "lost?")
    assert await store.ping() is False
    await store.add_message(conv, "assistant", "finished reply", durable=True)   # kept, not raised
    assert store.pending_writes == 1
    restarted = EmbeddedMongo(tmp_path / "m", port=server.port)
    await restarted.start()
    try:
        for _ in range(100):
            if store.pending_writes == 0:
                break
            await asyncio.sleep(0.1)
        assert store.pending_writes == 0 and await store.ping() is True
        assert [m["content"] for m in await store.recent_messages(conv, 5)] == ["finished reply"]
    finally:
        await store.close()
        await restarted.stop()


async def test_summary_revisions_and_pins(store):
    conv = await store.active_conversation("u:mem", "s", "chat", None)
    ids = [await store.add_message(conv, role, f"m{i}") for i, role in enumerate(["user", "assistant"] * 3)]
    docs = await store.recent_messages(conv, 10)
    assert [d["_id"] for d in docs] == ids
    after = await store.recent_messages(conv, 10, after_ts=docs[2]["ts"])     # the window after a summary's cover
    assert [d["_id"] for d in after] == ids[3:]
    covers = {"from_id": ids[0], "from_ts": docs[0]["ts"], "to_id": ids[2], "to_ts": docs[2]["ts"], "messages": 3}
    assert await store.add_summary(conv, 1, "first", covers, by="model", folded_ids=ids[:3])
    assert not await store.add_summary(conv, 1, "a second writer of revision 1", covers, by="model")
    assert await store.add_summary(conv, 2, "second", covers, by="user")
    assert (await store.latest_summary(conv))["text"] == "second"
    assert [r["rev"] for r in await store.summary_revisions(conv)] == [1, 2]
    a, b, c = [await store.add_pin(conv, t, by="u:mem") for t in ("one", "two", "three")]
    assert await store.remove_pins(conv, [b]) == 1
    assert [p["text"] for p in await store.pins(conv)] == ["one", "three"]
    assert await store.remove_pins(conv) == 2 and await store.pins(conv) == []
    assert await store.count_messages(conv) == 6
