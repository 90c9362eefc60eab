"""Benchmark memory beyond the window: a summary being written must not delay a reply; prompts stay bounded."""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 512
ROUNDS = 5
FIT_ROUNDS = 10
LONG_TURNS = 200
TEXT = "Turn {i}: the caravan reached the {i}th well, and Ana wrote the names of the guides in her notebook."


class Instant:
    """The real model's template and tokenizer with instant canned output, so that only the engine is timed."""

    max_concurrent = 1

    def __init__(self, real, summary_words: int = 200):
        self.real, self.n_ctx = real, real.n_ctx
        self.summary = " ".join(f"fact{i}" for i in range(summary_words))     # fills the summary's budget

    def render(self, messages):
        return self.real.render(messages)

    def count_tokens(self, text):
        return self.real.count_tokens(text)

    def generate(self, prompt, sampling, cancel, emit):
        from engine.backends.base import Finish

        text = self.summary if "New messages:" in prompt else "The guides were Bo and Hana; the well was dry."
        emit(text)
        return Finish(tokens=self.real.count_tokens(text))

    def info(self):
        return {"name": "instant"}

    def close(self):
        pass


def _engine(store, cfg, backend):
    from engine.engine import Engine

    model = Engine.make_model("chat", cfg.models.chat, backend)
    limits = cfg.limits.model_copy(update={"requests_per_minute": 0})
    return Engine(models={"chat": model, "roleplay": model}, store=store, limits=limits, cards_cfg=cfg.cards,
                  memory_cfg=cfg.memory)


def _turn(uid: str, i: int, max_new: int = 8):
    from engine.types import GenParams, Speaker, Turn

    return Turn(speaker=Speaker(uid, "Ana"), scope="bench:memory", text=TEXT.format(i=i),
                params=GenParams(max_new_tokens=max_new))


async def _first_piece_s(engine, uid: str, i: int) -> float:
    reply = engine.reply(_turn(uid, i))
    t0 = time.perf_counter()
    first = None
    async for _ in reply:
        first = first or time.perf_counter() - t0
    return first


async def _fill(store, conv: str, n: int) -> list[dict]:
    """``n`` stored messages (alternating user/assistant), as a long conversation leaves them."""
    t = time.time_ns() - n * 1000
    docs = [{"_id": uuid.uuid4().hex, "conv_id": conv, "ts": t + k * 1000, "role": ("user", "assistant")[k % 2],
             "content": TEXT.format(i=k), "request_key": "", "status": "done", "meta": {}} for k in range(n)]
    await store.db.messages.insert_many(docs)
    return docs


async def _ttft_rows(store, cfg, chat) -> list[dict]:
    """A reply's time to first piece while a summary for the same user is being written, ÷ with none."""
    from engine.summarizer import FoldRequest

    # Summaries are started by hand here, one per round, so none starts on its own after a reply.
    cfg = cfg.model_copy(update={"memory": cfg.memory.model_copy(update={"trigger": 10**9})})
    engine = _engine(store, cfg, chat)
    model = engine.models["chat"]
    uid = "bench-ttft"
    conv = await engine.conversation_for(_turn(uid, 0))
    docs = await _fill(store, conv, 40)
    await _first_piece_s(engine, uid, 0)                   # warm-up
    summarizer = engine.memory.summarizer
    without, with_, preempted = [], [], 0
    for r in range(ROUNDS):
        summarizer.cancel(conv)
        await summarizer.settle(60)
        without.append(await _first_piece_s(engine, uid, 100 + r))
        summarizer.cancel(conv)
        await summarizer.settle(60)
        before = summarizer.counts["preempted"]
        summarizer.schedule(FoldRequest(conv, model, docs[:20], engine.memory.summary_budget(model), "Ana"))
        deadline = time.monotonic() + 60
        while not (summarizer._running and model.queue.running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)                             # well into writing the summary
        with_.append(await _first_piece_s(engine, uid, 200 + r))
        await summarizer.settle(60)
        preempted += summarizer.counts["preempted"] - before
    await engine.memory.close()
    model.queue.close()
    w, wo = statistics.median(with_), statistics.median(without)
    return [{"name": "memory: TTFT while a summary is written for the same user ÷ without", "value": round(w / wo, 3),
             "unit": "ratio", "goal": "<= 1.1",
             "note": f"with {w * 1000:.0f} ms, without {wo * 1000:.0f} ms; the summary gave way {preempted}/{ROUNDS} "
                     f"times (chat model, n_ctx {N_CTX}, median of {ROUNDS})"}]


