"""Scenes on Discord: the real discord.py client against tests/fake_discord.py, each character through the webhook."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from engine.cards import CharacterRegistry
from tests.test_discord import INDICATOR, opt, running, sub
from tests.test_scenes import scripted

ROOT = Path(__file__).resolve().parents[1]


def character_messages(fake, cid: int) -> list[dict]:
    """The messages characters wrote in a channel (webhook messages other than interaction responses)."""
    return [m for m in fake.channel_messages(cid) if m.get("webhook_id") not in (None, str(fake.app_id))]


async def written(fake, surface, cid: int, n: int, timeout: float = 240.0) -> list[dict]:
    """The first ``n`` character messages once all of them are finished."""
    def done():
        msgs = character_messages(fake, cid)
        return msgs if len(msgs) >= n and not any(m["content"].endswith(INDICATOR) for m in msgs) else None
    return await fake.wait_for(done, timeout, f"{n} character messages")


async def command(fake, name: str, *options, cid: int, user_id: int = 501):
    inter = await fake.slash("scene", [sub(name, *options)], user_id=user_id, channel_id=cid)
    await fake.wait_for(lambda: fake.original(inter) and fake.original(inter)["content"], 30, f"/scene {name}")
    return fake.original(inter)["content"]


async def test_scene_start_then_the_named_second_character_answers_first_through_the_webhook(engine):
    wren, mina = engine.characters().get("Wren"), engine.characters().get("Mina")
    async with running(engine) as (fake, surface):
        assert "scene" in {c["name"] for c in fake.commands}
        cid = fake.channel_ids[0]
        said = await command(fake, "start", opt("characters", "Wren, Mina"), cid=cid)
        assert said.startswith("🎬 Scene started: Wren, Mina")
        greetings = await written(fake, surface, cid, 2)
        assert [m["author"]["username"] for m in greetings] == ["Wren", "Mina"]
        assert greetings[0]["content"] == wren.group_only_greetings[0]
        assert fake.avatars[greetings[1]["author"]["avatar"]] == mina.image

        await fake.post("Mina, which stall should we try first?", user_id=501, channel_id=cid)
        msgs = await written(fake, surface, cid, 3)
        reply = msgs[2]
        assert reply["author"]["username"] == "Mina" and reply["content"].strip()
        assert fake.avatars[reply["author"]["avatar"]] == mina.image
        scene = await engine.scenes.get(f"discord:channel:{cid}")
        stored = await engine.history(scene.conversation_id)
        assert (stored[-1]["speaker"], stored[-1]["content"]) == ("Mina", reply["content"])
        assert (stored[-2]["speaker"], stored[-2]["role"]) == ("alice", "user")

        shown = await command(fake, "show", cid=cid)
        assert "Wren, Mina" in shown and "auto turns: 0" in shown
        assert "unknown" in (await command(fake, "start", opt("characters", "Wren, Zorro"), cid=cid)).lower()
        assert "left the scene" in await command(fake, "remove", opt("name", "Wren"), cid=cid)
        assert "joined" in await command(fake, "add", opt("name", "Wren"), cid=cid)
        assert "ended" in await command(fake, "end", cid=cid)
        assert await engine.scenes.get(f"discord:channel:{cid}") is None
        before = await settled(fake)      # a joining character's greeting may still be on its way
        await fake.post("Anyone here?", user_id=501, channel_id=cid)      # no scene, no mention: left alone
        await asyncio.sleep(0.5)
        assert len(fake.messages) == before + 1, [(m["author"]["username"], m["content"][:60]) for m in fake.messages[before - 3:]]


async def settled(fake, quiet_s: float = 0.5, limit_s: float = 10.0) -> int:
    """How many messages the fake holds once none has arrived for ``quiet_s``."""
    deadline = asyncio.get_running_loop().time() + limit_s
    count = len(fake.messages)
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(quiet_s)
        if len(fake.messages) == count:
            break
        count = len(fake.messages)
    return count


async def test_auto_two_gives_exactly_two_replies_from_different_characters_with_the_nudge(engine):
    eng, backend = scripted(engine, "The lamp is lit and the kettle is on.")
    async with running(eng) as (fake, surface):
        cid = fake.channel_ids[1]
        await command(fake, "start", opt("characters", "Wren, Mina, 하늘"), cid=cid)
        await written(fake, surface, cid, 3)
        assert "2 turns" in await command(fake, "auto", opt("turns", 2, 4), cid=cid)
        await fake.post("Good evening, everyone.", user_id=502, channel_id=cid)
        msgs = await written(fake, surface, cid, 5)
        await asyncio.sleep(1.0)                       # nothing more comes
        replies = character_messages(fake, cid)[3:]
        assert len(replies) == 2
        names = [m["author"]["username"] for m in replies]
        assert names[0] != names[1]
        for name, prompt in zip(names, backend.prompts):
            assert f"[Write the next reply only as {name}.]" in prompt
            assert all(f"- {o}: " in prompt for o in {"Wren", "Mina", "하늘"} - {name})
        assert msgs[3]["content"] == "The lamp is lit and the kettle is on."


async def test_a_human_message_stops_auto_turns_and_five_characters_cause_no_429(engine):
    registry = CharacterRegistry(engine.cards_cfg, [], ROOT)
    for base, alias in (("Wren", "Ada"), ("Mina", "Bo")):
        registry.add_imported(replace(registry.get(base), name=alias, nickname=""))
    eng, backend = scripted(engine, "Waves fold over the rocks below the light. " * 8, delay=0.01,
                            characters=registry)
    async with running(eng, {"channel_limit": (5, 2.0)}, channel_edits=5, channel_edit_window_s=2.0) as (fake, s):
        cid = fake.channel_ids[2]
        await command(fake, "start", opt("characters", "Wren, Mina, 하늘, Ada, Bo"), cid=cid)
        await written(fake, s, cid, 5, timeout=120)
        await fake.post("Ada, Bo, Wren, Mina and 하늘: one line each, please.", user_id=503, channel_id=cid)
        msgs = await written(fake, s, cid, 10, timeout=180)
        assert [m["author"]["username"] for m in msgs[5:]] == ["Ada", "Bo", "Wren", "Mina", "하늘"]
        assert fake.count_429 == 0 and s.counters.rate_limited == 0

        # auto 3: a human message after the first turn stops the rest of that chain
        await command(fake, "auto", opt("turns", 3, 4), cid=cid)
        await fake.post("Tell us about the storm.", user_id=503, channel_id=cid)
        await fake.wait_for(lambda: len(character_messages(fake, cid)) >= 12, 120, "the second auto turn")
        await fake.post("Wait, quiet!", user_id=504, channel_id=cid)
        # 10 so far, the first chain's two replies and its "Reply stopped." note, the second chain's three
        await written(fake, s, cid, 16, timeout=180)
        await asyncio.sleep(1.5)
        assert len(character_messages(fake, cid)) == 16
        scene = await eng.scenes.get(f"discord:channel:{cid}")
        stored = await eng.history(scene.conversation_id, 100)
        after_storm = stored[[m["content"] for m in stored].index("Tell us about the storm."):]
        first_chain = after_storm[1:[m["content"] for m in after_storm].index("Wait, quiet!")]
        assert len(first_chain) == 2 and first_chain[1]["status"] == "cancelled"       # not 3 turns
        assert [m["status"] for m in after_storm[len(first_chain) + 2:]] == ["done"] * 3
        assert fake.count_429 == 0
