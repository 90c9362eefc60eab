"""Memory beyond the window: rolling summaries, pinned facts, their commands, priority and survival of a restart."""
from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid

import aiohttp
import pytest

from conftest import API_KEY, make_config, secrets
from engine.backends.base import Finish
from engine.cards import Card
from engine.engine import Engine
from engine.errors import PinRejected, UnknownPin
from engine.store.repository import Store
from engine.types import Speaker, Turn

N_CTX = 512
STORY = (" We left the harbour at dawn, passed the lighthouse and the three islands, and camped on the"
         " beach where the old fishermen dry their nets in the sun.")
WORD = re.compile(r"quib\d\d")


def said(i: int) -> str:
    return f"Turn {i}: remember the word quib{i:02d}, and tell me about the rivers of the north."


# --- a scripted model, only where SmolLM2 cannot write the content a test checks -----------------------

class Script:
    """Replies of a fixed length; a fold request (the summariser's) is answered with the quibNN words it saw."""

    max_concurrent = 1

    def __init__(self, fold_delay: float = 0.0, fold: str = "ok"):
        self.n_ctx = N_CTX
        self.fold_delay, self.fold = fold_delay, fold
        self.prompts: list[str] = []
        self.folds: list[str] = []

    def render(self, messages):
        return "\n".join(f"<{m['role']}> {m['content']}" for m in messages)

    def count_tokens(self, text):
        return len(text) // 4 + 1

    def generate(self, prompt, sampling, cancel: threading.Event, emit):
        if "New messages:" in prompt:
            self.folds.append(prompt)
            if self.fold == "fail":
                raise RuntimeError("the summariser broke")
            words = sorted(set(WORD.findall(prompt.split("<user>", 1)[1])))
            text, delay = ("Remembered words: " + ", ".join(words) + ".") if self.fold == "ok" else "", self.fold_delay
        else:
            self.prompts.append(prompt)
            text, delay = "I hear you, and the rivers run cold and clear there. " * 3, 0.0
        for i in range(0, max(len(text), 1), 4):
            if cancel.is_set():
                return Finish(tokens=i // 4, reason="cancelled")
            if text:
                emit(text[i:i + 4])
            if delay:
                cancel.wait(delay)
        return Finish(tokens=len(text) // 4)

    def info(self):
        return {"name": "script"}

    def close(self):
        pass


def scripted(store: Store, backend: Script, **memory) -> Engine:
    """The real Engine and store on a scripted model; a summary is due once two turns have left the window."""
    config = make_config({"memory": {"trigger": 64, "idle_s": 0.05, **memory}})
    model = Engine.make_model("chat", config.models.chat, backend)
    return Engine(models={"chat": model, "roleplay": model}, store=store, limits=config.limits,
                  cards_cfg=config.cards, memory_cfg=config.memory)


async def shut(eng: Engine) -> None:
    await eng.memory.close()
    eng.models["chat"].queue.close()


def turn(uid: str, text: str, **kw) -> Turn:
    kw.setdefault("scope", "test:memory")
    return Turn(speaker=Speaker(uid, "Ana"), text=text, **kw)


async def say(eng: Engine, uid: str, i: int, settle: bool = True, **kw):
    reply = eng.reply(turn(uid, said(i), **kw))
    async for _ in reply:
        pass
    if settle:
        await eng.memory.summarizer.settle(30)
    return reply


async def summarised(eng: Engine, uid: str, turns: int = 11) -> str:
    """A conversation long enough to have a summary; its id."""
    replies = [await say(eng, uid, i) for i in range(1, turns + 1)]
    return replies[0].conversation_id


# --- the rolling summary -------------------------------------------------------------------------

async def test_summary_is_written_when_the_window_overflows_and_the_next_prompt_has_it(store, speaker_id):
    backend = Script()
    eng = scripted(store, backend)
    try:
        replies = [await say(eng, speaker_id, i) for i in range(1, 11)]
        conv = replies[0].conversation_id
        first = (await store.recent_messages(conv, 1000))[0]
        assert said(1) not in replies[-1].prompt                          # turn 1 left the window by turn 10
        summary = await store.latest_summary(conv)
        assert summary, "no summary was written"
        assert summary["covers"]["from_id"] == first["_id"] and "quib01" in summary["text"]
        assert summary["by"] == "model" and summary["folded_ids"]
        # the next prompt carries it, after the system text and before the history
        prompt = (await say(eng, speaker_id, 11, settle=False)).prompt
        assert f"Summary of the earlier conversation:\n{summary['text']}" in prompt
        assert prompt.index(summary["text"]) < prompt.index("<user>")
        # the window does not repeat what the summary covers; every prompt fits the context
        covered = [m for m in await store.recent_messages(conv, 1000) if m["ts"] <= summary["covers"]["to_ts"]]
        assert covered and all(m["content"] not in prompt for m in covered if m["role"] == "user")
        assert all(backend.count_tokens(p) <= N_CTX for p in backend.prompts + backend.folds)
        assert await store.count_messages(conv) == 22                     # nothing was deleted
    finally:
        await shut(eng)


async def first_piece_s(eng: Engine, uid: str, i: int) -> float:
    """Seconds from asking to the reply's first piece (the reply then runs to its end)."""
    reply = eng.reply(turn(uid, said(i)))
    t0, first = time.perf_counter(), None
    async for _ in reply:
        first = first or time.perf_counter() - t0
    return first


async def test_a_reply_takes_the_model_from_a_summary_being_written(store, speaker_id):
    backend = Script(fold_delay=0.05)          # a fold writes ~10 pieces per 0.5 s: slow enough to be caught
    eng = scripted(store, backend)
    summarizer = eng.memory.summarizer
    try:
        baseline = await first_piece_s(eng, speaker_id, 1)
        for i in range(2, 20):
            reply = await say(eng, speaker_id, i, settle=False)
            if summarizer._jobs:
                break
        assert summarizer._jobs, "no summary was started"
        t0 = time.monotonic()
        while not summarizer._running and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        assert summarizer._running, "the summary never reached the model"
        before = await store.latest_summary(reply.conversation_id)
        waited = await first_piece_s(eng, speaker_id, 40)
        assert summarizer.counts["preempted"] == 1
        assert waited < baseline + 0.25                                  # one fold piece, not a whole fold
        assert await store.latest_summary(reply.conversation_id) == before          # the old summary stays
        await summarizer.settle(30)                                                 # and is written later
        assert (await store.latest_summary(reply.conversation_id))["rev"] == (before["rev"] + 1 if before else 1)
    finally:
        await shut(eng)


async def test_with_a_batching_backend_the_summary_takes_a_free_slot_beside_the_reply(store, speaker_id):
    backend = Script(fold_delay=0.05)
    backend.max_concurrent = 2                 # a batch of two: the reply joins the summary rather than waiting
    eng = scripted(store, backend)
    summarizer = eng.memory.summarizer
    try:
        for i in range(1, 20):
            reply = await say(eng, speaker_id, i, settle=False)
            if summarizer._jobs:
                break
        t0 = time.monotonic()
        while not summarizer._running and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        assert summarizer._running, "the summary never reached the model"
        during = await say(eng, speaker_id, 40, settle=False)
        assert during.status == "done" and summarizer._running           # the summary goes on meanwhile
        await summarizer.settle(30)
        assert summarizer.counts["preempted"] == 0 and summarizer.counts["written"] >= 1
        assert await store.latest_summary(reply.conversation_id)
    finally:
        await shut(eng)


@pytest.mark.parametrize("failure", ["fail", "empty"])
async def test_a_failing_summariser_leaves_the_previous_summary(store, speaker_id, failure):
    backend = Script()
    eng = scripted(store, backend)
    try:
        i = 0
        while not eng.memory.summarizer.counts["written"] and i < 20:
            i += 1
            await say(eng, speaker_id, i)
        conv = (await say(eng, speaker_id, i + 1)).conversation_id
        good = await store.latest_summary(conv)
        assert good and good["text"]
        backend.fold = failure
        for j in range(i + 2, i + 8):
            reply = await say(eng, speaker_id, j)
            assert reply.status == "done"
        assert eng.memory.summarizer.counts["failed"] >= 1
        assert await store.latest_summary(conv) == good
        assert good["text"] in reply.prompt
    finally:
        await shut(eng)


# --- pinned facts, forget, edit --------------------------------------------------------------------

async def test_pins_are_in_every_prompt_of_chat_and_roleplay(store, speaker_id):
    backend = Script()
    eng = scripted(store, backend)
    card = Card(name="Wren", description="A lighthouse keeper.", first_mes="Storm's coming.")
    try:
        chat = await eng.conversation_for(turn(speaker_id, ""))
        play = await eng.conversation_for(turn(speaker_id, "", mode="roleplay", card=card))
        await eng.pin_fact(chat, "My name is Ana and my cat is Blorvik.", by=speaker_id)
        await eng.pin_fact(play, "Wren is afraid of storms.", by=speaker_id)
        for i in range(1, 13):
            assert "- My name is Ana and my cat is Blorvik." in (await say(eng, speaker_id, i)).prompt
        rp = await say(eng, speaker_id, 1, mode="roleplay", card=card)
        assert "- Wren is afraid of storms." in rp.prompt and "Blorvik" not in rp.prompt
        shown = await eng.memory_of(chat)
        assert [p["n"] for p in shown["pins"]] == [1] and shown["pins"][0]["text"].endswith("Blorvik.")
    finally:
        await shut(eng)


async def test_pin_limits_and_unpin(store, speaker_id):
    eng = scripted(store, Script(), pin_tokens=24, pin_chars=60)
    try:
        conv = await eng.conversation_for(turn(speaker_id, ""))
        with pytest.raises(PinRejected) as e:
            await eng.pin_fact(conv, "x" * 61, by=speaker_id)
        assert e.value.info["reason"] == "too_long"
        with pytest.raises(PinRejected):
            await eng.pin_fact(conv, "   ", by=speaker_id)
        await eng.pin_fact(conv, "The first fact is about the moon.", by=speaker_id)
        await eng.pin_fact(conv, "The second fact is about the sea.", by=speaker_id)
        with pytest.raises(PinRejected) as e:
            await eng.pin_fact(conv, "A third fact that no longer fits.", by=speaker_id)
        assert e.value.info["reason"] == "full"
        with pytest.raises(UnknownPin):
            await eng.unpin_fact(conv, 3)
        assert await eng.unpin_fact(conv, 1) == "The first fact is about the moon."
        assert [p["text"] for p in (await eng.memory_of(conv))["pins"]] == ["The second fact is about the sea."]
    finally:
        await shut(eng)


async def test_forget_clears_summary_and_pins_and_keeps_the_messages(store, speaker_id):
    eng = scripted(store, Script())
    try:
        conv = await summarised(eng, speaker_id)
        await eng.pin_fact(conv, "Ana likes plums.", by=speaker_id)
        memory = await eng.memory_of(conv)
        assert memory["summary"]["text"] and memory["pins"]
        stored = await store.count_messages(conv)
        revisions = len(await store.summary_revisions(conv))
        await eng.forget(conv, by=speaker_id)
        memory = await eng.memory_of(conv)
        assert memory["summary"]["text"] == "" and memory["pins"] == []
        after = await say(eng, speaker_id, 12, settle=False)
        assert "Remembered words" not in after.prompt and "plums" not in after.prompt
        assert await store.count_messages(conv) == stored + 2
        assert len(await store.summary_revisions(conv)) == revisions + 1      # a revision, nothing overwritten
    finally:
        await shut(eng)


async def test_edited_summary_is_used_and_keeps_what_it_covers(store, speaker_id):
    eng = scripted(store, Script())
    try:
        conv = await summarised(eng, speaker_id)
        old = (await eng.memory_of(conv))["summary"]
        new = await eng.edit_summary(conv, "Ana is a sailor from Busan.", by=speaker_id)
        assert new["summary"]["text"] == "Ana is a sailor from Busan." and new["summary"]["by"] == speaker_id
        assert new["summary"]["covers"] == old["covers"]
        assert "Ana is a sailor from Busan." in (await say(eng, speaker_id, 12, settle=False)).prompt
    finally:
        await shut(eng)


async def test_summary_and_pins_survive_a_restart(mongo_uri, speaker_id):
    db = f"t_{uuid.uuid4().hex[:10]}"
    store = Store(mongo_uri, db)
    await store.start()
    eng = scripted(store, Script())
    conv = await summarised(eng, speaker_id)
    await eng.pin_fact(conv, "The password is Frumious.", by=speaker_id)
    summary = (await eng.memory_of(conv))["summary"]["text"]
    await eng.close(grace_s=1)
    store = Store(mongo_uri, db)
    await store.start()
    eng = scripted(store, Script())
    try:
        prompt = (await say(eng, speaker_id, 12, settle=False)).prompt
        assert summary and summary in prompt and "- The password is Frumious." in prompt
    finally:
        await eng.close(grace_s=1)


async def test_memory_off_keeps_the_plain_window(store, speaker_id):
    backend = Script()
    eng = scripted(store, backend, enabled=False)
    try:
        for i in range(1, 12):
            reply = await say(eng, speaker_id, i)
        assert not backend.folds and "Summary" not in reply.prompt
    finally:
        await shut(eng)


# --- the real default model, end to end over HTTP ------------------------------------------------

class SmallWindow:
    """The session's real chat model seen through a 512-token window, as with ``n_ctx: 512`` in bot.yaml."""

    def __init__(self, backend):
        self.backend, self.n_ctx = backend, N_CTX

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.mark.timeout(1800)          # a minute on an idle 2-core machine; much longer on a loaded one
async def test_real_model_summary_and_pins_over_http(engine):
    from bot.http.context import HttpContext
    from bot.http.metrics import Metrics
    from bot.http.server import HttpServer

    # Short replies and one fold of a short summary keep the real model's work small; long user messages
    # make turn 1 leave the 512-token window well before turn 12.
    config = make_config({"models": {"chat": {"n_ctx": N_CTX, "max_new_tokens": {"policy": "fixed", "fixed": 8}}},
                          "memory": {"summary_tokens": 64, "max_folds": 1, "timeout_s": 600}})
    chat = Engine.make_model("chat", config.models.chat, SmallWindow(engine.models["chat"].backend))
    eng = Engine(models={"chat": chat, "roleplay": engine.models["roleplay"]}, store=engine.store,
                 limits=config.limits, cards_cfg=config.cards, memory_cfg=config.memory)
    server = HttpServer(HttpContext(eng, config, secrets(), Metrics()), "127.0.0.1", 0)
    await server.start()
    base, session = f"http://127.0.0.1:{server.port}", f"memory-{uuid.uuid4().hex[:8]}"
    try:
        async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as s:
            for i in range(1, 13):
                r = await s.post(base + "/Llama_stream", json={"input_data": said(i) + STORY, "session": session})
                assert r.status == 200 and (await r.text()).strip()
                if i == 1:
                    r = await s.post(base + f"/conversations/{session}/pins",
                                     json={"text": "The secret word is Snorfglax."})
                    assert r.status == 201, await r.text()
            await eng.memory.summarizer.settle(600)
            r = await s.get(base + f"/conversations/{session}?limit=1000")
            conv = await r.json()
        turn1 = conv["messages"][0]
        assert turn1["content"] == said(1) + STORY
        summary = conv["summary"]
        assert summary and summary["text"].strip(), eng.memory.summarizer.counts
        assert summary["covers"]["from_id"] == turn1["id"] and summary["covers"]["from_ts"] <= turn1["ts"]
        assert summary["covers"]["to_ts"] >= turn1["ts"] and summary["covers"]["messages"] >= 2
        assert [p["text"] for p in conv["pins"]] == ["The secret word is Snorfglax."]
        assert len(conv["messages"]) == 24                                   # every message still stored
    finally:
        await server.stop()
        await eng.memory.close()
        chat.queue.close()
