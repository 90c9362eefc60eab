"""Benchmark the core: engine vs raw llama-cpp-python streaming, HTTP first chunk vs model TTFT, batching, RSS."""
from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5
TOKENS = 128
PROMPT = "Tell me a long story about a dragon who learns to bake bread."


def settle(max_wait_s: float = 90.0, quiet_below: float = 0.5) -> float:
    """Wait, at most ``max_wait_s``, until the machine's CPUs are busy less than ``quiet_below`` of one CPU over
    a second; return the busy CPUs last seen. Not the load average: it lags by a minute, so right after another
    bench (``make bench`` runs them back to back) it still reads about 2 on an idle 2-core machine."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = psutil.cpu_percent(interval=1.0) / 100 * (psutil.cpu_count() or 1)
        if busy < quiet_below or time.monotonic() >= deadline:
            return busy


def _engine(models: dict, cfg):
    from engine.cards import CharacterRegistry
    from engine.engine import Engine
    from engine.store.repository import Store

    limits = cfg.limits.model_copy(update={"requests_per_minute": 0, "per_user_in_flight": 1})
    # Stateless turns never touch the store; the client connects lazily, so no server is needed.
    store = Store("mongodb://127.0.0.1:9/", "bench", 200)
    return Engine(models=models, store=store, limits=limits, cards_cfg=cfg.cards,
                  characters=CharacterRegistry(cfg.cards, (), ROOT, discover=False))


async def _engine_tps(engine, uid: str, params) -> tuple[float, str, int]:
    from engine.types import Speaker, Turn

    reply = engine.reply(Turn(speaker=Speaker(uid), scope="bench", text=PROMPT, remember=False, params=params))
    t0 = time.perf_counter()
    async for _ in reply:
        pass
    dt = time.perf_counter() - t0
    return reply.stats.finish.tokens / dt, reply.prompt, reply.stats.finish.tokens


def _raw_llama_tps(llm, prompt: str, sampling) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for _ in llm.create_completion(prompt, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                   top_p=sampling.top_p, top_k=sampling.top_k, repeat_penalty=sampling.repetition_penalty,
                                   stream=True):
        n += 1
    return n / (time.perf_counter() - t0), n


def _raw_hf_ttft(gen, prompt: str) -> float:
    """transformers' own time to the first new token on a prompt (generation stopped right after)."""
    from engine.backends.base import Sampling

    first = threading.Event()
    t0 = time.perf_counter()
    stamp = []

    def emit(_text: str) -> None:
        if not stamp:
            stamp.append(time.perf_counter() - t0)
        first.set()

    cancel = threading.Event()
    watcher = threading.Thread(target=lambda: (first.wait(), cancel.set()))
    watcher.start()
    gen.generate(prompt, Sampling(8, 0.0, 1.0, 0, 1.0), cancel, emit)
    watcher.join()
    return stamp[0]


async def _http_first_chunk(url: str, key: str) -> float:
    import aiohttp

    async with aiohttp.ClientSession(headers={"X-API-Key": key}) as s:
        t0 = time.perf_counter()
        async with s.post(url + "/Llama_stream", json={"input_data": PROMPT}) as r:
            async for chunk, _ in r.content.iter_chunks():
                if chunk.strip():
                    return time.perf_counter() - t0
    raise RuntimeError("no chunk")


