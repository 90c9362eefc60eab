"""Benchmark: Discord interaction → first visible edit against the model's own time to first token; 429s under load.

Both against the fake Discord of the tests (127.0.0.1) with the real discord.py
client. The latency rows run the whole bot path (gateway event, slash command,
defer, engine with bot.yaml's chat model, the first edit showing text). The load
rows stream a scripted text into 50 conversations at once, 5 per channel, against
a fake that allows 5 writes per 5 s per channel: with the adapter's pacing, and
as the baseline with discord.py alone (its header-driven waits) editing once per second.
"""
from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPT = "Tell me one fact about the moon."
ROUNDS = 4
CONVERSATIONS = 50
CHANNELS = 10
STREAM_S = 6.0


def _raw_ttft(engine) -> float:
    """Seconds to the first text piece from the chat backend alone, on the engine's own prompt."""
    from engine.backends.base import Sampling

    model = engine.models["chat"]
    prompt = model.backend.render([{"role": "system", "content": model.cfg.system_prompt},
                                   {"role": "user", "content": PROMPT}])
    sampling = Sampling(max_new_tokens=8, temperature=model.cfg.temperature, top_p=model.cfg.top_p,
                        top_k=model.cfg.top_k, repetition_penalty=model.cfg.repetition_penalty, stop=(), seed=1)
    first: list[float] = []
    start = time.perf_counter()

    def emit(_text: str) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    model.backend.generate(prompt, sampling, threading.Event(), emit)
    return first[0]


def _loaded(fake, cfg, **discord):
    from bot.config import Loaded, Secrets

    section = {**cfg.discord.model_dump(), "api_base_url": fake.api_base_url, "gateway_url": fake.gateway_url,
               **discord}
    config = cfg.model_copy(update={"discord": cfg.discord.model_validate(section)})
    secrets = Secrets(mongo_uri=None, api_key=None, discord_token="bench", telegram_token=None, env={})
    return Loaded(config=config, secrets=secrets, path=REPO / "bot.yaml")


def _first_text_at(fake, inter) -> float | None:
    if not inter.original_id:
        return None
    for content, t in zip(fake.history[inter.original_id], fake.times[inter.original_id]):
        if content.strip():
            return t
    return None


async def _latency(engine, cfg) -> tuple[float, float]:
    """(median seconds from INTERACTION_CREATE to the first edit with text, median raw model TTFT)."""
    from bot.discord.adapter import make_surface
    from tests.fake_discord import FakeDiscord

    fake = await FakeDiscord().start()
    surface = make_surface(engine, _loaded(fake, cfg))
    try:
        await surface.start()
        await surface.wait_ready(30)
        await asyncio.to_thread(_raw_ttft, engine)                # warm-up
        raw, bot = [], []
        for i in range(ROUNDS + 1):
            inter = await fake.slash("chat", [{"name": "message", "type": 3, "value": PROMPT}], user_id=900 + i)
            at = await fake.wait_for(lambda it=inter: _first_text_at(fake, it), 300)
            await engine.stop_replies_of(f"discord:{900 + i}")        # the rest of the reply is not measured
            await fake.wait_for(lambda n=i + 1: surface.conversations.replies_done >= n, 300)
            if i:                                                  # the first round warms the bot path
                bot.append(at - inter.sent_at)
                raw.append(await asyncio.to_thread(_raw_ttft, engine))
    finally:
        await surface.stop()
        await fake.close()
    return statistics.median(bot), statistics.median(raw)


class _Scripted:
    """Words for ``seconds`` at 50 pieces/s: a stand-in for 50 models streaming at once."""

    n_ctx = 8192

    def render(self, messages):
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text):
        return len(text) // 4

    def generate(self, prompt, sampling, cancel, emit):
        from engine.backends.base import Finish

        words = "the quick brown fox jumps over the lazy dog".split()
        end, i = time.monotonic() + STREAM_S, 0
        while time.monotonic() < end and not cancel.is_set():
            emit(words[i % len(words)] + " ")
            i += 1
            cancel.wait(0.02)
        return Finish(tokens=i)

    def info(self):
        return {"name": "scripted"}

    def close(self):
        pass


