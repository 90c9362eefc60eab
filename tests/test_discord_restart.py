"""Killing the bot (SIGKILL) mid-reply on Discord: after a restart the cut-off replies are completed once, in place."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from bench.chaos.botproc import write_config
from bot.discord.adapter import make_surface
from bot.discord.conversation import Place, journal_payload
from engine.types import Speaker, Turn
from tests.fake_discord import FakeDiscord
from tests.test_discord import loaded_for, scripted_engine

ROOT = Path(__file__).resolve().parents[1]
INDICATOR = " ▌"
WAIT = 420.0            # seconds: a model load and a reply on a shared 2-core machine
TOKENS = 80             # long enough to be cut off mid-reply


async def start_bot(tmp: Path, fake: FakeDiscord, mongo_uri: str | None) -> asyncio.subprocess.Process:
    """``python -m bot`` against the fake Discord; ``mongo_uri`` None: the embedded store (default config)."""
    env = {**os.environ, "DISCORD_TOKEN": "test-token", "PYTHONPATH": str(ROOT)}
    env.pop("TELEGRAM_TOKEN", None)
    env.pop("MONGO_URI", None)
    if mongo_uri:
        env["MONGO_URI"] = mongo_uri
    log = open(tmp / "bot.log", "ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(tmp / "bot.yaml"), "--data-dir", str(tmp / "data"),
        "--http-port", "0", cwd=tmp, env=env, stdout=log, stderr=log)


def bot_messages(fake: FakeDiscord, cid: int) -> list[dict]:
    return [m for m in fake.channel_messages(cid) if m["author"]["id"] == str(fake.app_id)]


def partial(msg: dict | None) -> bool:
    return bool(msg and msg["content"].endswith(INDICATOR) and len(msg["content"]) > len(INDICATOR) + 2)


def complete(msg: dict | None) -> bool:
    return bool(msg and msg["content"].strip() and not msg["content"].endswith(INDICATOR))


@pytest.fixture
async def world(tmp_path):
    fake = await FakeDiscord().start()
    write_config(tmp_path / "bot.yaml", {"discord": {"api_base_url": fake.api_base_url, "gateway_url": fake.gateway_url,
                                                     "edit_interval_s": 0.2, "typing": False}}, tokens=TOKENS)
    procs: list[asyncio.subprocess.Process] = []
    yield tmp_path, fake, None, procs        # None: the embedded store, as a user runs it
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()
    await fake.close()
    log = tmp_path / "bot.log"
    print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:]) if log.exists() else "no log")


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_sigkill_mid_reply_then_restart_completes_mention_and_slash_once(world):
    tmp, fake, uri, procs = world
    procs.append(await start_bot(tmp, fake, uri))
    await fake.wait_for(lambda: fake.identifies == 1 and fake.commands, WAIT, "the bot to connect")
    cid = fake.channel_ids[1]
    user_msg = await fake.post("Write a long story about a lighthouse keeper and a storm.", user_id=501,
                               channel_id=cid, mention_bot=True)
    inter = await fake.slash("chat", [{"name": "message", "type": 3,
                                       "value": "Tell me a long tale about a ship at sea."}], user_id=502)
    # Killed as soon as the mention's reply shows a word: often before the journal has noted that message's id.
    await fake.wait_for(lambda: any(partial(m) for m in bot_messages(fake, cid)), WAIT, "a reply partly written")
    procs[0].send_signal(signal.SIGKILL)
    await procs[0].wait()
    (mention_reply,) = bot_messages(fake, cid)
    assert partial(mention_reply), "the reply finished before the kill"
    assert inter.callback and not complete(fake.original(inter))

    procs.append(await start_bot(tmp, fake, uri))
    await fake.wait_for(lambda: complete(fake.messages.get(int(mention_reply["id"])))
                        and complete(fake.original(inter)), WAIT, "the cut-off replies to be completed")
    # A later message proves the restarted bot went on to new work; by then nothing else may have come.
    await fake.post("Say hello.", user_id=503, channel_id=fake.channel_ids[2], mention_bot=True)
    await fake.wait_for(lambda: any(complete(m) for m in bot_messages(fake, fake.channel_ids[2])), WAIT)
    answers = [m for m in bot_messages(fake, cid)
               if str((m.get("message_reference") or {}).get("message_id")) == user_msg["id"]]
    assert [m["id"] for m in answers] == [mention_reply["id"]]          # the same message, edited: no second answer
    assert [m["id"] for m in bot_messages(fake, fake.channel_ids[0])] == [str(inter.original_id)] + [
        str(i) for i in inter.followups]
    assert fake.identifies == 2
    procs[-1].send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(procs[-1].wait(), 60) == 0
    assert len(bot_messages(fake, cid)) == 1


async def journaled_mention(journal, fake: FakeDiscord, cid: int, user_id: int, name: str) -> tuple[dict, Place]:
    """A user's mention in ``cid`` as the killed run journaled it (no progress yet)."""
    asked = fake._message(cid, "tell me", author=fake.user(user_id, name))
    place = Place(f"discord:channel:{cid}", (f"discord:channel:{cid}", f"discord:guild:{fake.guild_id}"), cid, False)
    turn = Turn(Speaker(f"discord:{user_id}", name, "en"), place.scope, "tell me",
                request_key=f"discord:msg:{asked['id']}")
    await journal.add(f"m{asked['id']}", journal_payload("message", turn, place, "en", False,
                                                         message_id=int(asked["id"])))
    return asked, place


