"""The Telegram adapter: the real python-telegram-bot client and the real engine (SmolLM2) against a fake Bot API."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from pathlib import Path

import pytest
from telegram import Bot

from bot.i18n import section
from bot.streaming import deliver
from bot.telegram.adapter import TelegramSurface
from bot.telegram.characters import CAPTION_LIMIT, trim
from bot.telegram.config import TelegramConfig
from bot.journal import Entry
from bot.telegram.pacing import Pacer
from bot.telegram.sinks import ChatTransport, DraftSink, EditingSink, Typing
from bot.telegram.texts import TEXTS
from engine.cards.image import placeholder
from engine.cards.macros import apply_macros
from engine.engine import Engine
from engine.settings import MaxTokens
from engine.types import Speaker, Turn
from tests.fake_telegram import FakeTelegram

ROOT = Path(__file__).resolve().parents[1]
_bot_ids = itertools.count(900001)     # a bot of its own per test: journal keys never meet


@contextlib.contextmanager
def longer_replies(engine: Engine, tokens: int):
    """The shared engine's chat model writing longer replies for one test (so a reply is still in flight)."""
    model = engine.models["chat"]
    engine.models["chat"] = dataclasses.replace(model, cfg=model.cfg.model_copy(
        update={"max_new_tokens": MaxTokens(policy="fixed", fixed=tokens)}))
    try:
        yield
    finally:
        engine.models["chat"] = model


def tg_config(fake: FakeTelegram, **overrides) -> TelegramConfig:
    values = dict(base_url=fake.base_url, base_file_url=fake.base_file_url, draft_interval_s=0.1,
                  edit_interval_s=0.2, group_messages_per_minute=300, poll_timeout_s=1, stop_grace_s=3,
                  max_backoff_s=0.5)
    values.update(overrides)
    return TelegramConfig(**values)


class Harness:
    """A fake Bot API server and the Telegram surface running against it."""

    def __init__(self, engine: Engine, fake: FakeTelegram, **cfg):
        self.engine, self.fake, self.cfg = engine, fake, cfg
        self.surface: TelegramSurface | None = None

    async def start(self) -> "Harness":
        self.surface = TelegramSurface(self.engine, tg_config(self.fake, **self.cfg), self.fake.token, "ko")
        await self.surface.start()
        await asyncio.wait_for(self.surface.ready.wait(), 30)
        return self

    async def stop(self) -> None:
        if self.surface:
            await self.surface.stop()
            self.surface = None

    def key(self, update_id: int) -> str:
        return f"telegram:{self.fake.bot_id}:{update_id}"

    async def done(self, update_id: int, timeout: float = 90.0) -> dict:
        """Wait until the update is marked done in the journal; its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = await self.engine.store.inbox_get(self.key(update_id))
            if doc and doc["state"] == "done":
                return doc
            await asyncio.sleep(0.05)
        raise AssertionError(f"update {update_id} not done; calls {[(c.method, c.status) for c in self.fake.calls]}")

    async def reply_text(self, user_id: int, chat_id: int, update_id: int) -> str:
        """The engine's stored reply to one update (the conversation the update went to)."""
        for conv in await self.engine.store.conversations_of(f"telegram:{user_id}"):
            if conv["scope"] == f"telegram:chat:{chat_id}":
                found = await self.engine.store.db.messages.find_one(      # complete or partial
                    {"conv_id": conv["_id"], "request_key": self.key(update_id), "role": "assistant"})
                if found:
                    return found["content"]
        raise AssertionError("no stored reply")


@pytest.fixture
async def fake() -> FakeTelegram:
    server = await FakeTelegram(bot_id=next(_bot_ids)).start()
    yield server
    await server.stop()


@pytest.fixture
async def tg(engine, fake) -> Harness:
    harness = await Harness(engine, fake).start()
    yield harness
    await harness.stop()