async def _flood(engine, cfg, paced: bool) -> dict:
    from bot.discord.adapter import make_surface
    from engine.engine import Engine
    from tests.fake_discord import FakeDiscord

    mcfg = engine.models["chat"].cfg.model_copy(update={"concurrency": CONVERSATIONS, "queue_limit": 100})
    model = Engine.make_model("chat", mcfg, _Scripted())
    scripted = Engine(models={"chat": model, "roleplay": model}, store=engine.store, limits=engine.limits,
                      cards_cfg=engine.cards_cfg, characters=engine.registry)
    fake = await FakeDiscord(channel_limit=(5, 5.0), channels=CHANNELS).start()
    pacing = {} if paced else {"channel_edits": 10_000, "channel_edit_window_s": 0.001}
    surface = make_surface(scripted, _loaded(fake, cfg, edit_interval_s=1.0, **pacing))
    try:
        await surface.start()
        await surface.wait_ready(30)
        t0 = time.monotonic()
        inters = [await fake.slash("chat", [{"name": "message", "type": 3, "value": "go"}],
                                   user_id=2000 + i, channel_id=fake.channel_ids[i % CHANNELS])
                  for i in range(CONVERSATIONS)]
        await fake.wait_for(lambda: surface.conversations.replies_done >= CONVERSATIONS, 600)
        took = time.monotonic() - t0
        writes = sum(len(fake.history[m]) - 1 for it in inters for m in [it.original_id, *it.followups] if m)
        lag = [fake.times[it.original_id][-1] - it.sent_at - STREAM_S for it in inters]
        return {"edits_per_reply": writes / CONVERSATIONS, "429": fake.count_429, "seconds": took,
                "final_lag": statistics.median(lag), "paced_waits": surface.counters.paced_waits}
    finally:
        await surface.stop()
        await fake.close()
        await asyncio.to_thread(model.queue.close)


async def _main() -> list[dict]:
    from bot.config import load
    from engine.engine import build_engine

    logging.basicConfig(level=logging.ERROR)
    loaded = load(REPO / "bot.yaml", environ={})
    cfg = loaded.config
    with tempfile.TemporaryDirectory() as tmp:
        engine = await build_engine(models_cfg=cfg.models, mongo_cfg=cfg.mongo, limits=cfg.limits,
                                    cards_cfg=cfg.cards, character_entries=(), mongo_uri=None, data_dir=Path(tmp),
                                    base_dir=REPO, cache_dir=REPO / "ai_model")
        try:
            bot, raw = await _latency(engine, cfg)
            paced = await _flood(engine, cfg, paced=True)
            alone = await _flood(engine, cfg, paced=False)
        finally:
            await engine.close(grace_s=1)
    where = f"{CONVERSATIONS} conversations, {CHANNELS} channels, fake limit 5 writes/5 s/channel"
    return [
        {"name": "discord_first_edit_s", "value": bot, "unit": "s",
         "note": "INTERACTION_CREATE → first edit showing text (median of %d)" % ROUNDS},
        {"name": "discord_model_ttft_s", "value": raw, "unit": "s", "note": "chat backend alone, same prompt"},
        {"name": "discord_first_edit_vs_ttft", "value": bot / raw, "unit": "x", "goal": "small (≈1 + Discord RTTs)"},
        {"name": "discord_edits_per_reply", "value": paced["edits_per_reply"], "unit": "writes",
         "note": f"{where}; {STREAM_S:.0f} s streams, edit_interval_s=1"},
        {"name": "discord_429s", "value": paced["429"], "unit": "count", "goal": "0", "note": where},
        {"name": "discord_final_lag_s", "value": paced["final_lag"], "unit": "s",
         "note": "median time from the stream's end to its final edit (pacing cost)"},
        {"name": "discord_429s_discordpy_alone", "value": alone["429"], "unit": "count",
         "note": "baseline: adapter pacing off, discord.py's header-driven waits only"},
        {"name": "discord_edits_per_reply_discordpy_alone", "value": alone["edits_per_reply"], "unit": "writes"},
    ]


def run() -> list[dict]:
    return asyncio.run(_main())


if __name__ == "__main__":
    for row in run():
        print(row)