async def _main() -> list[dict]:
    from bot.config import load
    from bot.http.context import HttpContext
    from bot.http.metrics import Metrics
    from bot.http.server import HttpServer
    from engine.backends.llamacpp_backend import LlamaCppGenerator
    from engine.backends.transformers_backend import TransformersGenerator
    from engine.engine import Engine
    from engine.loading import gguf_file
    from engine.types import GenParams

    loaded = load(ROOT / "bot.yaml", environ={"BOT_API_KEY": "bench"})
    cfg = loaded.config
    rss0 = psutil.Process().memory_info().rss
    chat_cfg, rp_cfg = cfg.models.chat, cfg.models.roleplay
    chat = TransformersGenerator(chat_cfg, ROOT, ROOT / "ai_model")
    rp = LlamaCppGenerator(rp_cfg, gguf_file("roleplay", rp_cfg, ROOT, ROOT / "ai_model"))
    rss = psutil.Process().memory_info().rss
    rows: list[dict] = []

    # P1: the engine streaming from llama.cpp vs llama-cpp-python alone, same prompt, greedy, same length.
    engine = _engine({"chat": Engine.make_model("chat", rp_cfg, rp), "roleplay": Engine.make_model("roleplay", rp_cfg, rp)}, cfg)
    params = GenParams(max_new_tokens=TOKENS, temperature=0.0, stop=())
    _, prompt, _ = await _engine_tps(engine, "warm", params)
    from engine.backends.base import Sampling

    sampling = Sampling(TOKENS, 0.0, rp_cfg.top_p, rp_cfg.top_k, rp_cfg.repetition_penalty)
    eng_tps, raw_tps = [], []
    for i in range(ROUNDS):
        raw_tps.append(_raw_llama_tps(rp.llm, prompt, sampling)[0])
        eng_tps.append((await _engine_tps(engine, f"u{i}", params))[0])
    e, r = statistics.median(eng_tps), statistics.median(raw_tps)
    # LlamaCppGenerator is the max_batch: 1 backend (one Llama object); the shipped slots are bench_batch_roleplay's P1.
    rows.append({"name": "P1 engine stream tok/s ÷ raw llama-cpp-python (max_batch: 1 backend)", "value": round(e / r, 3),
                 "unit": "ratio",
                 "goal": ">= 0.95", "note": f"engine {e:.1f} tok/s, raw {r:.1f} tok/s, {TOKENS} tokens, median of {ROUNDS}"})

    # HTTP time to first chunk vs the chat model's own time to first token.
    chat_engine = _engine({"chat": Engine.make_model("chat", chat_cfg, chat), "roleplay": Engine.make_model("roleplay", rp_cfg, rp)}, cfg)
    server = HttpServer(HttpContext(chat_engine, cfg, loaded.secrets, Metrics()), "127.0.0.1", 0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    _, chat_prompt, _ = await _engine_tps(chat_engine, "warm-chat", GenParams(max_new_tokens=4))
    http_t, raw_t = [], []
    for i in range(ROUNDS):
        raw_t.append(await asyncio.to_thread(_raw_hf_ttft, chat, chat_prompt))
        http_t.append(await _http_first_chunk(url, "bench"))
        await asyncio.sleep(0.3)      # let the cancelled generation release the model
    await server.stop()
    h, m = statistics.median(http_t), statistics.median(raw_t)
    rows.append({"name": "HTTP first chunk ÷ model's own TTFT", "value": round(h / m, 3), "unit": "ratio",
                 "note": f"HTTP {h * 1000:.0f} ms, model {m * 1000:.0f} ms (chat model, median of {ROUNDS})"})

    # Chat model: 8 concurrent requests (different users) vs one.
    batch = GenParams(max_new_tokens=32, temperature=0.0, stop=())
    one, _, n1 = await _engine_tps(chat_engine, "solo", batch)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_engine_tps(chat_engine, f"b{i}", batch) for i in range(8)))
    agg = sum(n for _, _, n in results) / (time.perf_counter() - t0)
    rows.append({"name": "chat aggregate tok/s, 8 concurrent ÷ 1", "value": round(agg / one, 3), "unit": "ratio",
                 "note": f"{agg:.1f} vs {one:.1f} tok/s; the chat model batches up to its max_batch (see bench_batch_chat for the P1–P4 rows)"})
    rows.append({"name": "RSS with both models loaded", "value": round(rss / 2**20, 1), "unit": "MiB",
                 "note": f"{(rss - rss0) / 2**20:.0f} MiB for the models (process before: {rss0 / 2**20:.0f} MiB)"})
    return rows


def run() -> list[dict]:
    return asyncio.run(_main())


if __name__ == "__main__":
    for row in run():
        print(row)