async def test_start_greets_in_the_users_language_and_registers_the_menu(tg, fake):
    u1 = fake.send_text(501, "/start", first_name="민수", language_code="ko-KR")
    u2 = fake.send_text(502, "/start@llm_test_bot", first_name="Ann", language_code="en")
    await tg.done(u1), await tg.done(u2)
    assert fake.sent_texts(501) == [TEXTS["start"]["ko"].format(name="민수")]
    assert fake.sent_texts(502) == [TEXTS["start"]["en"].format(name="Ann")]
    assert {"ko", "en"} <= set(fake.commands)
    assert "characters" in [c["command"] for c in fake.commands["ko"]]
    assert fake.commands["ko"] != fake.commands["en"]
    switch = fake.send_text(502, "/lang ko", language_code="en")
    await tg.done(switch)
    helped = fake.send_text(502, "/help", language_code="en")
    await tg.done(helped)
    assert fake.sent_texts(502)[1:] == [TEXTS["lang_set"]["ko"], TEXTS["help"]["ko"]]


async def test_users_and_groups_not_allowed_are_refused_politely(engine, fake):
    tg = await Harness(engine, fake, permissions={"allowed_user_ids": [701], "allowed_chat_ids": [-100700]}).start()
    try:
        stranger = fake.send_text(702, "hello", language_code="ko")
        elsewhere = fake.send_text(-100799, "@llm_test_bot hello", user_id=701)
        await tg.done(stranger), await tg.done(elsewhere)
        assert fake.sent_texts(702) == [TEXTS["not_allowed"]["ko"]]
        assert fake.sent_texts(-100799) == [TEXTS["chat_not_allowed"]["en"]]
    finally:
        await tg.stop()


async def test_dm_text_streams_drafts_then_one_final_message_equal_to_the_reply(tg, fake):
    fake.fail_next("sendMessage", 1, retry_after=1)       # the final message meets a 429 once
    update_id = fake.send_text(511, "Tell me about the sea in a few sentences.")
    await tg.done(update_id)
    reply = await tg.reply_text(511, 511, update_id)
    drafts = fake.calls_of("sendMessageDraft", 511)
    assert drafts, "no draft was streamed"
    assert len({c.params["draft_id"] for c in drafts}) == 1
    assert all(reply.startswith(c.params["text"]) for c in drafts)
    finals = fake.calls_of("sendMessage", 511)
    assert [c.text for c in finals] == [reply] and reply.strip()
    assert finals[0].t > drafts[-1].t
    tries = [c for c in fake.calls if c.method == "sendMessage"]
    assert [c.status for c in tries] == [429, 200] and tries[1].t - tries[0].t >= 1.0
    assert fake.calls_of("sendChatAction", 511)
    assert not fake.calls_of("editMessageText", 511)


async def test_drafts_refused_fall_back_to_edits_and_are_remembered(engine, fake):
    fake.drafts_supported = False
    tg = await Harness(engine, fake).start()
    try:
        first = fake.send_text(521, "Hello! What can you do?")
        await tg.done(first)
        reply = await tg.reply_text(521, 521, first)
        assert len(fake.calls_of("sendMessage", 521)) == 1
        assert fake.calls_of("editMessageText", 521), "the fallback did not stream by edits"
        assert fake.sent_texts(521) == [reply]
        assert await engine.store.get_pref("telegram:chat:521", "stream") == "edits"
    finally:
        await tg.stop()


