"""Benchmark the roleplay model's slots (llama.cpp): one stream vs raw, 8 at once, prompt-cache TTFT, TTFT under load."""
from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

from bench.bench_core import PROMPT, _engine, _raw_llama_tps, settle

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
TOKENS = 128          # P1 stream length
BATCH_TOKENS = 96     # P2 tokens per conversation
TOPICS = ["a dragon who bakes bread", "the history of the bicycle", "why the sky is blue", "a robot learning to paint",
          "how bees make honey", "a lighthouse keeper's night", "the rules of chess", "a trip to the moon",
          "a city under the sea"]


def long_card(name: str, seed: int, target_tokens: int, count_tokens):
    """A character card whose description is about ``target_tokens`` tokens long, unique to ``seed``."""
    from engine.cards import Card

    places = ["harbour", "market", "tower", "forest", "bridge", "library", "mill", "garden"]
    lines, i = [f"{name} (card {seed}) is a traveller with a long memory."], 0
    while count_tokens(" ".join(lines)) < target_tokens:
        lines.append(f"Memory {seed}.{i}: {name} once walked past the {places[i % len(places)]} number {i * 7 + seed}"
                     f" and noted what the people there were saying about the weather and the price of bread.")
        i += 1
    return Card(name=name, description=" ".join(lines), first_mes=f"Hello, I am {name}.")


async def _turn(engine, uid: str, text: str, params, card=None, history=None):
    """One stateless turn through the engine, drained; the reply carries its stats."""
    from engine.types import Speaker, Turn

    reply = engine.reply(Turn(speaker=Speaker(uid), scope="bench", text=text, remember=False, params=params,
                              mode="roleplay" if card else "chat", card=card, history=history))
    async for _ in reply:
        pass
    return reply


def _tps(reply) -> float:
    return reply.stats.finish.tokens / reply.stats.gen_s


async def _p1(engine, gen, raw, rows: list) -> None:
    from engine.backends.base import Sampling
    from engine.types import GenParams

    params = GenParams(max_new_tokens=TOKENS, temperature=0.0, stop=())
    prompt = (await _turn(engine, "warm", PROMPT, params)).prompt
    cfg = gen.cfg
    sampling = Sampling(TOKENS, 0.0, cfg.top_p, cfg.top_k, cfg.repetition_penalty)
    eng, ref = [], []
    for i in range(ROUNDS + 2):
        ref.append(await asyncio.to_thread(lambda: _raw_llama_tps(raw, prompt, sampling)[0]))
        eng.append(_tps(await _turn(engine, f"p1-{i}", PROMPT, params)))
    e, r = statistics.median(eng), statistics.median(ref)
    rows.append({"name": "P1 roleplay one stream ÷ raw llama-cpp-python", "value": round(e / r, 3), "unit": "ratio",
                 "goal": ">= 0.95", "note": f"engine {e:.1f} tok/s, raw {r:.1f} tok/s, {TOKENS} greedy tokens, "
                                            f"median of {ROUNDS + 2}"})


async def _p2(engine, rows: list) -> None:
    from engine.types import GenParams

    params = GenParams(max_new_tokens=BATCH_TOKENS, temperature=0.0, stop=())
    texts = [f"Write a long, detailed story about {t}." for t in TOPICS[:8]]
    one, aggs = [], []
    for r in range(ROUNDS):     # interleaved: drift of the machine's speed moves both figures alike
        one.append(_tps(await _turn(engine, f"p2-solo{r}", texts[r], params)))
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(_turn(engine, f"p2-{r}-{i}", t, params) for i, t in enumerate(texts)))
        aggs.append(sum(x.stats.finish.tokens for x in replies) / (time.perf_counter() - t0))
    o, a = statistics.median(one), statistics.median(aggs)
    rows.append({"name": "P2 roleplay 8 conversations aggregate ÷ one", "value": round(a / o, 3), "unit": "ratio",
                 "goal": ">= 2.5", "note": f"{a:.1f} vs {o:.1f} tok/s, {BATCH_TOKENS} greedy tokens each, "
                                           f"median of {ROUNDS}"})


