"""The engine on the real models: streaming, memory, limits, cancellation, timeouts."""
from __future__ import annotations

import asyncio
import time

import pytest

from conftest import make_config, start_engine
from engine.errors import EngineBusy, GenerationCancelled, InputTooLong, UnknownCharacter, UserBusy
from engine.types import GenParams, Speaker, Turn


def turn(uid: str, text: str, **kw) -> Turn:
    kw.setdefault("scope", "test:engine")
    return Turn(speaker=Speaker(uid, "Tester"), text=text, **kw)


async def drain(reply) -> list[str]:
    return [p async for p in reply]


@pytest.mark.parametrize("mode", ["chat", "roleplay"])
async def test_both_models_stream_text(engine, speaker_id, mode):
    from engine.cards import Card

    card = Card(name="Aria", description="A cheerful bard.", first_mes="Hello, traveler!") if mode == "roleplay" else None
    reply = engine.reply(turn(speaker_id, "Tell me about the sea.", mode=mode, card=card,
                              params=GenParams(max_new_tokens=20)))
    pieces = await drain(reply)
    assert len(pieces) >= 2, pieces
    assert "".join(pieces) == reply.text and reply.text.strip()
    assert reply.model == mode
    assert reply.stats.ttft_s is not None and reply.stats.finish.tokens > 0


