"""`make bench`: run every bench module in its own process and print one table."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["core", "cards", "openai", "discord", "telegram", "finetune"]


def modules(only: list[str]) -> list[str]:
    found = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    ordered = [m for m in ORDER if m in found] + [m for m in found if m not in ORDER]
    return [m for m in ordered if not only or m in only]


def run_one(name: str, timeout: float) -> tuple[list[dict], str | None]:
    code = f"import json, bench.bench_{name} as m; print('@@ROWS@@' + json.dumps(m.run()))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f}s"
    for line in proc.stdout.splitlines():
        if line.startswith("@@ROWS@@"):
            return json.loads(line[len("@@ROWS@@"):]), None
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return [], f"exit {proc.returncode}: {tail[0]}"


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("only", nargs="*", help=f"modules to run (default all: {', '.join(modules([]))})")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    all_rows, failed = [], []
    for name in modules(args.only):
        t0 = time.perf_counter()
        print(f"running bench_{name} …", file=sys.stderr, flush=True)
        rows, error = run_one(name, args.timeout)
        if error:
            failed.append(name)
            print(f"  bench_{name} failed: {error}", file=sys.stderr)
        for r in rows:
            all_rows.append({"module": name, **r})
        print(f"  {len(rows)} rows in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    widths = [8, 44, 12, 8, 10]
    head = ["module", "figure", "value", "unit", "goal"]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  note")
    print("-" * 110)
    for r in all_rows:
        cells = [r["module"], r["name"], fmt(r["value"]), r.get("unit", ""), r.get("goal", "")]
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + "  " + r.get("note", ""))
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=2), encoding="utf-8")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
