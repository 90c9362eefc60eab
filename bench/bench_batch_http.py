"""Benchmark batching end to end through the HTTP API on the shipped bot.yaml: 8 users at once ÷ one, and one
stream ÷ the raw library (P1 through HTTP), for both models; also how many of 8 greedy replies read the same alone
and batched."""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_batch_chat import QUESTIONS, _raw_tps
from bench.bench_core import _raw_llama_tps

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
TOKENS = 96
ROUNDS = 5
SAME_CHARS = 100
SYSTEM = "You are a helpful assistant."


async def _ask(client, role: str, user: str, question: str) -> tuple[int, float, str]:
    """(completion tokens, seconds, text) of one greedy streamed /v1/chat/completions call."""
    t0, usage, text = time.perf_counter(), None, ""
    stream = await client.chat.completions.create(
        model=role, max_tokens=TOKENS, temperature=0.0, stream=True, user=user,
        stream_options={"include_usage": True},
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return usage.completion_tokens, time.perf_counter() - t0, text


async def _role(client, role: str, raw_tps) -> list[dict]:
    await _ask(client, role, f"{role}-warm", QUESTIONS[0])
    alone, texts, raws = [], [], []
    for i, q in enumerate(QUESTIONS):              # each prompt alone, interleaved with the raw library
        n, dt, text = await _ask(client, role, f"{role}-solo-{i}", q)
        alone.append(n / dt)
        texts.append(text)
        if i < ROUNDS:
            raws.append(await asyncio.to_thread(raw_tps))
    together, same = [], 0
    for r in range(ROUNDS):
        t0 = time.perf_counter()
        results = await asyncio.gather(*(_ask(client, role, f"{role}-b{r}-{i}", q) for i, q in enumerate(QUESTIONS)))
        together.append(sum(n for n, *_ in results) / (time.perf_counter() - t0))
        if r == 0:
            same = sum(t[:SAME_CHARS] == b[:SAME_CHARS] for t, (*_, b) in zip(texts, results))
    # Medians of like samples: one user's rate over the 8 prompts alone, the aggregate over the rounds.
    one, many, raw = statistics.median(alone), statistics.median(together), statistics.median(raws)
    goal = {"chat": ">= 3.5", "roleplay": ">= 2.0"}[role]
    how = f"/v1/chat/completions stream, greedy, {TOKENS} tokens, {len(QUESTIONS)} users"
    return [
        {"name": f"HTTP {role}: 8 users at once ÷ one user, tok/s", "value": round(many / one, 3), "unit": "ratio",
         "goal": goal, "note": f"aggregate {many:.1f} vs one {one:.1f} tok/s; {how}; medians of {ROUNDS} rounds / 8 prompts"},
        {"name": f"P1 HTTP {role}: one stream ÷ raw library", "value": round(one / raw, 3), "unit": "ratio",
         "goal": ">= 0.95", "note": f"{one:.1f} vs {raw:.1f} tok/s (same weights, greedy, same prompt shape)"},
        {"name": f"HTTP {role}: first {SAME_CHARS} chars same alone and among 7", "value": same, "unit": "of 8",
         "goal": ">= 6", "note": "temperature 0"},
    ]


async def _main(tmp: Path, roles: tuple[str, ...]) -> list[dict]:
    from openai import AsyncOpenAI

    from bot.app import App
    from bot.config import Loaded, load
    from engine.backends.base import Sampling
    from engine.backends.llamacpp_backend import load_llama
    from engine.loading import gguf_file

    loaded = load(ROOT / "bot.yaml", environ={"BOT_API_KEY": KEY})
    cfg = loaded.config
    # The shipped bot.yaml, but for its per-client request rate: this bench starts about 70 requests a minute.
    http = cfg.http.model_copy(update={"per_client_per_minute": 0})
    cfg = cfg.model_copy(update={"http": http, "limits": cfg.limits.model_copy(update={"requests_per_minute": 0})})
    app = App(Loaded(cfg, loaded.secrets, loaded.path), data_dir=tmp, http_host="127.0.0.1", http_port=0)
    load0 = os.getloadavg()[0]
    await app.start()
    rp_cfg = cfg.models.roleplay
    llama = load_llama(rp_cfg, gguf_file("roleplay", rp_cfg, ROOT, ROOT / "ai_model"))   # what the bot serves
    try:
        chat = app.engine.models["chat"].backend

        def chat_raw() -> float:
            prompt = chat.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}])
            return _raw_tps(chat, prompt, cfg.models.chat.repetition_penalty)

        def rp_raw() -> float:
            # The roleplay model's prompt for the same question: its persona card, rendered by the engine.
            prompt = llama_prompt
            sampling = Sampling(TOKENS, 0.0, rp_cfg.top_p, rp_cfg.top_k, rp_cfg.repetition_penalty)
            return _raw_llama_tps(llama, prompt, sampling)[0]

        llama_prompt = app.engine.models["roleplay"].backend.render(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}])
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{app.http.port}/v1", api_key=KEY, max_retries=0,
                               timeout=600) as client:
            raws = {"chat": chat_raw, "roleplay": rp_raw}
            rows = [row for role in roles for row in await _role(client, role, raws[role])]
    finally:
        llama.close()
        await app.stop()
    for row in rows:
        row["note"] += f"; roleplay n_threads {rp_cfg.n_threads}; load avg {load0:.1f}→{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    return rows


def run(roles: tuple[str, ...] = ("chat", "roleplay")) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_main(Path(tmp), roles))


if __name__ == "__main__":
    for row in run(tuple(sys.argv[1:]) or ("chat", "roleplay")):
        print(row)
