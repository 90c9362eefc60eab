"""Platform failures never lose text: a failed avatar change, a 403 on a channel, a deleted message, a 5xx."""
from __future__ import annotations

import itertools

import pytest

from bot.streaming import EditSink, MessageGone, PathClosed, Undeliverable
from tests.fake_telegram import FakeTelegram
from tests.test_discord import INDICATOR, LONG, bot_replies, opt, running, scripted_engine, shown, stored_reply
from tests.test_telegram import Harness

_bot_ids = itertools.count(960001)
SHORT = "The lamp turns all night, and the ships pass safely by the rocks."
WAIT = 180.0          # seconds: generous, the machines running these tests are shared


# --- the shared fallback in EditSink ------------------------------------------------------------------

class Path:
    """A transport that keeps its messages and can refuse (PathClosed) or lose a message (MessageGone)."""

    def __init__(self, limit: int = 50, refuse_after: int | None = None):
        self.limit, self.refuse_after = limit, refuse_after
        self.messages: list[str] = []
        self.gone: set[int] = set()
        self.calls = 0

    async def send(self, text: str) -> int:
        self._count()
        self.messages.append(text)
        return len(self.messages) - 1

    async def edit(self, handle: int, text: str) -> None:
        self._count()
        if handle in self.gone:
            raise MessageGone("deleted")
        self.messages[handle] = text

    def _count(self) -> None:
        self.calls += 1
        if self.refuse_after is not None and self.calls > self.refuse_after:
            raise PathClosed("403")


async def test_edit_sink_moves_to_the_next_path_and_resends_a_deleted_page():
    text = "".join(f"word{i} " for i in range(40))
    first, second = Path(refuse_after=3), Path()
    sink = EditSink(first, fallbacks=[second])
    for end in range(20, len(text) + 1, 20):
        await sink.update(text[:end])
    second.gone.add(len(second.messages) - 1)          # someone deletes the message being written
    await sink.finish(text)
    kept = [m for m in first.messages if not m.endswith(INDICATOR)]   # complete pages on the refused path
    assert "".join(kept) + "".join(m for i, m in enumerate(second.messages) if i not in second.gone) == text
    assert not any(m.endswith(INDICATOR) for i, m in enumerate(second.messages) if i not in second.gone)


async def test_edit_sink_with_every_path_refused_is_undeliverable():
    sink = EditSink(Path(refuse_after=0), fallbacks=[Path(refuse_after=0)])
    with pytest.raises(Undeliverable):
        await sink.finish("hello")


# --- Discord -------------------------------------------------------------------------------------------

def webhook_messages(fake) -> list[dict]:
    return [m for m in fake.messages.values() if m.get("webhook_id") and m["webhook_id"] != str(fake.app_id)]


@pytest.mark.parametrize("status", [404, 429, 403])
async def test_roleplay_whose_avatar_change_fails_still_speaks_as_the_character(engine, status):
    name = engine.characters().names()[0]
    eng = scripted_engine(engine, SHORT)
    async with running(eng) as (fake, surface):
        fake.inject("PATCH", r"^/webhooks/\d+$", times=20, status=status, retry_after=0.1)
        inter = await fake.slash("roleplay", [opt("character", name), opt("message", "Hello there!")], user_id=401)

        def done():
            msgs = webhook_messages(fake)
            return msgs if msgs and not msgs[-1]["content"].endswith(INDICATOR) else None
        msgs = await fake.wait_for(done, WAIT, "the character's webhook reply")
        assert any(r[0] == "PATCH" and r[1].startswith("/webhooks/") and "/messages" not in r[1]
                   for r in fake.requests), "the avatar change was not tried"
        assert all(m["author"]["username"] == name for m in msgs)
        assert msgs[0]["author"]["avatar"] is None                       # the webhook's old avatar
        assert shown(msgs) == SHORT == await stored_reply(eng, f"discord:msg:{msgs[0]['id']}")
        assert fake.original(inter)["content"] == "> Hello there!"
        assert surface.conversations.personas.avatar_failures == 1
        assert not any("went wrong" in m["content"] for m in fake.messages.values())


async def test_a_deleted_webhook_falls_back_to_the_embed(engine):
    name = engine.characters().names()[1]
    eng = scripted_engine(engine, SHORT)
    async with running(eng) as (fake, surface):
        await fake.slash("roleplay", [opt("character", name), opt("message", "Hi!")], user_id=402)
        await fake.wait_for(lambda: surface.conversations.replies_done >= 1, WAIT)
        fake.webhooks.clear()                       # deleted by a moderator: avatar change and send both 404
        inter = await fake.slash("roleplay", [opt("character", name), opt("message", "Still there?")], user_id=402)
        await fake.wait_for(lambda: surface.conversations.replies_done >= 2, WAIT)
        embeds = [m for m in fake.reply_messages(inter) if m["embeds"]]
        assert embeds and embeds[0]["embeds"][0]["author"]["name"] == name
        text = "".join(m["embeds"][0]["description"] for m in embeds)
        assert text == SHORT == await stored_reply(eng, f"discord:msg:{embeds[0]['id']}")


