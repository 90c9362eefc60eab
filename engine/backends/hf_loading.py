"""Load a transformers causal LM and its tokenizer from an HF id, a local folder or a GGUF file."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

# adapter_info is imported from here by /health and /metrics.
from engine.backends.derived import current, mark
from engine.finetune.adapters import adapter_info, attach_adapters
from engine.settings import TransformersModel, resolve_model_path

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, _DTYPES[name]) if name in _DTYPES else "auto"


def model_source(cfg: TransformersModel, base_dir: Path) -> tuple[str, str | None]:
    """(folder or HF id, gguf file name or None) of the configured model."""
    if cfg.model.endswith(".gguf"):
        path = resolve_model_path(cfg.model, base_dir)
        return str(path.parent), path.name
    local = resolve_model_path(cfg.model, base_dir)
    return (str(local), None) if local.exists() else (cfg.model, None)


def model_file(cfg: TransformersModel, base_dir: Path) -> Path | None:
    """The single weights file to checksum, when the model is one file."""
    src, gguf = model_source(cfg, base_dir)
    return Path(src) / gguf if gguf else None


def readable_source(cfg: TransformersModel, base_dir: Path, cache_dir: Path) -> str:
    """The folder or HF id transformers reads for ``cfg``: a GGUF's dequantized copy in its place."""
    src, gguf = model_source(cfg, base_dir)
    return str(dequantized_copy(src, gguf, cache_dir)) if gguf else src


def dequantized_copy(src: str, gguf: str, cache_dir: Path) -> Path:
    """A GGUF's weights and tokenizer as a plain model folder, made once and reused while the GGUF is unchanged.

    Reading the GGUF itself costs 18 s on 2 cores for SmolLM2-135M (the tokenizer is rebuilt in Python every
    time), the folder 0.9 s; bitsandbytes and gptqmodel cannot quantize a GGUF load at all.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(src) / gguf
    out = cache_dir / "dequantized" / Path(gguf).stem
    note = out / "source.json"
    if (out / "config.json").exists() and current(note, gguf_path):
        return out
    log.info("writing a dequantized copy of %s to %s (once)", gguf, out)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.partial")    # two starting bots never share a half-made copy
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src, gguf_file=gguf).save_pretrained(tmp)
    mark(tmp / "source.json", gguf_path)
    shutil.rmtree(out, ignore_errors=True)           # a copy of an older GGUF
    try:
        tmp.rename(out)
    except OSError:                                  # another process put its copy there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_gptq(src: str, gguf: str | None) -> None:
    """Refuse ``quantization: gptq`` with one reason before any weights are read."""
    if gguf:
        raise ValueError("quantization: gptq needs a GPTQ checkpoint folder, not a .gguf file")
    config = Path(src) / "config.json"
    if config.is_file():
        quant = json.loads(config.read_text(encoding="utf-8")).get("quantization_config") or {}
        if quant.get("quant_method") != "gptq":
            raise ValueError(f"quantization: gptq, but {src} is not a GPTQ checkpoint "
                             "(its config.json has no quantization_config with quant_method gptq)")
    missing = [name for name in ("gptqmodel", "optimum") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"quantization: gptq needs the {' and '.join(missing)} package"
                         f"{'s' if len(missing) > 1 else ''}, not installed here: "
                         "pip install --no-deps -r requirements-gptq.txt (see ai_model/README.md)")


def load_causal_lm(cfg: TransformersModel, base_dir: Path, cache_dir: Path, *, for_training: bool = False):
    """(model, tokenizer) as configured: device, 4-bit quantization, dtype.

    ``cache_dir`` is ai_model/ (where dequantized copies go). A configured LoRA
    adapter is attached unless ``for_training``; a wrong adapter path fails
    before the model is read.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if not for_training:
        adapter_info(cfg, base_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    src, gguf = model_source(cfg, base_dir)
    kwargs: dict = {}
    if cfg.quantization == "gptq":
        # The checkpoint's own quantization_config drives transformers' GPTQ integration (gptqmodel kernels).
        check_gptq(src, gguf)
        kwargs["device_map"] = {"": "cpu"}          # cuda and auto are mapped below, as for bitsandbytes
    elif gguf:
        src = str(dequantized_copy(src, gguf, cache_dir))
    if cfg.quantization in ("nf4", "fp4"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quantization,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=_torch_dtype(cfg.compute_dtype),
        )
    if cfg.torch_dtype != "auto":
        kwargs["dtype"] = _torch_dtype(cfg.torch_dtype)
    if cfg.device == "auto" or (cfg.quantization != "none" and cfg.device.startswith("cuda")):
        kwargs["device_map"] = "auto" if cfg.device == "auto" else {"": cfg.device}
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    if "device_map" not in kwargs and cfg.quantization == "none":
        model.to("cuda" if cfg.device == "cuda" else cfg.device)
    if not for_training:
        model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not for_training and cfg.adapter:
        model = attach_adapters(model, cfg, base_dir)
    return model, tokenizer
