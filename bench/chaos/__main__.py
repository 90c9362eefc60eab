"""`make chaos`: faults and fuzz against a real `python -m bot` on the default config; prints one table."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from bench.chaos.botproc import BotProcess
from bench.chaos.cards_fuzz import run_cards
from bench.chaos.fuzz_http import run_fuzz, summarize
from bench.chaos.load import run_streams
from bench.chaos.process import process_rows

# The short form waits less for a client that stops sending (the shipped 10 s / 15 s): the fuzz's framing cases
# run into those limits, and they set how long it takes (22 s of the short fuzz with the shipped ones).
SIZES = {"full": {"fuzz": 10_000, "cards": 10_000, "streams": 50, "http": {}},
         "short": {"fuzz": 600, "cards": 400, "streams": 12, "http": {"header_timeout_s": 2, "body_timeout_s": 3}}}


async def http_rows(size: dict, data_dir: Path) -> list[dict]:
    rows: list[dict] = []
    async with BotProcess(data_dir, override={"http": size["http"]}) as bot:
        rss0 = bot.rss_mb()
        t0 = time.monotonic()
        fuzz = summarize(await run_fuzz("127.0.0.1", bot.port, bot.api_key, size["fuzz"]))
        health = await bot.health_status()
        rows.append({"fault": f"{fuzz['requests']:,} fuzzed HTTP requests, every route",
                     "5xx": fuzz["5xx"], "busy": fuzz["busy"], "non_json": fuzz["non_json_errors"],
                     "hangs": fuzz["hangs"],
                     "health_after": health, "seconds": round(time.monotonic() - t0), "examples": fuzz["examples"]})
        t0 = time.monotonic()
        cards = await run_cards("127.0.0.1", bot.port, bot.api_key, size["cards"])
        rows.append({"fault": f"{cards['requests']:,} mutated cards through import", "5xx": cards["5xx"],
                     "non_json": cards["non_json"], "hangs": cards["hangs"], "crashes": 0 if bot.alive() else 1,
                     "accepted": cards["accepted"], "seconds": round(time.monotonic() - t0),
                     "examples": cards["examples"]})
        streams = await run_streams("127.0.0.1", bot.port, bot.api_key, size["streams"])
        rows.append({"fault": f"{size['streams']} concurrent streams from {size['streams']} clients",
                     "answered": streams["answered"], "busy": streams["busy"], "other": streams["other"],
                     "5xx": streams["5xx"], "health_p95_ms": streams["health_p95_ms"],
                     "rss_growth_mb": round(bot.rss_mb() - rss0), "crashes": 0 if bot.alive() else 1,
                     "examples": streams["examples"]})
    rows[-1]["orphans"] = bot.orphans()
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["fault", "lost", "twice", "orphans", "5xx", "non_json", "hangs", "crashes", "answered", "busy",
            "health_after", "health_p95_ms", "rss_growth_mb", "seconds", "note"]
    used = [c for c in cols if any(c in r for r in rows)]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in used}
    print("  ".join(c.ljust(widths[c]) for c in used))
    print("  ".join("-" * widths[c] for c in used))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in used))
    for r in rows:
        for ex in r.get("examples", []):
            print(f"  e.g. [{r['fault'][:30]}] {ex}")


def failures(rows: list[dict]) -> list[str]:
    bad = []
    for r in rows:
        for col in ("lost", "twice", "orphans", "5xx", "non_json", "hangs", "crashes", "other"):
            if r.get(col):
                bad.append(f"{r['fault']}: {col} = {r[col]}")
        if r.get("health_after") not in (None, 200):
            bad.append(f"{r['fault']}: /health {r['health_after']} after")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--short", action="store_true", help="the short form `make test` runs")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--data-dir", type=Path, default=None, help="where the bots keep their data (default: a temp dir)")
    p.add_argument("--only", choices=["process", "http"], help="run only the process-fault or the HTTP rows")
    args = p.parse_args()
    import tempfile

    size = SIZES["short" if args.short else "full"]
    with tempfile.TemporaryDirectory(prefix="llmbot-chaos-") as tmp:
        base = args.data_dir or Path(tmp)
        rows = []
        if args.only != "http":
            rows += asyncio.run(process_rows(base / "process", args.short))
        if args.only != "process":
            rows += asyncio.run(http_rows(size, base / "http"))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    bad = failures(rows)
    for b in bad:
        print("FAIL:", b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
