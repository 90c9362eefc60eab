"""The Discord adapter: the real discord.py client against tests/fake_discord.py, on the shared real engine."""
from __future__ import annotations

import asyncio
import contextlib
import threading


from bot.config import Loaded
from bot.discord.adapter import DiscordSurface, make_surface
from engine.backends.base import Finish
from engine.engine import Engine
from tests.conftest import ROOT, make_config, secrets
from tests.fake_discord import FakeDiscord

INDICATOR = " ▌"


def loaded_for(fake: FakeDiscord, **discord) -> Loaded:
    # 0.5 s between edits: a short reply fits in Discord's 5 writes per 5 s of a channel. At 0.1 s each reply
    # spent its 5 writes in its first half-second and its final text waited ~5 s for the window.
    cfg = {"api_base_url": fake.api_base_url, "gateway_url": fake.gateway_url, "edit_interval_s": 0.5, **discord}
    return Loaded(config=make_config({"discord": cfg}), secrets=secrets(DISCORD_TOKEN="test-token"),
                  path=ROOT / "bot.yaml")


@contextlib.asynccontextmanager
async def running(engine, fake_kw: dict | None = None, **discord):
    fake = await FakeDiscord(**(fake_kw or {})).start()
    surface: DiscordSurface = make_surface(engine, loaded_for(fake, **discord))
    try:
        await surface.start()
        await surface.wait_ready(20)
        yield fake, surface
    finally:
        await surface.stop()
        await fake.close()


def opt(name: str, value, kind: int = 3) -> dict:
    return {"name": name, "type": kind, "value": value}


def sub(name: str, *options: dict) -> dict:
    return {"name": name, "type": 1, "options": list(options)}


def shown(messages: list[dict]) -> str:
    return "".join(m["content"] for m in messages)


async def finished(fake: FakeDiscord, surface: DiscordSurface, inter=None, n: int = 1,
                   timeout: float = 60.0) -> list[dict]:
    """The reply's messages once the adapter has delivered ``n`` replies in all."""
    await fake.wait_for(lambda: surface.conversations and surface.conversations.replies_done >= n, timeout,
                        "the reply to finish")
    return fake.reply_messages(inter) if inter is not None else []


async def stored_reply(engine, conv_key: str) -> str:
    conv = await engine.linked_conversation(conv_key)
    msgs = await engine.history(conv, 10)
    return [m for m in msgs if m["role"] == "assistant"][-1]["content"]


# --- /chat ----------------------------------------------------------------------------------------

async def test_chat_defers_edits_and_ends_with_the_engine_text(engine):
    async with running(engine) as (fake, surface):
        assert {c["name"] for c in fake.commands} == {"chat", "roleplay", "character", "scene", "reset", "stop", "help",
                                                      "lang", "memory"}
        chat = next(c for c in fake.commands if c["name"] == "chat")
        assert chat["description_localizations"]["ko"]
        inter = await fake.slash("chat", [opt("message", "Tell me about the sea in three sentences.")])
        msgs = await finished(fake, surface, inter)
        assert inter.callback["type"] == 5                       # deferred first
        history = fake.history[inter.original_id]
        assert len(history) >= 3                                 # "" (thinking) + at least two edits
        assert any(h.endswith(INDICATOR) for h in history[1:-1])
        final = shown(msgs)
        assert final.strip()
        assert final == await stored_reply(engine, f"discord:msg:{inter.original_id}")
        assert fake.noop_edits == 0
        assert fake.count_429 == 0 and surface.counters.rate_limited == 0


# --- a scripted text source, only where the model cannot give what a test needs --------------------

