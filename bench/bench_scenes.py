"""Benchmark scenes: the gap between one character's reply and the next in auto mode, against the model's TTFT."""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
AUTO_TURNS = 3
TOKENS = 24
CAST = {"Ada": "a retired lighthouse keeper who speaks in short, dry sentences.",
        "Bo": "a cheerful street-food guide who loves spicy rice cakes.",
        "Cy": "a quiet night-time bookseller who recommends poems."}


def _raw_ttft(llm, prompt: str) -> float:
    """llama-cpp-python alone: time to the first token of ``prompt`` from an empty cache (as a new speaker's is)."""
    llm.reset()
    t0 = time.perf_counter()
    for _ in llm.create_completion(prompt, max_tokens=1, temperature=0.0, stream=True):
        return time.perf_counter() - t0
    raise RuntimeError("no token")


async def _chain(engine, scope: str, speaker) -> list[tuple[float, float, str, float]]:
    """(first text, end, prompt, the engine's own TTFT) of each speech of one human message's auto chain."""
    from engine.types import Turn

    from engine.errors import EngineError

    out = []
    async for speech in engine.scene_turn(Turn(speaker=speaker, scope=scope, text="Tell us about tonight.")):
        first = None
        try:
            async for _ in speech:
                first = first or time.perf_counter()
        except EngineError:             # a tiny model's empty reply ends the chain; its gaps so far count
            break
        out.append((first, time.perf_counter(), speech.reply.prompt, speech.reply.stats.ttft_s))
    return out


async def _main() -> list[dict]:
    from bot.config import load
    from engine.backends.llamacpp_backend import LlamaCppGenerator
    from engine.cards import Card, CharacterRegistry
    from engine.engine import Engine
    from engine.loading import gguf_file
    from engine.settings import MaxTokens, SceneSettings
    from engine.store.embedded import EmbeddedMongo
    from engine.store.repository import Store
    from engine.types import Speaker

    cfg = load(ROOT / "bot.yaml", environ={"BOT_API_KEY": "bench"}).config
    rp_cfg = cfg.models.roleplay.model_copy(update={
        "max_new_tokens": MaxTokens(policy="fixed", fixed=TOKENS), "temperature": 0.0, "max_batch": 1})
    rp = LlamaCppGenerator(rp_cfg, gguf_file("roleplay", rp_cfg, ROOT, ROOT / "ai_model"))
    model = Engine.make_model("roleplay", rp_cfg, rp)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedMongo(Path(tmp))
        await server.start()
        store = Store(server.uri, "bench_scenes")
        await store.start()
        limits = cfg.limits.model_copy(update={"requests_per_minute": 0})
        # Short cards: the figure is a ratio, and short prompts keep the run short.
        characters = CharacterRegistry(cfg.cards, (), ROOT, discover=False)
        for name, about in CAST.items():
            characters.add_imported(Card(name=name, description=f"{{{{char}}}} is {about}",
                                         first_mes=f"Hello, I am {name}."))
        engine = Engine(models={"chat": model, "roleplay": model}, store=store, limits=limits, cards_cfg=cfg.cards,
                        characters=characters, scenes_cfg=SceneSettings(seed=1, auto_turns=AUTO_TURNS))
        try:
            speaker = Speaker("bench:1", "Ana", "en")
            gaps, prompts, engine_ttfts = [], [], []
            await engine.scenes.start("bench:warm", list(CAST), speaker)
            await _chain(engine, "bench:warm", speaker)
            for r in range(ROUNDS):
                scope = f"bench:{r}"
                await engine.scenes.start(scope, list(CAST), speaker)
                speeches = await _chain(engine, scope, speaker)
                gaps += [nxt[0] - cur[1] for cur, nxt in zip(speeches, speeches[1:])]
                prompts += [s[2] for s in speeches[1:]]
                engine_ttfts += [s[3] for s in speeches[1:]]
            ttfts = [await asyncio.to_thread(_raw_ttft, rp.llm, p) for p in prompts]
        finally:
            await store.close()
            await server.stop()
            rp.close()
    g, t, e = statistics.median(gaps), statistics.median(ttfts), statistics.median(engine_ttfts)
    return [{"name": "scene auto turn-to-turn gap ÷ model TTFT", "value": round(g / t, 3), "unit": "ratio",
             "goal": "<= 1.3",
             "note": f"gap {g * 1000:.0f} ms (end of a reply → next speaker's first text), raw llama-cpp-python TTFT "
                     f"{t * 1000:.0f} ms on the same prompts (the engine's queue-to-first-token {e * 1000:.0f} ms); "
                     f"{len(gaps)} gaps, {AUTO_TURNS} auto turns × {ROUNDS}"}]


def run() -> list[dict]:
    return asyncio.run(_main())


if __name__ == "__main__":
    for row in run():
        print(row)