CUT_TEXT = "The keeper lit the lamp and watched the storm roll in over the black water."


async def crash_world(engine):
    """A scripted engine writing CUT_TEXT, a fake Discord, the channel used and the adapter's journal."""
    eng = scripted_engine(engine, CUT_TEXT)
    fake = await FakeDiscord().start()
    return eng, fake, fake.channel_ids[1], eng.platform_store(f"discord:{fake.app_id}")


async def test_what_a_crash_left_is_completed_in_place_once_at_start(engine):
    """The state a SIGKILL leaves (journaled, partly sent), resumed by a fresh adapter: fast, in one process."""
    eng, fake, cid, journal = await crash_world(engine)
    asked, place = await journaled_mention(journal, fake, cid, 521, "ann")
    cut = fake._message(cid, "The keeper lit" + INDICATOR, author=fake.bot)
    await journal.progress(f"m{asked['id']}", {"attempts": 1, "sent": [["channel", int(cut["id"]), cid]]})
    inter = await fake.slash("chat", [{"name": "message", "type": 3, "value": "hi"}], user_id=522)
    inter.callback = {"type": 5}                                      # deferred by the killed run
    inter.original_id = int(fake._message(cid, "", author=fake.bot)["id"])
    iturn = Turn(Speaker("discord:522", "bo", "en"), place.scope, "hi", request_key=f"discord:interaction:{inter.id}")
    await journal.add(f"i{inter.id}", journal_payload("interaction", iturn, place, "en", False, token=inter.token,
                                                      created_at=time.time()))
    surface = make_surface(eng, loaded_for(fake))
    try:
        await surface.start()
        await fake.wait_for(lambda: fake.messages[int(cut["id"])]["content"] == CUT_TEXT
                            and fake.original(inter)["content"] == CUT_TEXT, 60, "both replies completed in place")
        assert [m["id"] for m in fake.channel_messages(cid)] == [cut["id"], str(inter.original_id)]
        assert all(d["state"] == "done" for d in [await journal.get(f"m{asked['id']}"),
                                                   await journal.get(f"i{inter.id}")])
    finally:
        await surface.stop()
        await fake.close()


async def test_a_reply_sent_but_not_yet_journaled_is_found_and_edited_not_sent_twice(engine):
    """A kill between Discord creating the reply and the journal noting its id: the resume finds that reply."""
    eng, fake, cid, journal = await crash_world(engine)
    asked, _ = await journaled_mention(journal, fake, cid, 531, "cy")
    fake._message(cid, "unrelated chatter", author=fake.user(532, "dee"))
    cut = fake._message(cid, "The keeper" + INDICATOR, author=fake.bot,
                        message_reference={"type": 0, "message_id": asked["id"], "channel_id": str(cid)})
    surface = make_surface(eng, loaded_for(fake))
    try:
        await surface.start()
        await fake.wait_for(lambda: fake.messages[int(cut["id"])]["content"] == CUT_TEXT, 60, "the cut reply completed")
        for _ in range(100):
            if (await journal.get(f"m{asked['id']}"))["state"] == "done":
                break
            await asyncio.sleep(0.1)
        assert (await journal.get(f"m{asked['id']}"))["state"] == "done"
        assert [m["id"] for m in bot_messages(fake, cid)] == [cut["id"]]
    finally:
        await surface.stop()
        await fake.close()