async def test_memory_second_turn_prompt_contains_first(engine, speaker_id):
    first = engine.reply(turn(speaker_id, "My cat is called Mungojerrie."))
    await drain(first)
    second = engine.reply(turn(speaker_id, "What is my cat called?"))
    await drain(second)
    assert second.conversation_id == first.conversation_id
    assert "Mungojerrie" in second.prompt and first.text.strip()[:20] in second.prompt
    stored = await engine.history(first.conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[0]["content"] == "My cat is called Mungojerrie."


async def test_reset_starts_a_new_conversation_and_keeps_the_old(engine, speaker_id):
    a = engine.reply(turn(speaker_id, "Remember the word pumpernickel."))
    await drain(a)
    assert await engine.reset(speaker_id, "test:engine") == 1
    b = engine.reply(turn(speaker_id, "Which word?"))
    await drain(b)
    assert b.conversation_id != a.conversation_id
    assert "pumpernickel" not in b.prompt
    assert len(await engine.history(a.conversation_id)) == 2


async def test_memory_survives_an_engine_restart(mongo_uri, speaker_id):
    config = make_config()
    first = await start_engine(config, mongo_uri, "llmbot_restart")
    await drain(first.reply(turn(speaker_id, "The secret code is 4417.")))
    await first.close(grace_s=1)
    second = await start_engine(config, mongo_uri, "llmbot_restart")
    try:
        reply = second.reply(turn(speaker_id, "What is the secret code?"))
        await drain(reply)
        assert "The secret code is 4417." in reply.prompt
    finally:
        await second.close(grace_s=1)


async def test_second_concurrent_request_of_one_user_is_refused(engine, speaker_id):
    slow = engine.reply(turn(speaker_id, "Write a long story about dragons.", params=GenParams(max_new_tokens=60)))
    it = aiter(slow)
    await anext(it)
    with pytest.raises(UserBusy):
        await drain(engine.reply(turn(speaker_id, "Hello again")))
    await engine.stop_replies_of(speaker_id)
    with pytest.raises(GenerationCancelled):
        async for _ in it:
            pass


async def test_two_users_at_once_are_both_served(engine, speaker_id):
    other = speaker_id + "-b"
    a, b = (engine.reply(turn(u, "Say something nice.", params=GenParams(max_new_tokens=12))) for u in (speaker_id, other))
    await asyncio.gather(drain(a), drain(b))
    assert a.text.strip() and b.text.strip()
    assert a.status == b.status == "done"


async def test_stop_frees_the_model_within_a_token_step(engine, speaker_id):
    reply = engine.reply(turn(speaker_id, "Count from one to one thousand.", params=GenParams(max_new_tokens=400)))
    it = aiter(reply)
    await anext(it)
    t0 = time.perf_counter()
    assert await engine.stop_replies_of(speaker_id) == 1
    with pytest.raises(GenerationCancelled):
        async for _ in it:
            pass
    model = engine.models["chat"]
    while model.queue.running and time.perf_counter() - t0 < 5:
        await asyncio.sleep(0.01)
    assert model.queue.running == 0
    assert time.perf_counter() - t0 < 2.0
    assert reply.stats.finish.reason == "cancelled" and reply.stats.finish.tokens < 400
    stored = await engine.history(reply.conversation_id)
    assert stored[-1]["role"] == "assistant" and stored[-1]["content"] == reply.text   # partial text kept


async def test_abandoned_stream_frees_the_model(engine, speaker_id):
    reply = engine.reply(turn(speaker_id, "Describe the moon in detail.", params=GenParams(max_new_tokens=400)))
    it = aiter(reply)
    await anext(it)
    await it.aclose()                       # what a disconnecting client does
    model = engine.models["chat"]
    t0 = time.perf_counter()
    while model.queue.running and time.perf_counter() - t0 < 5:
        await asyncio.sleep(0.01)
    assert model.queue.running == 0 and reply.halt.is_set()


async def test_queue_limit_answers_busy(mongo_uri, speaker_id):
    config = make_config({"models": {"chat": {"queue_limit": 0}}})
    eng = await start_engine(config, mongo_uri, "llmbot_busy")
    try:
        first = eng.reply(turn(speaker_id, "Tell me a story.", params=GenParams(max_new_tokens=200)))
        it = aiter(first)
        await anext(it)
        with pytest.raises(EngineBusy):
            await drain(eng.reply(turn(speaker_id + "x", "Hi")))
        await it.aclose()
    finally:
        await eng.close(grace_s=1)


async def test_timeout_ends_a_reply(mongo_uri, speaker_id):
    from engine.errors import GenerationTimeout

    config = make_config({"models": {"roleplay": {"timeout_s": 0.3}}})
    eng = await start_engine(config, mongo_uri, "llmbot_timeout")
    try:
        from engine.cards import Card

        r = eng.reply(turn(speaker_id, "Tell me everything.", mode="roleplay", card=Card(name="Bo"),
                           params=GenParams(max_new_tokens=2000)))
        with pytest.raises(GenerationTimeout):
            await drain(r)
        assert eng.models["roleplay"].queue.running in (0, 1)
    finally:
        await eng.close(grace_s=1)


async def test_bad_input_is_refused_before_the_model(engine, speaker_id):
    with pytest.raises(InputTooLong) as e:
        await drain(engine.reply(turn(speaker_id, "x" * (engine.limits.max_input_chars + 1))))
    assert e.value.info["limit"] == engine.limits.max_input_chars
    with pytest.raises(UnknownCharacter):
        await drain(engine.reply(turn(speaker_id, "hi", mode="roleplay", character="Nobody-At-All")))


async def test_request_key_replays_a_finished_reply(engine, speaker_id):
    a = engine.reply(turn(speaker_id, "Name a colour.", request_key="upd-1"))
    await drain(a)
    b = engine.reply(turn(speaker_id, "Name a colour.", request_key="upd-1"))
    pieces = await drain(b)
    assert pieces == [a.text] and b.stats.finish is None        # nothing generated the second time
    stored = await engine.history(a.conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]


async def test_a_reply_is_iterated_once(engine, speaker_id):
    reply = engine.reply(turn(speaker_id, "Name a fruit."))
    await drain(reply)
    stored = len(await engine.history(reply.conversation_id))
    with pytest.raises(RuntimeError, match="once"):
        aiter(reply)
    assert len(await engine.history(reply.conversation_id)) == stored      # nothing generated or stored again


async def test_a_queued_reply_waits_for_the_users_slot_and_wakes_when_cancelled(mongo_uri, speaker_id):
    eng = await start_engine(make_config({"limits": {"busy_policy": "queue"}}), mongo_uri, "llmbot_queue")
    try:
        first = eng.reply(turn(speaker_id, "Tell me a long story.", params=GenParams(max_new_tokens=300)))
        it = aiter(first)
        await anext(it)
        waiting = eng.reply(turn(speaker_id, "And another one."))
        task = asyncio.create_task(drain(waiting))
        await asyncio.sleep(0.2)
        assert not task.done() and waiting.status == "new"          # held at the gate, not generating
        t0 = time.perf_counter()
        waiting.cancel()
        with pytest.raises(GenerationCancelled):
            await asyncio.wait_for(task, 5)
        assert time.perf_counter() - t0 < 1.0                       # woken by the cancel, not by a poll
        queued = eng.reply(turn(speaker_id, "Say hi.", params=GenParams(max_new_tokens=4)))
        task = asyncio.create_task(drain(queued))
        assert await eng.stop_replies_of(speaker_id) == 1           # the running one only
        with pytest.raises(GenerationCancelled):
            async for _ in it:
                pass
        await asyncio.wait_for(task, 60)                            # the slot freed: the queued one ran
        assert queued.status == "done" and queued.text.strip()
    finally:
        await eng.close(grace_s=1)


async def test_the_api_keeps_preferences_links_and_a_surface_journal(engine, speaker_id):
    await engine.set_active_character(speaker_id, "test:scope", "Aria")
    await engine.set_language(speaker_id, "en")
    assert await engine.active_character(speaker_id, "test:scope") == "Aria"
    assert await engine.language(speaker_id) == "en"
    await engine.set_active_character(speaker_id, "test:scope", None)
    assert await engine.active_character(speaker_id, "test:scope") is None
    conv = await engine.active_conversation(speaker_id, "test:scope", "chat")
    await engine.link_message(f"test:msg:{speaker_id}", conv)
    assert await engine.linked_conversation(f"test:msg:{speaker_id}") == conv
    assert (await engine.conversation(conv))["scope"] == "test:scope"
    mine, other = engine.platform_store(f"a-{speaker_id}"), engine.platform_store(f"b-{speaker_id}")
    assert await mine.add("1", {"n": 1}) and not await mine.add("1", {"n": 1})
    await mine.add("2", {"n": 2})
    await other.add("1", {"n": 9})
    await mine.progress("2", {"sent": [7]})
    await mine.done("1", {"outcome": "answered"})
    pending = [(d["_id"], d["payload"], d.get("progress")) for d in await mine.pending()]
    assert pending == [("2", {"n": 2}, {"sent": [7]})]
    assert (await mine.get("1"))["state"] == "done" and (await other.get("1"))["payload"] == {"n": 9}
    limits = engine.model_limits("chat")
    chat = engine.models["chat"]
    assert limits.n_ctx == chat.backend.n_ctx and limits.stop == tuple(chat.cfg.stop)
