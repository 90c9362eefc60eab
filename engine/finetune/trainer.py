"""The LoRA training loop: seeded batches, progress, checkpoints that resume, eval loss, the adapter folder."""
from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from engine.finetune.adapters import CONFIG_FILE, META_FILE, WEIGHTS_FILE, model_identity
from engine.finetune.datasets import DatasetReport, read_dataset, split
from engine.finetune.encoding import IGNORE, Encoded, encode_all
from engine.finetune.options import TrainOptions
from engine.finetune.trainlog import TrainingLog
from engine.settings import TransformersModel

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
Echo = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class TrainResult:
    out: str
    start_step: int
    steps: int
    train_loss: float | None
    eval_loss: float | None
    eval_on: str                 # "eval" (held-out rows) or "train" (no split: small dataset)
    tokens: int
    seconds: float
    tokens_per_s: float


class TrainingError(ValueError):
    """Training cannot start as asked (no usable rows, an occupied --out, a checkpoint that does not fit)."""


def micro_batches(n: int, opts: TrainOptions, step: int) -> list[list[int]]:
    """Row indices of each micro-batch of optimizer step ``step``.

    They depend only on (seed, step), so a resumed run sees exactly the batches
    an uninterrupted one would have.
    """
    per_epoch = math.ceil(n / opts.batch_size)
    out = []
    for k in range(step * opts.grad_accum, (step + 1) * opts.grad_accum):
        epoch, j = divmod(k, per_epoch)
        order = list(range(n))
        random.Random(f"{opts.seed}:{epoch}").shuffle(order)
        out.append(order[j * opts.batch_size:(j + 1) * opts.batch_size])
    return out


def total_steps(n: int, opts: TrainOptions) -> int:
    if opts.max_steps:
        return opts.max_steps
    return max(1, math.ceil(opts.epochs * math.ceil(n / opts.batch_size) / opts.grad_accum))


def lr_at(step: int, total: int, opts: TrainOptions) -> float:
    """Linear warm-up, then the scheduler's curve down to a tenth (cosine, linear) or flat (constant)."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / (opts.warmup_steps + 1)
    if opts.lr_scheduler == "constant":
        return opts.lr
    span = max(1, total - opts.warmup_steps)
    progress = min(1.0, (step - opts.warmup_steps) / span)
    falling = 1 - progress if opts.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return opts.lr * (0.1 + 0.9 * falling)


def collate(rows: list[Encoded], pad_id: int, device):
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def token_loss(model, ids, mask, labels):
    """Mean cross-entropy over the labelled tokens.

    Logits are computed only where a label follows: the vocabulary projection
    is a fifth of a small model's work and most tokens are prompt.
    """
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    targets = labels[:, 1:][keep[:, :-1]]
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:             # a model class without logits_to_keep
        logits = None
    if logits is None or logits.shape[:-1] != targets.shape:
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    return torch.nn.functional.cross_entropy(logits.float(), targets)


def autocast(device, precision: str):
    """bf16 autocast where the hardware does bf16 natively (about 1.5x on AVX512-BF16 CPUs); else a no-op."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                      or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    if precision == "auto" and not native:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def evaluate(model, rows: list[Encoded], batch_size: int, pad_id: int, device,
             precision: str = "fp32") -> float | None:
    """Token-weighted mean loss on the assistant tokens of ``rows``."""
    import torch

    if not rows:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids, mask, labels = collate(rows[i:i + batch_size], pad_id, device)
            n = int((labels[:, 1:] != IGNORE).sum())
            with autocast(device, precision):
                total += float(token_loss(model, ids, mask, labels)) * n
            count += n
    model.train()
    return total / count if count else None