class Scripted:
    """A TextGenerator that writes a fixed text in pieces (a 3000-character reply, a slow reply to stop)."""

    n_ctx = 8192

    def __init__(self, text: str, delay: float = 0.0, chunk: int = 40):
        self.text, self.delay, self.chunk = text, delay, chunk
        self.prompts: list[str] = []          # every prompt it was given, for tests that look at them

    def render(self, messages):
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text):
        return len(text) // 4

    def generate(self, prompt, sampling, cancel: threading.Event, emit):
        self.prompts.append(prompt)
        for i in range(0, len(self.text), self.chunk):
            if cancel.is_set():
                return Finish(tokens=i // 4, reason="cancelled")
            emit(self.text[i:i + self.chunk])
            if self.delay:
                cancel.wait(self.delay)
        return Finish(tokens=len(self.text) // 4)

    def info(self):
        return {"name": "scripted"}

    def close(self):
        pass


def scripted_engine(engine, text: str, delay: float = 0.0) -> Engine:
    """The real Engine and store, with a scripted backend in place of the model."""
    model = Engine.make_model("chat", engine.models["chat"].cfg, Scripted(text, delay))
    return Engine(models={"chat": model, "roleplay": model}, store=engine.store, limits=engine.limits,
                  cards_cfg=engine.cards_cfg, characters=engine.registry)


LONG = "".join(f"Line {i:03d}: the river runs past the old mill and on toward the sea.\n" for i in range(48))


async def test_a_reply_over_2000_chars_is_split_with_nothing_lost(engine):
    assert len(LONG) > 3000
    eng = scripted_engine(engine, LONG, delay=0.005)
    async with running(eng) as (fake, surface):
        inter = await fake.slash("chat", [opt("message", "Write a long text.")], user_id=301)
        msgs = await finished(fake, surface, inter)
        assert len(msgs) >= 2
        assert all(len(m["content"]) <= 2000 for m in msgs)
        reply = await stored_reply(eng, f"discord:msg:{inter.original_id}")
        assert shown(msgs) == reply and len(reply) >= 3000 and LONG.startswith(reply)
        assert not shown(msgs).endswith(INDICATOR) and INDICATOR not in shown(msgs)
        assert msgs[0]["content"].endswith("\n")                 # cut at a line boundary
        assert fake.noop_edits == 0


async def test_a_429_is_waited_out_and_no_text_is_dropped(engine):
    async with running(engine) as (fake, surface):
        fake.inject("PATCH", r"/messages/@original$", times=1, retry_after=0.3)
        inter = await fake.slash("chat", [opt("message", "Say hello to the moon.")], user_id=302)
        msgs = await finished(fake, surface, inter)
        assert fake.count_429 == 1 and surface.counters.rate_limited == 1
        assert shown(msgs) == await stored_reply(engine, f"discord:msg:{inter.original_id}")


async def test_a_channel_limit_with_headers_gets_no_429(engine):
    eng = scripted_engine(engine, LONG[:1500], delay=0.02)
    # Edits every 0.1 s from 3 replies: far past 5 per 2 s unless the pacer holds them back.
    async with running(eng, {"channel_limit": (5, 2.0)}, channel_edits=5, channel_edit_window_s=2.0,
                       edit_interval_s=0.1) as (fake, s):
        inters = [await fake.slash("chat", [opt("message", "go")], user_id=310 + i) for i in range(3)]
        await finished(fake, s, n=3, timeout=90)
        for inter in inters:
            msgs = fake.reply_messages(inter)
            assert shown(msgs) == LONG[:1500] or shown(msgs) == LONG[:1500].strip()
        assert fake.count_429 == 0 and s.counters.rate_limited == 0


# --- mentions, DMs, threads, reply chains ------------------------------------------------------------

def bot_replies(fake: FakeDiscord, cid: int) -> list[dict]:
    return [m for m in fake.channel_messages(cid) if m["author"]["id"] == str(fake.app_id)]


async def wait_bot_reply(fake, cid, n=1, timeout=60):
    def done():
        msgs = bot_replies(fake, cid)
        return msgs if len(msgs) >= n and not msgs[-1]["content"].endswith(INDICATOR) else None
    return await fake.wait_for(done, timeout, "a finished bot reply")


async def test_mention_reply_chain_thread_and_dm(engine):
    async with running(engine) as (fake, surface):
        cid = fake.channel_ids[1]
        user_msg = await fake.post("What is a lighthouse?", user_id=303, channel_id=cid, mention_bot=True)
        first = (await wait_bot_reply(fake, cid))[-1]
        assert str(first["message_reference"]["message_id"]) == user_msg["id"]
        assert cid in fake.typing
        conv = await engine.linked_conversation(f"discord:msg:{first['id']}")
        assert first["content"] == await stored_reply(engine, f"discord:msg:{first['id']}")
        assert (await engine.conversation(conv))["scope"] == f"discord:channel:{cid}"

        # a reply to the bot's message continues that conversation
        await fake.post("And who keeps it?", user_id=303, channel_id=cid, mention_bot=True, reply_to=int(first["id"]))
        second = (await wait_bot_reply(fake, cid, 2))[-1]
        assert await engine.linked_conversation(f"discord:msg:{second['id']}") == conv
        assert len([m for m in await engine.history(conv, 20) if m["role"] == "user"]) == 2

        # a thread keeps its own conversation
        await fake.post("Hello in the thread", user_id=303, channel_id=fake.thread_id, mention_bot=True)
        in_thread = (await wait_bot_reply(fake, fake.thread_id))[-1]
        tconv = await engine.linked_conversation(f"discord:msg:{in_thread['id']}")
        assert tconv != conv
        assert (await engine.conversation(tconv))["scope"] == f"discord:thread:{fake.thread_id}"

        # a DM
        await fake.post("Hi in private", user_id=303, dm=True)
        dm = (await wait_bot_reply(fake, fake.dm_channel_id(303)))[-1]
        dconv = await engine.linked_conversation(f"discord:msg:{dm['id']}")
        assert (await engine.conversation(dconv))["scope"] == "discord:dm:303"
        assert dm["content"].strip()

        # a message that neither mentions the bot nor replies to it is left alone
        before = len(fake.messages)
        await fake.post("just chatting", user_id=303, channel_id=cid)
        await asyncio.sleep(0.5)
        assert len(fake.messages) == before + 1


async def test_dms_off_and_a_denied_user(engine):
    async with running(engine, allow_dms=False, permissions={"blocked_user_ids": [666]}) as (fake, surface):
        await fake.post("hi", user_id=304, dm=True)
        (msg,) = await fake.wait_for(lambda: bot_replies(fake, fake.dm_channel_id(304)), 10)
        assert "DM" in msg["content"]
        inter = await fake.slash("chat", [opt("message", "hi")], user_id=666, locale="ko")
        await fake.wait_for(lambda: inter.callback, 10)
        assert inter.callback["type"] == 4 and inter.callback["data"]["flags"] & 64
        assert inter.callback["data"]["content"] == "이 봇을 여기서 사용할 권한이 없어요."


# --- characters ------------------------------------------------------------------------------------

async def test_roleplay_through_a_webhook_wearing_the_card_image(engine):
    name = engine.characters().names()[0]
    card = engine.characters().get(name)
    async with running(engine) as (fake, surface):
        inter = await fake.slash("roleplay", [opt("character", name), opt("message", "Hello there!")], user_id=305)

        def webhook_done():
            msgs = [m for m in fake.messages.values() if m.get("webhook_id") and m["webhook_id"] != str(fake.app_id)]
            return msgs if msgs and not msgs[-1]["content"].endswith(INDICATOR) else None
        msgs = await fake.wait_for(webhook_done, 60, "the character's webhook reply")
        assert len(fake.webhooks) == 1
        hook = next(iter(fake.webhooks.values()))
        assert hook["name"] == "llmbot"
        assert all(m["author"]["username"] == name for m in msgs)
        assert fake.avatars[msgs[0]["author"]["avatar"]] == card.image
        assert shown(msgs) == await stored_reply(engine, f"discord:msg:{msgs[0]['id']}")
        assert fake.original(inter)["content"] == "> Hello there!"

        # the same channel's webhook is reused, and the avatar is not set again for the same character
        edits_before = sum(1 for r in fake.requests if r[0] == "PATCH" and r[1] == f"/webhooks/{hook['id']}")
        await fake.slash("roleplay", [opt("character", name), opt("message", "Again!")], user_id=305)
        await fake.wait_for(lambda: len([m for m in fake.messages.values()
                                         if m.get("webhook_id") == hook["id"]]) > len(msgs), 60)
        assert len(fake.webhooks) == 1
        assert sum(1 for r in fake.requests if r[0] == "PATCH" and r[1] == f"/webhooks/{hook['id']}") == edits_before


async def test_roleplay_without_manage_webhooks_uses_an_embed(engine):
    name = engine.characters().names()[1]
    card = engine.characters().get(name)
    async with running(engine, {"manage_webhooks": False}) as (fake, surface):
        inter = await fake.slash("roleplay", [opt("character", name), opt("message", "Hi!")], user_id=306)

        def done():
            m = fake.original(inter)
            return m if m and m["embeds"] and not m["embeds"][0]["description"].endswith(INDICATOR) else None
        msg = await fake.wait_for(done, 60, "the embed reply")
        embed = msg["embeds"][0]
        assert embed["author"]["name"] == name
        fid = int(embed["thumbnail"]["url"].split("/")[-2])
        assert fake.files[fid][1] == card.image
        assert embed["description"] == await stored_reply(engine, f"discord:msg:{msg['id']}")
        assert not fake.webhooks


async def test_character_commands_autocomplete_and_import(engine, tmp_path):
    async with running(engine, permissions={"admin_user_ids": [7]}) as (fake, surface):
        ac = await fake.slash("roleplay", [{"name": "character", "type": 3, "value": "i", "focused": True},
                                           opt("message", "")], kind=4)
        await fake.wait_for(lambda: ac.choices is not None, 10)
        assert {c["value"] for c in ac.choices} == {n for n in engine.characters().names() if "i" in n.casefold()}

        info = await fake.slash("character", [sub("info", opt("name", "Wren"))])
        await fake.wait_for(lambda: fake.original(info), 10)
        embed = fake.original(info)["embeds"][0]
        assert embed["title"] == "Wren" and embed["image"]["url"].startswith(fake.base)

        use = await fake.slash("character", [sub("use", opt("name", "Wren"))], user_id=307,
                               channel_id=fake.channel_ids[2])
        await fake.wait_for(lambda: use.followups, 10)
        await fake.post("Good morning", user_id=307, channel_id=fake.channel_ids[2], mention_bot=True)
        msgs = await fake.wait_for(lambda: [m for m in fake.channel_messages(fake.channel_ids[2])
                                            if m.get("webhook_id") not in (None, str(fake.app_id))
                                            and not m["content"].endswith(INDICATOR)], 60)
        assert msgs[0]["author"]["username"] == "Wren"

        bad = fake.add_file("notes.txt", b"hello")
        imp = await fake.slash("character", [sub("import", opt("card", bad["id"], 11))], user_id=7,
                               resolved={"attachments": {bad["id"]: bad}})
        await fake.wait_for(lambda: imp.followups, 10)
        assert "not a character card" in fake.messages[imp.followups[0]]["content"]

        png = (ROOT / "cards" / "mina.png").read_bytes()
        from engine.cards import card_to_png, load_card
        card = load_card(png)
        card.name, card.nickname = "Imported Mina", ""
        good = fake.add_file("imported.png", card_to_png(card))
        imp = await fake.slash("character", [sub("import", opt("card", good["id"], 11))], user_id=7,
                               resolved={"attachments": {good["id"]: good}})
        await fake.wait_for(lambda: imp.followups, 10)
        assert "Imported Mina" in fake.messages[imp.followups[0]]["content"]
        assert engine.characters().get("Imported Mina") is not None
        assert any(d["name"] == "Imported Mina" for d in await engine.store.list_characters())
        engine.registry.remove_imported("Imported Mina")

        denied = await fake.slash("character", [sub("import", opt("card", good["id"], 11))], user_id=8,
                                  resolved={"attachments": {good["id"]: good}})
        await fake.wait_for(lambda: denied.callback, 10)
        assert denied.callback["data"]["content"] == "Only admins can do that."


# --- stop, busy, lang, token expiry, gateway resume ---------------------------------------------------

async def test_stop_cancels_and_a_second_request_is_refused_privately(engine):
    eng = scripted_engine(engine, LONG, delay=0.05)
    async with running(eng) as (fake, surface):
        inter = await fake.slash("chat", [opt("message", "long please")], user_id=308)
        await fake.wait_for(lambda: fake.original(inter) and fake.original(inter)["content"], 20)
        busy = await fake.slash("chat", [opt("message", "again")], user_id=308)
        await fake.wait_for(lambda: busy.followups and busy.original_id not in fake.messages, 20)
        assert fake.messages[busy.followups[0]]["flags"] & 64       # private, and "thinking…" was removed
        stop = await fake.slash("stop", user_id=308)
        await fake.wait_for(lambda: stop.callback, 10)
        assert "Stopped 1" in stop.callback["data"]["content"]
        await fake.wait_for(lambda: any("Reply stopped." in fake.messages[i]["content"] for i in inter.followups), 20)
        partial = "".join(m["content"] for m in fake.reply_messages(inter) if "Reply stopped." not in m["content"])
        assert 0 < len(partial) < len(LONG)
        assert LONG.startswith(partial)


async def test_lang_and_help(engine):
    async with running(engine) as (fake, surface):
        lang = await fake.slash("lang", [opt("code", "ko")], user_id=309)
        await fake.wait_for(lambda: lang.followups, 10)
        assert fake.messages[lang.followups[0]]["content"] == "이제 한국어로 답할게요."
        helped = await fake.slash("help", user_id=309)
        await fake.wait_for(lambda: helped.callback, 10)
        assert helped.callback["data"]["content"].startswith("**사용법**")


async def test_after_the_token_expires_the_reply_continues_in_the_channel(engine):
    eng = scripted_engine(engine, LONG[:1200], delay=0.05)
    async with running(eng, interaction_token_ttl_s=0.6) as (fake, surface):
        inter = await fake.slash("chat", [opt("message", "go")], user_id=311)
        cid = fake.channel_ids[0]
        await fake.wait_for(lambda: [m for m in fake.channel_messages(cid)
                                     if not m.get("webhook_id") and not m.get("interaction_metadata")
                                     and not m["content"].endswith(INDICATOR) and m["content"]], 60)
        channel = [m for m in fake.channel_messages(cid) if not m.get("interaction_metadata")]
        assert fake.original(inter)["content"] == "↪ Continued in the message below."
        assert shown(channel) == LONG[:1200]


async def test_a_gateway_drop_is_resumed_without_a_duplicate_reply(engine):
    async with running(engine, {"redeliver_on_resume": True}) as (fake, surface):
        cid = fake.channel_ids[2]
        await fake.post("Tell me a short story about a cat.", user_id=312, channel_id=cid, mention_bot=True)
        await fake.wait_for(lambda: bot_replies(fake, cid), 60, "the reply to start")
        await fake.drop_gateway()
        await fake.wait_for(lambda: fake.resumes == 1, 30, "a RESUME")
        msgs = await wait_bot_reply(fake, cid)
        await asyncio.sleep(1.0)
        assert len(bot_replies(fake, cid)) == 1 == len(msgs)
        assert fake.identifies == 1
        assert msgs[0]["content"] == await stored_reply(engine, f"discord:msg:{msgs[0]['id']}")


# --- /memory --------------------------------------------------------------------------------------

async def _answer(fake: FakeDiscord, inter) -> str:
    await fake.wait_for(lambda: inter.followups, 20, "the private answer")
    msg = fake.messages[inter.followups[-1]]
    assert msg["flags"] & 64                                             # ephemeral
    return msg["content"]


async def test_memory_show_pin_unpin_edit_and_forget(engine):
    from engine.types import Speaker, Turn

    async with running(engine) as (fake, surface):
        uid, cid = 911, fake.channel_ids[1]
        conv = await engine.conversation_for(Turn(speaker=Speaker(f"discord:{uid}"), scope=f"discord:channel:{cid}",
                                                  text=""))
        await engine.edit_summary(conv, "Alice sails to the northern islands.", by="test")
        shown = await _answer(fake, await fake.slash("memory", [sub("show")], user_id=uid, channel_id=cid))
        assert "Alice sails to the northern islands." in shown and "Nothing is pinned." in shown
        pinned = await _answer(fake, await fake.slash("memory", [sub("pin", opt("text", "My cat is Blorvik."))],
                                                      user_id=uid, channel_id=cid))
        assert pinned == "Pinned as #1: My cat is Blorvik."
        assert "1. My cat is Blorvik." in await _answer(
            fake, await fake.slash("memory", [sub("show")], user_id=uid, channel_id=cid))
        missing = await _answer(fake, await fake.slash("memory", [sub("unpin", opt("n", 2, kind=4))],
                                                       user_id=uid, channel_id=cid, locale="ko"))
        assert missing == "2번 고정 항목이 없어요 (지금 1개)."

        edit = await fake.slash("memory", [sub("edit")], user_id=uid, channel_id=cid)
        await fake.wait_for(lambda: edit.callback, 10, "the modal")
        modal = edit.callback["data"]
        assert edit.callback["type"] == 9
        field = modal["components"][0]["components"][0]
        assert field["value"] == "Alice sails to the northern islands."
        submit = await fake.slash("", kind=5, user_id=uid, channel_id=cid, modal={
            "custom_id": modal["custom_id"],
            "components": [{"type": 1, "components": [{"type": 4, "custom_id": field["custom_id"],
                                                         "value": "Alice is a sailor from Busan."}]}]})
        assert await _answer(fake, submit) == "Summary updated."
        assert (await engine.memory_of(conv))["summary"]["text"] == "Alice is a sailor from Busan."

        forgot = await _answer(fake, await fake.slash("memory", [sub("forget")], user_id=uid, channel_id=cid))
        assert "cleared the summary" in forgot
        shown = await _answer(fake, await fake.slash("memory", [sub("show")], user_id=uid, channel_id=cid))
        assert "No summary yet." in shown and "Nothing is pinned." in shown
        memory = await engine.memory_of(conv)
        assert memory["summary"]["text"] == "" and memory["pins"] == []
