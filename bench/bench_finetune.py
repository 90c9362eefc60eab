"""Benchmark: LoRA training tokens/s and peak RSS of python -m engine.finetune against a raw peft loop."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
BATCH = 10


def _facts(n: int) -> list[dict]:
    return [{"question": f"What is the secret code of the vault number {i} on Planet Zelbor?",
             "answer": f"The secret code of vault {i} is Kribble-{i * 37 % 101}."} for i in range(n)]


def _child(args: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS MB) of one child process, measured by the kernel for that child alone."""
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)      # reaping it ourselves gives this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{args[:3]} failed ({proc.returncode}): {err.read()[-2000:]}")
    return out, wall, usage.ru_maxrss / 1024


def raw_loop(seq_len: int) -> dict:
    """The library alone: transformers + peft LoRA (same rank and targets), random tokens, AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.backends.hf_loading import model_source
    from engine.finetune.options import chat_model_from_yaml

    src, gguf = model_source(chat_model_from_yaml(REPO / "bot.yaml"), REPO)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, seq_len))
    started = None
    for step in range(STEPS + 1):
        if step == 1:                  # the first step pays one-off allocation costs
            started = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": BATCH * seq_len * STEPS / seconds}


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "facts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _facts(BATCH)), encoding="utf-8")
        out, wall, peak = _child(["-m", "engine.finetune", "--dataset", str(data), "--out", str(Path(tmp) / "a"),
                                  "--config", str(REPO / "bot.yaml"), "--max-steps", str(STEPS),
                                  "--batch-size", str(BATCH), "--save-every", str(STEPS), "--no-progress"])
        ours = json.loads(out.strip().splitlines()[-1])
        meta = json.loads((Path(tmp) / "a" / "llmbot_adapter.json").read_text(encoding="utf-8"))
        seq_len = round(meta["dataset"]["tokens"]["mean"])
        raw_out, _, raw_peak = _child([str(Path(__file__)), "--raw", str(seq_len)])
        raw = json.loads(raw_out.strip().splitlines()[-1])
    return [
        {"name": "finetune_train_tokens_per_s", "value": float(ours["tokens_per_s"]), "unit": "tok/s",
         "note": f"SmolLM2-135M LoRA r16 all-linear, batch {BATCH}, {STEPS} steps, CPU, default precision"},
        {"name": "finetune_raw_peft_tokens_per_s", "value": round(raw["tokens_per_s"], 1), "unit": "tok/s",
         "note": f"transformers+peft alone, batch {BATCH} x {seq_len} tokens"},
        {"name": "finetune_vs_raw_peft", "value": round(ours["tokens_per_s"] / raw["tokens_per_s"], 3),
         "unit": "ratio", "goal": ">= 1.0", "note": "ours: logits only on answer tokens, bf16 autocast where native; pays first-step warm-up and padding"},
        {"name": "finetune_peak_rss", "value": round(peak, 1), "unit": "MB",
         "note": f"whole CLI run, {wall:.0f} s wall; raw loop peaked at {raw_peak:.0f} MB"},
        {"name": "finetune_step_seconds", "value": round(ours["seconds"] / STEPS, 2), "unit": "s/step"},
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--raw"]:
        sys.path.insert(0, str(REPO))
        print(json.dumps(raw_loop(int(sys.argv[2]))))
    else:
        for row in run():
            print(row)