async def test_group_mention_streams_by_send_and_edits_others_are_ignored(tg, fake):
    group = -100512
    fake.fail_next("editMessageText", 1, retry_after=1)
    ignored = fake.send_text(group, "people talking among themselves", user_id=531)
    update_id = fake.send_text(group, "@llm_test_bot what is the capital of France?", user_id=531)
    await tg.done(update_id)
    assert (await tg.done(ignored))["result"]["outcome"] == "ignored"
    reply = await tg.reply_text(531, group, update_id)
    sends = fake.calls_of("sendMessage", group)
    assert len(sends) == 1
    assert sends[0].params["reply_parameters"]["message_id"] > 0
    edits = fake.calls_of("editMessageText", group)
    assert edits and edits[0].t > sends[0].t
    tries = [c for c in fake.calls if c.method == "editMessageText"]
    assert tries[0].status == 429 and tries[1].t - tries[0].t >= 1.0 and tries[1].text == tries[0].text
    assert fake.sent_texts(group) == [reply]
    assert not fake.calls_of("sendMessageDraft")
    # Another member has a conversation of their own; replying to the bot's message addresses it.
    assert all(c.status != 400 for c in fake.calls if c.method == "editMessageText"), "an unchanged edit was sent"
    bot_msg = fake.bot_message(group, next(m for (c, m) in fake.texts if c == group))
    other = fake.send_text(group, "and Germany?", user_id=532, reply_to=bot_msg)
    await tg.done(other)
    assert await tg.reply_text(532, group, other)
    convs = {c["owner"] for c in await tg.engine.store.conversations_of("telegram:532")}
    assert convs == {"telegram:532"}


async def test_stop_cancels_the_reply_in_flight(engine, fake):
    tg = await Harness(engine, fake).start()
    try:
        with longer_replies(engine, 400):
            talk = fake.send_text(541, "Write a very long story about a dragon and a knight.")
            await fake.wait_for(lambda: fake.calls_of("sendMessageDraft", 541), timeout=60)
            stop = fake.send_text(541, "/stop")
            await tg.done(stop), await tg.done(talk)
        texts = fake.sent_texts(541)
        assert texts[-1] == section("errors")["cancelled"]["en"]
        partial = await tg.reply_text(541, 541, talk)
        assert texts[:-1] == [partial]
        conv = next(c for c in await engine.store.conversations_of("telegram:541"))
        stored = await engine.store.db.messages.find_one({"conv_id": conv["_id"], "request_key": tg.key(talk),
                                                          "role": "assistant"})
        assert stored["status"] == "cancelled" and stored["content"] == partial
        assert await engine.store.find_reply(conv["_id"], tg.key(talk)) is None   # a partial reply is not replayed
        idle = fake.send_text(541, "/stop")
        await tg.done(idle)
        assert fake.sent_texts(541)[-1] == TEXTS["nothing_to_stop"]["en"]
    finally:
        await tg.stop()


async def test_characters_keyboard_then_photo_caption_and_first_message(tg, fake, engine):
    listing = fake.send_text(561, "/characters")
    await tg.done(listing)
    keyboard = fake.calls_of("sendMessage", 561)[0].params["reply_markup"]["inline_keyboard"]
    names = [row[0]["text"] for row in keyboard]
    assert names == engine.characters().names() and names
    name = names[0]
    press = fake.press_button(561, keyboard[0][0]["callback_data"])
    await tg.done(press)
    assert fake.calls_of("answerCallbackQuery")
    photos = fake.calls_of("sendPhoto", 561)
    assert len(photos) == 1
    card = engine.characters().get(name)
    assert photos[0].params["photo"] == (card.image or placeholder(card.name))
    assert photos[0].params["caption"] == trim(apply_macros(card.description, card.display_name, "Tester").strip(),
                                               CAPTION_LIMIT)
    greeting = engine.characters().character(name).greeting or card.first_mes
    assert fake.sent_texts(561)[-1] == apply_macros(greeting, card.display_name, "Tester")
    assert fake.calls_of("sendMessage", 561)[-1].t > photos[0].t
    assert await engine.store.get_pref("telegram:561", "character|telegram:chat:561") == name
    unknown = fake.send_text(561, "/character Nobody")
    await tg.done(unknown)
    assert fake.sent_texts(561)[-1] == TEXTS["unknown_character"]["en"].format(name="Nobody")