async def _p3(engine, gen, rows: list) -> None:
    from engine.types import GenParams

    params = GenParams(max_new_tokens=48, temperature=0.0, stop=())
    firsts, seconds, cached, prompt_tokens = [], [], [], []
    for r in range(ROUNDS):
        card = long_card("Mira", r, 1500, gen.count_tokens)
        other = long_card("Tomas", 100 + r, 1500, gen.count_tokens)
        t1 = await _turn(engine, f"p3-{r}", "Where are we going today?", params, card=card, history=[])
        await _turn(engine, f"p3-other-{r}", "Tell me about your travels.", params, card=other, history=[])
        history = [{"role": "assistant", "content": card.first_mes},
                   {"role": "user", "content": "Where are we going today?"},
                   {"role": "assistant", "content": t1.text}]
        t2 = await _turn(engine, f"p3-{r}", "And what will we find there?", params, card=card, history=history)
        firsts.append(t1.stats.ttft_s)
        seconds.append(t2.stats.ttft_s)
        cached.append(t2.stats.finish.cached_tokens)
        prompt_tokens.append(t1.stats.finish.prompt_tokens)
    f, s = statistics.median(firsts), statistics.median(seconds)
    rows.append({"name": "P3 second-turn TTFT ÷ first (1.5k-token card)", "value": round(s / f, 3), "unit": "ratio",
                 "goal": "<= 0.2", "note": f"{s * 1000:.0f} vs {f * 1000:.0f} ms, another 1.5k-token conversation "
                                          f"between; first prompt {statistics.median(prompt_tokens):.0f} tokens, "
                                          f"{statistics.median(cached):.0f} cached"})


async def _p4(engine, gen, rows: list) -> None:
    from engine.types import GenParams

    quick = GenParams(max_new_tokens=4, temperature=0.0, stop=())
    busy = GenParams(max_new_tokens=400, temperature=0.0, stop=())

    def newcomer(tag: str) -> str:   # a fresh ~300-token prompt nothing has cached
        return f"[{tag}] Summarise this: " + " ".join(f"item {tag}-{i} is on shelf {i * 3}." for i in range(40))

    idle, loaded, under = [], [], []
    for r in range(ROUNDS):
        idle.append((await _turn(engine, f"p4-idle-{r}", newcomer(f"idle{r}"), quick)).stats.ttft_s)
        background = [asyncio.create_task(_turn(engine, f"p4-bg-{r}-{i}", f"Write a very long essay about {t}.", busy))
                      for i, t in enumerate(TOPICS[:8])]
        t0 = time.perf_counter()
        while gen.batch_stats().running < 8 and time.perf_counter() - t0 < 30:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)          # all eight are past their prefill and decoding
        under.append(gen.batch_stats().running)
        loaded.append((await _turn(engine, f"p4-new-{r}", newcomer(f"busy{r}"), quick)).stats.ttft_s)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        while gen.batch_stats().running and time.perf_counter() - t0 < 60:
            await asyncio.sleep(0.01)
    i, b = statistics.median(idle), statistics.median(loaded)
    rows.append({"name": "P4 TTFT while 8 generate ÷ idle TTFT", "value": round(b / i, 3), "unit": "ratio",
                 "goal": "<= 2", "note": f"{b * 1000:.0f} vs {i * 1000:.0f} ms, ~300-token prompt; max_batch "
                                        f"{gen.cfg.max_batch} (bot.yaml's + 1: the newcomer is the 9th), "
                                        f"{min(under)} running when it arrived"})


async def _main() -> list[dict]:
    from bot.config import load
    from engine.backends.llamacpp_backend import load_llama
    from engine.backends.llamacpp_slots import LlamaCppSlots
    from engine.engine import Engine
    from engine.loading import gguf_file

    cfg = load(ROOT / "bot.yaml", environ={"BOT_API_KEY": "bench"}).config
    rp_cfg = cfg.models.roleplay
    busy = settle()
    if busy > 1.0:   # another process holds a core: llama.cpp's spin-waiting threads would measure the noise
        rp_cfg = rp_cfg.model_copy(update={"n_threads": 1})
    path = gguf_file("roleplay", rp_cfg, ROOT, ROOT / "ai_model")
    rows: list[dict] = []

    raw = load_llama(rp_cfg, path)
    gen = LlamaCppSlots(rp_cfg, path)
    engine = _engine({"chat": Engine.make_model("chat", rp_cfg, gen), "roleplay": Engine.make_model("roleplay", rp_cfg, gen)}, cfg)
    try:
        await _p1(engine, gen, raw, rows)
        raw.close()
        await _p2(engine, rows)
        await _p3(engine, gen, rows)
    finally:
        gen.close()

    wide_cfg = rp_cfg.model_copy(update={"max_batch": rp_cfg.max_batch + 1})
    wide = LlamaCppSlots(wide_cfg, path)
    engine = _engine({"chat": Engine.make_model("chat", wide_cfg, wide), "roleplay": Engine.make_model("roleplay", wide_cfg, wide)}, cfg)
    try:
        await _p4(engine, wide, rows)
    finally:
        wide.close()
    for row in rows:
        row["note"] += f"; {busy:.1f} of {os.cpu_count()} CPUs busy before, n_threads {rp_cfg.n_threads}"
    return rows


def run() -> list[dict]:
    return asyncio.run(_main())


if __name__ == "__main__":
    for row in run():
        print(row)
