"""Import thousands of mutated character cards (PNG bytes and JSON values) through POST /characters."""
from __future__ import annotations

import asyncio
import copy
import json
import random

from bench.chaos.botproc import ROOT
from bench.chaos.fuzz_http import Case, send

ODD = [None, 0, -1, 1.5, True, "", "x" * 300, [], {}, [None], {"a": None}, "{{char}}" * 5, "\u0000\ud7a3", 10 ** 30,
       "y" * 200_000]


def _mutate_png(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:                                   # flip bytes anywhere
        for _ in range(rng.randrange(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:                                 # truncate
        del b[rng.randrange(8, len(b)):]
    elif kind == 2:                                 # flip bytes inside the text chunks (base64 card)
        at = data.find(b"tEXt")
        for _ in range(rng.randrange(1, 10)):
            i = rng.randrange(max(at, 8), len(b))
            b[i] = rng.randrange(256)
    elif kind == 3:                                 # duplicate a slice
        i = rng.randrange(len(b))
        b[i:i] = b[i:i + rng.randrange(1, 5000)]
    else:                                           # zero a run
        i = rng.randrange(len(b))
        b[i:i + rng.randrange(1, 400)] = bytes(min(400, len(b) - i))
    return bytes(b)


def _mutate_json(rng: random.Random, obj: dict) -> bytes:
    obj = copy.deepcopy(obj)
    node, targets = obj, [(obj, k) for k in obj]
    for _ in range(rng.randrange(1, 5)):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
        elif isinstance(node, list) and node:
            key = rng.randrange(len(node))
        else:
            break
        targets.append((node, key))
        node = node[key]
    parent, key = rng.choice(targets)
    parent[key] = rng.choice(ODD)
    return json.dumps(obj).encode()


async def run_cards(host: str, port: int, api_key: str, n: int, concurrency: int = 16, seed: int = 1) -> dict:
    from engine.cards import card_to_dict, load_card

    rng = random.Random(seed)
    png = (ROOT / "cards" / "wren.png").read_bytes()
    obj = {"spec": "chara_card_v2", "spec_version": "2.0", "data": card_to_dict(load_card(png))}
    bodies = [(_mutate_png(rng, png), b"image/png") if rng.random() < 0.6 else (_mutate_json(rng, obj), b"application/json")
              for _ in range(n)]
    gate = asyncio.Semaphore(concurrency)

    async def one(body: bytes, ctype: bytes):
        async with gate:
            case = Case("POST", "/characters", {"X-API-Key": api_key.encode(), "Content-Type": ctype}, body,
                        label="card")
            return await send(case, host, port, limit_s=20)

    outs = await asyncio.gather(*(one(b, t) for b, t in bodies))
    five = [o for o in outs if o.status is not None and o.status >= 500]
    non_json = [o for o in outs if not o.json_error]
    hangs = [o for o in outs if not o.closed]
    return {"requests": n, "5xx": len(five), "non_json": len(non_json), "hangs": len(hangs),
            "accepted": sum(1 for o in outs if o.status in (200, 201)),
            "examples": [f"{o.status} {o.body[:160]!r}" for o in (five + non_json + hangs)[:6]]}