async def test_import_is_for_admins_and_checks_the_card(engine, fake):
    tg = await Harness(engine, fake, permissions={"admin_user_ids": [571]}).start()
    try:
        card = (ROOT / "tests/data/cards/v3_lumen.json").read_bytes()
        refused = fake.send_document(572, card, "lumen.json", "/import")
        bad = fake.send_document(571, b"{not json", "broken.json", "/import")
        await tg.done(refused), await tg.done(bad)
        assert fake.sent_texts(572) == [TEXTS["admin_only"]["en"]]
        assert fake.sent_texts(571)[0].startswith("The card cannot be read (bad_json)")
        ok = fake.send_document(571, card, "lumen.json", "/import")
        await tg.done(ok)
        stored = {c["name"] for c in await engine.store.list_characters()}   # other tests may import too
        name = "Lu"                                                              # the V3 card's nickname
        assert name in stored
        assert fake.sent_texts(571)[-1] == TEXTS["import_ok"]["en"].format(name=name)
        assert engine.characters().get(name) is not None
    finally:
        await tg.stop()


async def test_restart_handles_nothing_twice_and_resumes_what_was_cut_off(engine, fake):
    first = await Harness(engine, fake).start()
    answered = fake.send_text(581, "/help")
    await first.done(answered)
    answered_update = {"update_id": answered, "message": fake.message_payload(581, "/help")}
    await first.stop()
    # State a crash leaves: one update recorded but not handled, one whose whole reply was already sent.
    cut_off = 10_000
    payload = {"update_id": cut_off, "message": fake.message_payload(582, "What is two plus two?")}
    await engine.store.inbox_add(first.key(cut_off), payload)
    sent_key = first.key(10_001)
    sent_turn = Turn(Speaker("telegram:583", "Tester", "en"), "telegram:chat:583", "Hello!", request_key=sent_key)
    reply = engine.reply(sent_turn)
    async for _ in reply:
        pass
    await engine.store.inbox_add(sent_key, {"update_id": 10_001, "message": fake.message_payload(583, "Hello!")})
    await engine.store.inbox_progress(sent_key, {"attempts": 1, "sent_chars": len(reply.text)})
    # The server hands out the answered update again (it was never confirmed).
    fake.updates.append(answered_update)
    before = len(fake.calls_of("sendMessage", 581))
    second = await Harness(engine, fake).start()
    try:
        await second.done(cut_off)
        await second.done(10_001)
        assert [c.text for c in fake.calls_of("sendMessage", 582)] == [await second.reply_text(582, 582, cut_off)]
        assert not fake.calls_of("sendMessage", 583)
        await fake.wait_for(lambda: answered not in [u["update_id"] for u in fake.updates], timeout=10)
        await asyncio.sleep(0.3)
        assert len(fake.calls_of("sendMessage", 581)) == before
    finally:
        await second.stop()


async def test_server_down_at_start_is_retried_until_it_comes_back(engine):
    fake = FakeTelegram(bot_id=next(_bot_ids))
    await fake.start()
    port = fake.port
    await fake.stop()
    tg = Harness(engine, fake)
    tg.surface = TelegramSurface(engine, tg_config(fake), fake.token, "ko")
    await tg.surface.start()
    try:
        await asyncio.sleep(1.5)
        assert not tg.surface.ready.is_set()
        fake.port = port
        await fake.start()
        await asyncio.wait_for(tg.surface.ready.wait(), 20)
        update_id = fake.send_text(591, "/help")
        await tg.done(update_id)
        assert fake.sent_texts(591) == [TEXTS["help"]["en"]]
    finally:
        await tg.stop()
        await fake.stop()


