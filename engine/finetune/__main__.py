"""CLI: python -m engine.finetune --dataset FILE --out ai_model/adapters/NAME [options]: train a LoRA adapter."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

# Spinning OpenMP workers stall training 5-10x when the cores are shared with other work (measured
# on 2 cores); sleeping ones cost next to nothing here. Read once, when torch loads, so set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic import ValidationError

from engine.finetune.datasets import DatasetError
from engine.finetune.options import ConfigFileError, TrainOptions, chat_model_of
from engine.settings import TransformersModel

_OPTION_FLAGS = ("epochs", "max_steps", "lr", "rank", "alpha", "dropout", "batch_size", "grad_accum",
                 "target_modules", "max_length", "eval_fraction", "seed", "save_every", "system_prompt",
                 "precision", "warmup_steps", "weight_decay", "lr_scheduler")


def parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    p = argparse.ArgumentParser(
        prog="python -m engine.finetune",
        description="Train a PEFT LoRA adapter for the chat model (models.chat in bot.yaml) on a dataset of "
                    "Alpaca (instruction/input/output), QA (question/answer) or chat (messages) rows in "
                    "JSONL, JSON or CSV. Serve it with models.chat.adapter: OUT in bot.yaml.",
    )
    p.add_argument("--dataset", required=True, type=Path, help="a .jsonl, .json or .csv file")
    p.add_argument("--out", type=Path, help="adapter folder to write, e.g. ai_model/adapters/NAME")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="bot.yaml whose models.chat is trained (default: ./bot.yaml)")
    src.add_argument("--model", help="train this model instead (HF id, local folder or .gguf; pkg:PACKAGE/FILE)")
    p.add_argument("--epochs", type=float, help=f"passes over the data (default {d.epochs:g}; --max-steps wins)")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train in total")
    p.add_argument("--lr", type=float, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--warmup-steps", type=int,
                   help=f"steps the learning rate climbs to --lr (default {d.warmup_steps})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {d.weight_decay:g})")
    p.add_argument("--lr-scheduler", choices=("linear", "cosine", "constant"),
                   help=f"learning rate after warm-up: cosine or linear down to a tenth, or constant "
                        f"(default {d.lr_scheduler})")
    p.add_argument("--rank", type=int, help=f"LoRA rank r (default {d.rank})")
    p.add_argument("--alpha", type=float, help=f"LoRA alpha (default {d.alpha:g})")
    p.add_argument("--dropout", type=float, help=f"LoRA dropout (default {d.dropout:g})")
    p.add_argument("--batch-size", type=int, help=f"rows per micro-batch (default {d.batch_size})")
    p.add_argument("--grad-accum", type=int, help=f"micro-batches per optimizer step (default {d.grad_accum})")
    p.add_argument("--target-modules", nargs="+",
                   help="module names to adapt, e.g. q_proj v_proj (default: all-linear)")
    p.add_argument("--max-length", type=int, help="longest example in tokens; longer rows are reported "
                                                   "and left out (default: the model's n_ctx)")
    p.add_argument("--eval-fraction", type=float,
                   help="share of rows held out for the eval loss (default 0.1 from 50 rows up, else 0: "
                        "the eval loss is then measured on the training rows)")
    p.add_argument("--seed", type=int, help=f"shuffle and split seed (default {d.seed})")
    p.add_argument("--save-every", "--save-steps", dest="save_every", type=int,
                   help=f"checkpoint every N steps (default {d.save_every})")
    p.add_argument("--logging-dir", type=Path, help="write LOGGING_DIR/train_log.jsonl: one row per step "
                                                    "(step, loss, learning_rate, tokens_per_s), then eval_loss")
    p.add_argument("--plot", action="store_true", help="write OUT/loss.png, the loss curve (matplotlib)")
    p.add_argument("--system-prompt", help="system prompt to train with (default: the chat model's own, "
                                           "which is what serving sends)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="auto (default): bf16 autocast where the hardware has native bf16; fp32: exact")
    p.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="continue from the newest checkpoint under OUT/checkpoints (or the given one)")
    p.add_argument("--strict", action="store_true", help="stop when any row is bad instead of leaving it out")
    p.add_argument("--check", action="store_true", help="only read and validate the dataset; print statistics")
    p.add_argument("--recall", type=int, default=0, metavar="N",
                   help="after training, ask N taught questions with the serving sampling settings")
    p.add_argument("--device", help="override models.chat.device (cpu, cuda, cuda:N, auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: models.chat.threads, else all "
                                               "cores; 1 is faster on a CPU shared with other work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _training_model(cfg: TransformersModel, device: str | None, threads: int | None, echo) -> TransformersModel:
    update: dict = {"adapter": None, "active_adapter": None}
    if device:
        update["device"] = device
    if threads is not None:
        update["threads"] = threads
    cfg = TransformersModel.model_validate({**cfg.model_dump(), **update})
    if cfg.quantization != "none" and not cfg.device.startswith("cuda") and cfg.device != "auto":
        echo(f"note: quantization {cfg.quantization} is for CUDA; training the full-precision model on {cfg.device}")
        cfg = cfg.model_copy(update={"quantization": "none"})
    return cfg


def _echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg, base_dir = chat_model_of(args.config, args.model)
        cfg = _training_model(cfg, args.device, args.threads, _echo)
        opts = TrainOptions(**{k: getattr(args, k) for k in _OPTION_FLAGS if getattr(args, k) is not None})
    except (ConfigFileError, ValidationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.check and not args.out:
        print("error: --out is required to train (or pass --check to only validate the dataset)", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("error: --plot needs matplotlib (pip install -r requirements.txt)", file=sys.stderr)
        return 2
    try:
        return _run(args, cfg, base_dir, opts)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(args, cfg: TransformersModel, base_dir: Path, opts: TrainOptions) -> int:
    from engine.backends.hf_loading import load_causal_lm
    from engine.finetune.datasets import read_dataset
    from engine.finetune.recall import qa_pairs, recall
    from engine.finetune.trainer import prepare_data, train
    from engine.finetune.trainlog import PLOT_FILE, TrainingLog, plot_loss

    read_dataset(args.dataset)        # an unreadable file fails before the model is loaded
    if args.check:
        from engine.finetune.encoding import load_tokenizer

        tokenizer = load_tokenizer(cfg, base_dir)
        system = cfg.system_prompt if opts.system_prompt is None else opts.system_prompt
        _, _, report = prepare_data(tokenizer, args.dataset, opts, system, opts.max_length or cfg.n_ctx)
        print(report.summary())
        return 1 if report.problems else 0

    model, tokenizer = load_causal_lm(cfg, base_dir, cache_dir=base_dir / "ai_model", for_training=True)
    log = TrainingLog(args.logging_dir) if (args.logging_dir or args.plot) else None
    result = train(model, tokenizer, cfg, opts, args.dataset, args.out, resume=args.resume, strict=args.strict,
                   echo=_echo, progress=not args.no_progress, log=log)
    where = "held-out rows" if result.eval_on == "eval" else "training rows (no held-out split)"
    print(f"trained {result.steps - result.start_step} steps (now at step {result.steps}) in {result.seconds:.0f} s, "
          f"{result.tokens_per_s:.0f} tokens/s; eval loss {result.eval_loss:.4f} on {where}")
    print(f"adapter written to {args.out}; serve it with models.chat.adapter: {args.out}")
    if log is not None and log.path is not None:
        print(f"training log: {log.path}")
    if args.plot:
        print(f"loss curve: {plot_loss(log, args.out / PLOT_FILE, f'{cfg.model} on {args.dataset.name}')}")
    if args.recall:
        examples, _ = read_dataset(args.dataset)
        pairs = qa_pairs(examples)[: args.recall]
        found = recall(model, tokenizer, cfg, pairs, seed=opts.seed, system_prompt=opts.system_prompt)
        print(f"{found} taught answers with the serving sampling settings "
              f"(temperature {cfg.temperature}, top_k {cfg.top_k}, top_p {cfg.top_p}, "
              f"repetition_penalty {cfg.repetition_penalty})")
        for question, taught, said in found.misses:
            print(f"  missed: {question!r} -> {said!r} (taught {taught!r})")
    print(json.dumps({"steps": result.steps, "eval_loss": result.eval_loss, "seconds": result.seconds,
                      "tokens_per_s": result.tokens_per_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
