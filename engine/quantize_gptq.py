"""CLI: python -m engine.quantize_gptq --out ai_model/gptq/NAME: make a GPTQ checkpoint of the chat model."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

from engine.finetune.options import ConfigFileError, chat_model_of

GROUP_SIZES = (128, 64, 32, 16)

# Calibration text like what the bot is asked (Korean and English, chat and story): GPTQ fits each layer's
# rounding to the activations these produce. A dataset of the users' own messages (--dataset) is better.
CALIBRATION = (
    "The capital of France is Paris, and the city is known for its museums and cafés.",
    "안녕하세요! 오늘 날씨가 정말 좋네요. 산책하기 딱 좋은 날이에요.",
    "Can you explain how a compiler turns source code into a program, in simple terms?",
    "한국의 전통 음식 중에서 김치찌개와 된장찌개의 차이점을 설명해 주세요.",
    "Write a short story about a knight who is afraid of the dark but must guard a castle at night.",
    "내일 회의 준비를 위해 해야 할 일을 목록으로 정리해 줄 수 있나요?",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "*She smiles softly and sets the lantern on the table.* \"You came back. I was starting to worry.\"",
    "What are three tips for sleeping better when you have to wake up early for work?",
    "서울에서 부산까지 기차로 가면 시간이 얼마나 걸리나요? KTX와 일반 열차를 비교해 주세요.",
    "Summarise the plot of a mystery novel in which the detective turns out to be the culprit.",
    "*The tavern falls silent as the stranger walks in, rain dripping from his cloak.*",
    "How do I reverse a list in Python without changing the original list?",
    "친구에게 생일 축하 메시지를 보내고 싶은데, 따뜻하고 재미있게 써 주세요.",
    "Photosynthesis is the process by which plants turn light, water and carbon dioxide into sugar.",
    "이 문장을 영어로 번역해 주세요: 저는 주말마다 도서관에 가서 책을 읽어요.",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.quantize_gptq",
        description="Quantize the chat model (models.chat in bot.yaml, or --model) to a 4-bit GPTQ checkpoint "
                    "with gptqmodel (pip install --no-deps -r requirements-gptq.txt). Serve it with "
                    "models.chat.model: OUT and quantization: gptq. A .gguf model is dequantized first "
                    "(ai_model/dequantized/, once).",
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write, e.g. ai_model/gptq/NAME")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="bot.yaml whose models.chat is quantized (default: ./bot.yaml)")
    src.add_argument("--model", help="quantize this model instead (HF id, local folder or .gguf; pkg:PACKAGE/FILE)")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4, help="bits per weight (default 4)")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES,
                   help="weights sharing one scale; must divide every layer's input width (default: the largest "
                        "of 128, 64, 32, 16 that does; 64 for SmolLM2-135M, 128 for 8B models)")
    p.add_argument("--dataset", type=Path, help="calibration text from a fine-tuning dataset (.jsonl/.json/.csv, "
                                                "see ai_model/datasets/README.md) instead of the built-in lines")
    p.add_argument("--samples", type=int, default=64, help="calibration rows to use at most (default 64)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: models.chat.threads, else all)")
    return p


def layer_widths(model_dir: Path) -> dict[str, int]:
    """Input widths of the decoder's linear layers, from config.json (no weights read)."""
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    cfg = cfg.get("text_config", cfg)
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads else None)
    widths = {"hidden_size": cfg["hidden_size"], "intermediate_size": cfg.get("intermediate_size")}
    if heads and head_dim:
        widths["num_attention_heads × head_dim"] = heads * head_dim
    return {k: v for k, v in widths.items() if v}


def pick_group_size(widths: dict[str, int], wanted: int | None) -> int:
    """The group size to use; a wanted one that does not divide a width is refused with the ones that do."""
    fits = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths.values())]
    if wanted is None:
        if not fits:
            raise ValueError(f"no group size of {GROUP_SIZES} divides the layer widths {widths}")
        return fits[0]
    bad = {k: w for k, w in widths.items() if w % wanted}
    if bad:
        name, width = next(iter(bad.items()))
        raise ValueError(f"--group-size {wanted} does not divide {name} {width}; use "
                         f"{' or '.join(map(str, fits)) or 'another model'}")
    return wanted


def calibration_texts(dataset: Path | None, samples: int) -> list[str]:
    if dataset is None:
        return list(CALIBRATION[:samples])
    from engine.finetune.datasets import read_dataset

    examples, _ = read_dataset(dataset)
    texts = ["\n".join(m["content"] for m in ex.messages) for ex in examples]
    texts = [t for t in texts if t.strip()][:samples]
    if not texts:
        raise ValueError(f"{dataset}: no rows with text to calibrate on")
    return texts


def quantize(model_dir: Path, out: Path, bits: int, group_size: int, texts: list[str], echo) -> None:
    # gptqmodel 7.7 refuses to start on a CPU with fewer than 2 loader workers; read when it is imported.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    model_dir, out = model_dir.resolve(), out.resolve()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # gptqmodel writes its per-layer logs to ./logs: keep them with the checkpoint, not in the caller's folder.
    with contextlib.chdir(tmp):
        model = GPTQModel.load(str(model_dir), QuantizeConfig(bits=bits, group_size=group_size))
        t0 = time.monotonic()
        model.quantize(texts, tokenizer=tokenizer, batch_size=4)
        echo(f"quantized in {time.monotonic() - t0:.0f} s")
        model.save(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    missing = [n for n in ("gptqmodel", "optimum") if importlib.util.find_spec(n) is None]
    if missing:
        print(f"error: {' and '.join(missing)} not installed: pip install --no-deps -r requirements-gptq.txt "
              f"(see ai_model/README.md)", file=sys.stderr)
        return 2
    try:
        cfg, base_dir = chat_model_of(args.config, args.model)
        texts = calibration_texts(args.dataset, args.samples)
        from engine.backends.hf_loading import readable_source

        model_dir = Path(readable_source(cfg, base_dir, base_dir / "ai_model"))
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"{model_dir}: not a model folder (no config.json); pass a local folder or .gguf")
        group_size = pick_group_size(layer_widths(model_dir), args.group_size)
    except (ConfigFileError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = args.threads or cfg.threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    _echo(f"quantizing {model_dir} to {args.bits}-bit GPTQ, group size {group_size}, {len(texts)} calibration rows")
    quantize(model_dir, args.out, args.bits, group_size, texts, _echo)
    print(f"GPTQ checkpoint written to {args.out}; serve it with models.chat.model: {args.out} "
          f"and quantization: gptq")
    return 0


if __name__ == "__main__":
    sys.exit(main())
