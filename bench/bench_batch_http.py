"""Benchmark batching end to end through the HTTP API of `python -m bot` on the shipped bot.yaml: 8 users at once ÷
one, and one stream ÷ the raw library (P1 through HTTP), for both models; also how many of 8 greedy replies read the
same alone and batched."""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_batch_chat import QUESTIONS, _raw_tps
from bench.bench_core import _raw_llama_tps, settle
from engine.backends.torch_threads import in_own_thread

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
    # One user and 8 users take turns, so that a machine that speeds up or slows down during the run (shared
    # cores drift by 20% within minutes here) moves both medians alike instead of the ratio.
    alone, texts, raws, together, first_batch = [], [], [], [], []
    for i, q in enumerate(QUESTIONS):              # each prompt alone, then the raw library, then a batch round
        n, dt, text = await _ask(client, role, f"{role}-solo-{i}", q)
        alone.append(n / dt)
        texts.append(text)
        if i < ROUNDS:
            raws.append(await asyncio.to_thread(in_own_thread, raw_tps, q))     # the same prompt, right after
            t0 = time.perf_counter()
            results = await asyncio.gather(*(_ask(client, role, f"{role}-b{i}-{j}", x) for j, x in enumerate(QUESTIONS)))
            together.append(sum(n for n, *_ in results) / (time.perf_counter() - t0))
            first_batch = first_batch or [b for *_, b in results]
    same = sum(t[:SAME_CHARS] == b[:SAME_CHARS] for t, b in zip(texts, first_batch))
    # Medians of like samples: one user's rate over the 8 prompts alone, the aggregate over the rounds.
    one, many, raw = statistics.median(alone), statistics.median(together), statistics.median(raws)
    paired = statistics.median(alone[:ROUNDS])    # the prompts the raw library also answered
    goal = {"chat": ">= 3.5", "roleplay": ">= 2.0"}[role]
    how = f"/v1/chat/completions stream, greedy, {TOKENS} tokens, {len(QUESTIONS)} users"
    return [
        {"name": f"HTTP {role}: 8 users at once ÷ one user, tok/s", "value": round(many / one, 3), "unit": "ratio",
         "goal": goal, "note": f"aggregate {many:.1f} vs one {one:.1f} tok/s; {how}; medians of {ROUNDS} rounds / 8 prompts"},
        {"name": f"P1 HTTP {role}: one stream ÷ raw library", "value": round(paired / raw, 3), "unit": "ratio",
         "goal": ">= 0.95", "note": f"{paired:.1f} vs {raw:.1f} tok/s (same weights, greedy, the same {ROUNDS} "
                                    "prompts, each right after the other; medians)"},
        {"name": f"HTTP {role}: first {SAME_CHARS} chars same alone and among 7", "value": same, "unit": "of 8",
         "goal": ">= 6", "note": "temperature 0"},
    ]


async def _main(tmp: Path, roles: tuple[str, ...]) -> list[dict]:
    from openai import AsyncOpenAI

    from bench.chaos.botproc import BotProcess
    from bot.config import load
    from engine.backends.base import Sampling
    from engine.backends.llamacpp_backend import LlamaText, load_llama
    from engine.backends.transformers_backend import TransformersGenerator
    from engine.loading import gguf_file

    cfg = load(ROOT / "bot.yaml", environ={"BOT_API_KEY": KEY}).config
    # The shipped bot.yaml, as `python -m bot` in its own process (the client here shares no event loop or GIL
    # with it), but for its per-client request rate: this bench starts about 70 requests a minute.
    lifted = {"http": {"per_client_per_minute": 0}, "limits": {"requests_per_minute": 0}}
    rp_cfg = cfg.models.roleplay
    # The raw libraries on the weights the bot serves, loaded here and run only between the HTTP requests.
    chat = TransformersGenerator(cfg.models.chat.model_copy(update={"max_batch": 1}), ROOT, ROOT / "ai_model")
    llama = load_llama(rp_cfg, gguf_file("roleplay", rp_cfg, ROOT, ROOT / "ai_model"))
    llama_text = LlamaText(rp_cfg, Path(llama.model_path), llama)

    def messages(question: str) -> list[dict]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]

    def chat_raw(question: str) -> float:
        return _raw_tps(chat, chat.render(messages(question)), cfg.models.chat.repetition_penalty)

    def rp_raw(question: str) -> float:
        sampling = Sampling(TOKENS, 0.0, rp_cfg.top_p, rp_cfg.top_k, rp_cfg.repetition_penalty)
        return _raw_llama_tps(llama, llama_text.render(messages(question)), sampling)[0]

    busy = settle()
    try:
        async with BotProcess(tmp / "bot", override=lifted, tokens=TOKENS) as bot:
            async with AsyncOpenAI(base_url=f"{bot.url}/v1", api_key=bot.api_key, max_retries=0,
                                   timeout=600) as client:
                raws = {"chat": chat_raw, "roleplay": rp_raw}
                rows = [row for role in roles for row in await _role(client, role, raws[role])]
    finally:
        llama.close()
        chat.close()
    for row in rows:
        row["note"] += f"; roleplay n_threads {rp_cfg.n_threads}; {busy:.1f} of {os.cpu_count()} CPUs busy before"
    return rows


def run(roles: tuple[str, ...] = ("chat", "roleplay")) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_main(Path(tmp), roles))


if __name__ == "__main__":
    for row in run(tuple(sys.argv[1:]) or ("chat", "roleplay")):
        print(row)