async def test_a_channel_that_refuses_the_bot_gets_the_reply_in_dms(engine):
    eng = scripted_engine(engine, SHORT)
    async with running(eng) as (fake, surface):
        cid = fake.channel_ids[1]
        fake.forbidden_channels.add(cid)
        await fake.post("What is a lighthouse?", user_id=403, channel_id=cid, mention_bot=True)
        dm = fake.dm_channel_id(403)
        msgs = await fake.wait_for(lambda: [m for m in bot_replies(fake, dm) if not m["content"].endswith(INDICATOR)],
                                   WAIT, "the reply in DMs")
        assert not bot_replies(fake, cid)
        assert shown(msgs) == SHORT == await stored_reply(eng, f"discord:msg:{msgs[0]['id']}")


async def test_a_deleted_reply_message_continues_in_a_new_one(engine):
    eng = scripted_engine(engine, LONG[:800], delay=0.05)
    async with running(eng) as (fake, surface):
        inter = await fake.slash("chat", [opt("message", "go")], user_id=404)
        await fake.wait_for(lambda: fake.original(inter) and fake.original(inter)["content"], WAIT)
        fake.delete(inter.original_id)
        await fake.wait_for(lambda: surface.conversations.replies_done >= 1, WAIT)
        msgs = fake.reply_messages(inter)
        assert shown(msgs) == LONG[:800] == await stored_reply(eng, f"discord:msg:{msgs[0]['id']}")


async def test_a_discord_5xx_moves_the_reply_to_a_channel_message(engine):
    eng = scripted_engine(engine, LONG[:800], delay=0.05)
    async with running(eng) as (fake, surface):
        inter = await fake.slash("chat", [opt("message", "go")], user_id=405)
        await fake.wait_for(lambda: fake.original(inter) and fake.original(inter)["content"], WAIT)
        fake.inject("PATCH", r"/messages/@original$", times=50, status=503)
        await fake.wait_for(lambda: surface.conversations.replies_done >= 1, WAIT)
        channel = [m for m in fake.channel_messages(fake.channel_ids[0]) if not m.get("interaction_metadata")]
        assert shown(channel) == LONG[:800]


# --- Telegram ------------------------------------------------------------------------------------------

@pytest.fixture
async def tg(engine):
    fake = await FakeTelegram(bot_id=next(_bot_ids)).start()
    harness = await Harness(engine, fake).start()
    yield harness
    await harness.stop()
    await fake.stop()


async def test_telegram_edit_of_a_deleted_message_continues_in_a_new_one(tg):
    fake, group = tg.fake, -100601
    fake.fail_next("editMessageText", 1, status=400, description="Bad Request: message to edit not found")
    update_id = fake.send_text(group, "@llm_test_bot tell me about the moon", user_id=611)
    doc = await tg.done(update_id)
    assert doc["result"]["outcome"] == "reply"
    reply = await tg.reply_text(611, group, update_id)
    assert len(fake.calls_of("sendMessage", group)) == 2            # the first message was "deleted"
    assert fake.texts[(group, max(m for (c, m) in fake.texts if c == group))] == reply


async def test_telegram_blocked_is_logged_once_and_not_retried(tg, caplog):
    fake, chat = tg.fake, 612
    fake.fail_next("sendMessage", 1, status=403, description="Forbidden: bot was blocked by the user")
    update_id = fake.send_text(chat, "Hello?", user_id=612)
    doc = await tg.done(update_id)
    assert doc["result"]["outcome"] == "undeliverable"
    tries = [c for c in fake.calls if c.method == "sendMessage" and c.chat_id == chat]
    assert [c.status for c in tries] == [403]                   # tried once, not retried
    assert len([r for r in caplog.records if "refused every way" in r.getMessage()]) == 1
    later = fake.send_text(chat, "/help", user_id=612)          # unblocked: the bot answers again
    await tg.done(later)
    assert len(fake.calls_of("sendMessage", chat)) == 1


@pytest.mark.parametrize("method,chat", [("sendMessage", 613), ("editMessageText", -100614)])
async def test_telegram_5xx_is_retried_and_the_reply_arrives_once(tg, method, chat):
    fake = tg.fake
    fake.fail_next(method, 1, status=502, description="Bad Gateway")
    text = "Hello there" if chat > 0 else "@llm_test_bot hello there"
    update_id = fake.send_text(chat, text, user_id=615)
    await tg.done(update_id)
    reply = await tg.reply_text(615, chat, update_id)
    assert fake.sent_texts(chat) == [reply]
    assert [c.status for c in fake.calls if c.method == method].count(502) == 1