def _checkpoint_dirs(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def _lora_options(opts: TrainOptions) -> dict:
    return {"rank": opts.rank, "alpha": opts.alpha, "target_modules": list(opts.target_modules)}


def save_adapter(model, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors, loadable by plain peft."""
    import warnings

    with warnings.catch_warnings():
        # peft looks for the base model's config under base_model_name_or_path, a pkg:/GGUF reference here.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model.save_pretrained(str(folder))


def save_checkpoint(model, optimizer, out: Path, step: int, opts: TrainOptions, losses: list[float]) -> Path:
    """Adapter weights, optimizer moments and step, written whole or not at all."""
    import torch

    final = out / CHECKPOINTS / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "torch_rng": torch.get_rng_state()},
               tmp / STATE_FILE)
    (tmp / "state.json").write_text(json.dumps(
        {"step": step, "lora": _lora_options(opts), "losses": losses[-50:]}, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoint_dirs(out)[:-opts.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise TrainingError(f"{path} is not a checkpoint folder (no {STATE_FILE})")
        return path
    found = [p for p in _checkpoint_dirs(out) if (p / STATE_FILE).is_file()]
    if not found:
        raise TrainingError(f"--resume: no checkpoint in {out / CHECKPOINTS}")
    return found[-1]


def load_checkpoint(model, optimizer, path: Path, opts: TrainOptions) -> int:
    """Restore adapter weights and optimizer; the step it was saved at."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if saved.get("lora") != _lora_options(opts):
        raise TrainingError(f"checkpoint {path} was trained with {saved.get('lora')}, "
                            f"not {_lora_options(opts)}: pass the same --rank/--alpha/--target-modules")
    set_peft_model_state_dict(model, load_file(str(path / WEIGHTS_FILE)))
    state = torch.load(path / STATE_FILE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _check_out(out: Path, resume: str | None) -> None:
    if resume:
        return
    if _checkpoint_dirs(out):
        raise TrainingError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    if (out / CONFIG_FILE).exists():
        raise TrainingError(f"{out} already holds an adapter; choose another --out")


def prepare_data(tokenizer, dataset: Path, opts: TrainOptions, system_prompt: str,
                 max_length: int) -> tuple[list[Encoded], list[Encoded], DatasetReport]:
    """(train, eval, report): read, validate, encode and split the dataset."""
    examples, report = read_dataset(dataset)
    rows = encode_all(tokenizer, examples, system_prompt, max_length, report)
    train_rows, eval_rows = split(rows, opts.eval_fraction_for(len(rows)), opts.seed)
    report.train_rows, report.eval_rows = len(train_rows), len(eval_rows)
    return train_rows, eval_rows, report


def add_lora(model, cfg: TransformersModel, opts: TrainOptions):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization != "none":
        # QLoRA: casts norms to fp32 and turns on gradient checkpointing for the 4-bit base.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    targets = opts.target_modules
    lora = LoraConfig(
        r=opts.rank, lora_alpha=opts.alpha, lora_dropout=opts.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=targets[0] if targets == ("all-linear",) else list(targets),
    )
    model = get_peft_model(model, lora)
    # The configured model reference, not a machine-local folder: serving checks the adapter against it.
    model.peft_config["default"].base_model_name_or_path = cfg.model
    return model


def train(model, tokenizer, cfg: TransformersModel, opts: TrainOptions, dataset: Path, out: Path, *,
          resume: str | None = None, strict: bool = False, echo: Echo = _stderr,
          progress: bool = True, log: TrainingLog | None = None) -> TrainResult:
    """Teach ``model`` (a loaded base model, not yet wrapped) the dataset; write the adapter to ``out``.

    ``log`` receives each step's loss, learning rate and tokens/s, and the eval loss at the end.
    """
    import torch
    from tqdm.auto import tqdm

    out = Path(out)
    _check_out(out, resume)
    system_prompt = cfg.system_prompt if opts.system_prompt is None else opts.system_prompt
    max_length = opts.max_length or cfg.n_ctx
    train_rows, eval_rows, report = prepare_data(tokenizer, dataset, opts, system_prompt, max_length)
    echo(report.summary())
    if strict and report.problems:
        raise TrainingError(f"{len(report.problems)} bad rows (listed above) and --strict is set")
    if not train_rows:
        raise TrainingError(f"{dataset}: no usable rows to train on")

    torch.manual_seed(opts.seed)          # the LoRA init, so one seed gives one adapter
    model = add_lora(model, cfg, opts)
    model.train()
    device = model.get_input_embeddings().weight.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    total = total_steps(len(train_rows), opts)
    step = 0
    if resume:
        checkpoint = find_checkpoint(out, resume)
        step = load_checkpoint(model, optimizer, checkpoint, opts)
        echo(f"resuming from {checkpoint} at step {step} of {total}")
    start_step = step
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainable = sum(p.numel() for p in params)
    echo(f"LoRA r={opts.rank} alpha={opts.alpha} on {cfg.model}: {trainable:,} trainable parameters, "
         f"{total} steps of {opts.batch_size}x{opts.grad_accum} rows, lr {opts.lr}")

    losses: list[float] = []
    tokens, started = 0, time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="fine-tuning", unit="step", disable=not progress, file=sys.stderr)
    try:
        while step < total:
            lr = lr_at(step, total, opts)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for indices in micro_batches(len(train_rows), opts, step):
                ids, mask, labels = collate([train_rows[i] for i in indices], pad_id, device)
                with autocast(device, opts.precision):
                    loss = token_loss(model, ids, mask, labels) / opts.grad_accum
                loss.backward()
                step_loss += loss.item()
                tokens += int(mask.sum())
            torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(step_loss)
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{rate:.0f}")
            if log is not None:
                log.step(step, step_loss, lr, rate)
            if step % opts.save_every == 0 or step == total:
                save_checkpoint(model, optimizer, out, step, opts, losses)
    except KeyboardInterrupt:
        if step > start_step:
            saved = save_checkpoint(model, optimizer, out, step, opts, losses)
            echo(f"interrupted at step {step}; saved {saved}: continue with --resume")
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - started

    eval_on = "eval" if eval_rows else "train"
    eval_loss = evaluate(model, eval_rows or train_rows, opts.batch_size, pad_id, device, opts.precision)
    if log is not None:
        log.end(step, eval_loss, eval_on)
    save_adapter(model, out)
    result = TrainResult(
        out=str(out), start_step=start_step, steps=step,
        train_loss=sum(losses[-5:]) / len(losses[-5:]) if losses else None,
        eval_loss=eval_loss, eval_on=eval_on, tokens=tokens, seconds=round(seconds, 2),
        tokens_per_s=round(tokens / seconds, 1) if seconds > 0 and tokens else 0.0,
    )
    meta = {
        "base_model": cfg.model, "base_identity": model_identity(cfg.model), "system_prompt": system_prompt,
        "options": opts.model_dump(mode="json"), "dataset": report.to_dict(), **asdict(result),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    model.eval()
    return result