async def test_webhook_mode_registers_the_url_and_answers_posted_updates(engine, fake):
    from engine.store.embedded import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/tg-hook"
    tg = Harness(engine, fake, mode="webhook", webhook={"listen": "127.0.0.1", "port": port, "url": url,
                                                        "path": "tg-hook"})
    tg.surface = TelegramSurface(engine, tg_config(fake, **tg.cfg), fake.token, "ko", webhook_secret="s3cret")
    await tg.surface.start()
    try:
        await asyncio.wait_for(tg.surface.ready.wait(), 30)
        assert fake.webhook == {"url": url, "secret_token": "s3cret"}
        update_id = fake.send_text(611, "/help", queue=False)
        assert await fake.post_to_webhook(fake.last_update, secret="wrong") == 403
        assert await fake.post_to_webhook(fake.last_update) == 200
        await tg.done(update_id)
        assert fake.sent_texts(611) == [TEXTS["help"]["en"]]
        assert not fake.calls_of("getUpdates")
    finally:
        await tg.stop()


# The model cannot be made to write 5000 characters on demand, so these feed the sinks a scripted text.
async def _scripted(text: str, size: int = 97):
    for i in range(0, len(text), size):
        yield text[i:i + size]
        await asyncio.sleep(0)


LONG = "".join(f"Line {i}: " + "lorem ipsum dolor sit amet " * (i % 7 + 1) + "\n" for i in range(120))[:5000]


@pytest.mark.parametrize("chat_id, sink_kind", [(601, "draft"), (-100602, "edit")])
async def test_a_5000_character_reply_is_split_with_nothing_lost(fake, chat_id, sink_kind):
    assert len(LONG) == 5000
    async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as bot:
        pacer = Pacer(lambda _: 0.0, 1000)
        transport = ChatTransport(bot, pacer, chat_id)
        entry = Entry("telegram:test:1", None)
        typing = Typing(bot, chat_id, 4.0)
        if sink_kind == "draft":
            sink = DraftSink(transport, 1, entry, typing, on_unsupported=None)
        else:
            sink = EditingSink(transport, entry, typing)
        text = await deliver(_scripted(LONG), sink, interval=0.0, describe_error=lambda e: None)
    pages = fake.sent_texts(chat_id)
    assert text == LONG
    assert len(pages) == 2 and all(len(p) <= 4096 for p in pages)
    assert "".join(pages) == LONG
    assert pages[0].endswith("\n")
    if sink_kind == "draft":
        assert len(fake.calls_of("sendMessage", chat_id)) == 2
        assert all(len(c.params["text"]) <= 4096 for c in fake.calls_of("sendMessageDraft", chat_id))
    else:
        assert fake.calls_of("editMessageText", chat_id)
        assert all(c.status != 400 for c in fake.calls if c.method == "editMessageText")


async def test_memory_pin_unpin_and_forget(tg, fake, engine):
    from bot.i18n import section

    MEMORY = section("memory")
    uid = 6131
    conv = await engine.conversation_for(Turn(speaker=Speaker(f"telegram:{uid}"), scope=f"telegram:chat:{uid}", text=""))
    await engine.edit_summary(conv, "Ana is planning a trip to Jeju.", by="test")
    for text in ("/memory", "/pin My cat is Blorvik.", "/unpin 5", "/memory", "/forget", "/memory", "/pin"):
        await tg.done(fake.send_text(uid, text, language_code="en"))
    shown, pinned, missing, shown2, forgot, shown3, usage = fake.sent_texts(uid)
    assert "Ana is planning a trip to Jeju." in shown and MEMORY["no_pins"]["en"] in shown
    assert pinned == "Pinned as #1: My cat is Blorvik."
    assert missing == "There is no pinned fact number 5 (there are 1)."
    assert "1. My cat is Blorvik." in shown2
    assert forgot == MEMORY["forgot"]["en"]
    assert MEMORY["no_summary"]["en"] in shown3 and MEMORY["no_pins"]["en"] in shown3
    assert usage == TEXTS["pin_usage"]["en"]
    assert (await engine.memory_of(conv))["summary"]["text"] == ""