async def _window_rows(store, cfg, chat) -> list[dict]:
    """Prompt size over a 200-turn conversation, and prompt build + fit time at 200 and 2,000 stored messages."""
    engine = _engine(store, cfg, Instant(chat))
    budget = N_CTX - 8
    uid = "bench-long"
    conv = await engine.conversation_for(_turn(uid, 0))
    await engine.pin_fact(conv, "Ana's guides are Bo and Hana.", by=uid)
    biggest = 0
    for i in range(1, LONG_TURNS + 1):
        reply = engine.reply(_turn(uid, i))
        async for _ in reply:
            pass
        await engine.memory.summarizer.settle(30)
        biggest = max(biggest, chat.count_tokens(reply.prompt))
    summary = await store.latest_summary(conv)
    rows = [{"name": f"memory: largest prompt over {LONG_TURNS} turns ÷ context budget", "value": round(biggest / budget, 3),
             "unit": "ratio", "goal": "<= 1.0",
             "note": f"{biggest} of {budget} tokens (n_ctx {N_CTX} − 8 new); summary revision "
                     f"{summary['rev'] if summary else 0} covers {summary['covers']['messages'] if summary else 0} "
                     f"messages; all {await store.count_messages(conv)} messages stored"}]
    times = {}
    for n in (200, 2000):
        uid = f"bench-fit-{n}"
        conv = await engine.conversation_for(_turn(uid, 0))
        docs = await _fill(store, conv, n)
        # As the summariser leaves it: everything but the newest messages is covered by the summary.
        covers = {"from_id": docs[0]["_id"], "from_ts": docs[0]["ts"], "to_id": docs[-21]["_id"],
                  "to_ts": docs[-21]["ts"], "messages": n - 20}
        await store.add_summary(conv, 1, Instant(chat).summary, covers, by="bench")
        spent = []
        for r in range(FIT_ROUNDS):
            reply = engine.reply(_turn(uid, r))
            async for _ in reply:
                pass
            spent.append(reply.prompt_s)
        times[n] = statistics.median(spent[1:])
    await engine.memory.close()
    engine.models["chat"].queue.close()
    rows.append({"name": "memory: prompt build + fit per turn, 2,000 ÷ 200 stored messages",
                 "value": round(times[2000] / times[200], 3), "unit": "ratio", "goal": "<= 1.2",
                 "note": f"{times[200] * 1000:.1f} ms at 200, {times[2000] * 1000:.1f} ms at 2,000 (memory read, message "
                         f"stored, prompt built and fitted with the real tokenizer; median of {FIT_ROUNDS - 1})"})
    return rows


def _raw_ttft(chat, prompt: str) -> float:
    """transformers' own time to the first token on a reply-sized prompt, for scale."""
    from engine.backends.base import Sampling

    t0 = time.perf_counter()
    stamp: list[float] = []
    cancel = threading.Event()

    def emit(_text: str) -> None:
        if not stamp:
            stamp.append(time.perf_counter() - t0)
        cancel.set()

    chat.generate(prompt, Sampling(4, 0.0, 1.0, 0, 1.0), cancel, emit)
    return stamp[0]


async def _main() -> list[dict]:
    from bot.config import load
    from engine.backends.transformers_backend import TransformersGenerator
    from engine.store.embedded import EmbeddedMongo
    from engine.store.repository import Store

    cfg = load(ROOT / "bot.yaml", environ={}).config
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={
        "chat": cfg.models.chat.model_copy(update={"n_ctx": N_CTX})})})
    chat = TransformersGenerator(cfg.models.chat, ROOT, ROOT / "ai_model")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedMongo(Path(tmp))
        await server.start()
        store = Store(server.uri, "bench_memory")
        await store.start()
        try:
            rows = await _ttft_rows(store, cfg, chat)
            raw = _raw_ttft(chat, chat.render([{"role": "user", "content": TEXT.format(i=1)}]))
            rows[0]["note"] += f"; transformers alone {raw * 1000:.0f} ms on a one-message prompt"
            rows += await _window_rows(store, cfg, chat)
        finally:
            await store.close()
            await server.stop()
    return rows


def run() -> list[dict]:
    return asyncio.run(_main())


if __name__ == "__main__":
    for row in run():
        print(row)
