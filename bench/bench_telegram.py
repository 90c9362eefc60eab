"""Benchmark: Telegram update → first draft time against the model's own time to first token, and 429s under load.

Both against the fake Bot API server of the tests (127.0.0.1), with the real
python-telegram-bot client. The latency rows run the whole bot path (polling,
journal, engine with bot.yaml's chat model, drafts); the 429 rows stream a
scripted text into 50 group chats at once, with the adapter's pacing and, as
the baseline, with python-telegram-bot alone editing once per second.
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
ROUNDS = 6
CHATS = 50
STREAM_S = 4.0


def _raw_ttft(engine) -> float:
    """Seconds to the first text piece from the chat backend alone, on the engine's own prompt."""
    from engine.backends.base import Sampling

    model = engine.models["chat"]
    backend = model.backend
    prompt = backend.render([{"role": "system", "content": model.cfg.system_prompt},
                             {"role": "user", "content": PROMPT}])
    sampling = Sampling(max_new_tokens=8, temperature=model.cfg.temperature, top_p=model.cfg.top_p,
                        top_k=model.cfg.top_k, repetition_penalty=model.cfg.repetition_penalty, stop=(), seed=1)
    first: list[float] = []
    start = time.perf_counter()

    def emit(_text: str) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    backend.generate(prompt, sampling, threading.Event(), emit)
    return first[0]


async def _latency() -> tuple[float, float]:
    """(median bot seconds from update handed out to first draft, median raw model TTFT)."""
    from bot.config import load
    from bot.telegram.adapter import TelegramSurface
    from bot.telegram.config import TelegramConfig
    from engine.engine import build_engine
    from tests.fake_telegram import FakeTelegram

    logging.basicConfig(level=logging.WARNING)
    loaded = load(REPO / "bot.yaml", environ={})
    cfg = loaded.config
    with tempfile.TemporaryDirectory() as tmp:
        engine = await build_engine(models_cfg=cfg.models, mongo_cfg=cfg.mongo, limits=cfg.limits,
                                    cards_cfg=cfg.cards, character_entries=(), mongo_uri=None, data_dir=Path(tmp),
                                    base_dir=REPO, cache_dir=REPO / "ai_model")
        fake = await FakeTelegram().start()
        tg_cfg = TelegramConfig(**{**cfg.telegram.model_dump(), "base_url": fake.base_url,
                                   "base_file_url": fake.base_file_url, "poll_timeout_s": 1})
        surface = TelegramSurface(engine, tg_cfg, fake.token, cfg.language.default)
        try:
            await surface.start()
            await asyncio.wait_for(surface.ready.wait(), 30)
            await asyncio.to_thread(_raw_ttft, engine)            # warm-up of both paths
            raw, bot = [], []
            for i in range(ROUNDS + 1):
                chat = 10_000 + i
                update_id = fake.send_text(chat, PROMPT)
                await fake.wait_for(lambda c=chat: fake.calls_of("sendMessageDraft", c), timeout=300)
                took = fake.calls_of("sendMessageDraft", chat)[0].t - fake.handed_out[update_id]
                await engine.stop_replies_of(f"telegram:{chat}")       # the rest of the reply is not measured
                await fake.wait_for(lambda c=chat: fake.calls_of("sendMessage", c), timeout=300)
                if i:                                              # the first round warms the bot path
                    bot.append(took)
                    raw.append(await asyncio.to_thread(_raw_ttft, engine))
        finally:
            await surface.stop()
            await fake.stop()
            await engine.close(grace_s=1)
    return statistics.median(bot), statistics.median(raw)


async def _scripted(seconds: float):
    words = "the quick brown fox jumps over the lazy dog ".split()
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        yield words[i % len(words)] + " "
        i += 1
        await asyncio.sleep(0.02)


async def _flood(paced: bool) -> tuple[int, int]:
    """(429s answered, messages sent) for CHATS group chats streaming at once into a fake with 1 msg/s per chat."""
    from telegram import Bot

    from bot.streaming import deliver
    from bot.telegram.config import TelegramConfig
    from bot.journal import Entry
    from bot.telegram.pacing import Pacer, telegram_pacer
    from bot.telegram.sinks import ChatTransport, EditingSink, Typing
    from tests.fake_telegram import FakeTelegram

    cfg = TelegramConfig()
    fake = await FakeTelegram(per_chat_interval=1.0).start()
    if paced:
        pacer = telegram_pacer(cfg.edit_interval_s, cfg.group_messages_per_minute, cfg.messages_per_second)
    else:
        pacer = Pacer(lambda _: 0.0, 1_000_000)                   # PTB alone: every call goes out at once
    try:
        async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as bot:
            async def one(chat_id: int) -> None:
                sink = EditingSink(ChatTransport(bot, pacer, chat_id), Entry(f"bench:{chat_id}", None),
                                   Typing(bot, chat_id, cfg.typing_interval_s))
                interval = pacer.gap(chat_id) if paced else cfg.edit_interval_s
                await deliver(_scripted(STREAM_S), sink, interval=interval, describe_error=lambda e: None)

            await asyncio.gather(*(one(-1_000_000 - i) for i in range(CHATS)))
    finally:
        await fake.stop()
    sent = len([c for c in fake.calls if c.method in ("sendMessage", "editMessageText") and c.status == 200])
    return fake.rate_limited, sent


def run() -> list[dict]:
    bot_s, raw_s = asyncio.run(_latency())
    paced_429, paced_sent = asyncio.run(_flood(paced=True))
    raw_429, raw_sent = asyncio.run(_flood(paced=False))
    return [
        {"name": "telegram_first_draft_s", "value": round(bot_s, 3), "unit": "s",
         "note": f"update handed out by getUpdates -> first sendMessageDraft, median of {ROUNDS}, bot.yaml chat model"},
        {"name": "telegram_model_ttft_s", "value": round(raw_s, 3), "unit": "s",
         "note": "the chat backend alone, same prompt, median"},
        {"name": "telegram_first_draft_vs_ttft", "value": round(bot_s / raw_s, 3), "unit": "ratio",
         "goal": "<= 1.5", "note": "includes polling hand-off, journal and store writes, prompt build"},
        {"name": "telegram_429_paced", "value": paced_429, "unit": "count", "goal": 0,
         "note": f"{CHATS} group chats streaming {STREAM_S:.0f}s at once, fake enforcing 1 msg/s per chat; "
                 f"{paced_sent} messages/edits sent"},
        {"name": "telegram_429_unpaced_ptb", "value": raw_429, "unit": "count",
         "note": f"baseline: same load, edits once per second with no pacing; {raw_sent} sent"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
