"""Build a model backend from its config: checksum, then the right backend class."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Mapping

from engine.backends.base import TextGenerator
from engine.settings import LlamaCppModel, OpenAIModel, TransformersModel, resolve_model_path

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A model that cannot be loaded as configured; the message says which and why."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha256(role: str, path: Path | None, expected: str | None) -> None:
    if not expected:
        return
    if path is None or not path.is_file():
        raise ModelLoadError(f"models.{role}.sha256 is set but the model is not a single file")
    actual = sha256_of(path)
    if actual != expected:
        raise ModelLoadError(f"models.{role}: {path} has sha256 {actual}, but bot.yaml expects {expected}; "
                             "refusing to start with a different model file")


def check_device(role: str, device: str) -> None:
    """A CUDA device that is not there is refused by name, before the model loader fails deep inside."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(f"models.{role}.device is {device}, but no CUDA GPU is available to this process "
                             "(use device: cpu, or a CUDA build of torch on a machine with a GPU)")
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= torch.cuda.device_count():
        raise ModelLoadError(f"models.{role}.device is {device}, but only {torch.cuda.device_count()} "
                             "CUDA GPU(s) are visible")


def gguf_file(role: str, cfg: LlamaCppModel, base_dir: Path, cache_dir: Path) -> Path:
    """The GGUF a llama.cpp model serves: ``model_path`` (checked against ``sha256``), or its re-encoded copy."""
    path = resolve_model_path(cfg.model_path, base_dir)
    if not path.is_file():
        raise ModelLoadError(f"models.{role}.model_path: no such file: {path}")
    check_sha256(role, path, cfg.sha256)
    if cfg.requantize == "none":
        return path
    from engine.backends.gguf_requantize import requantized

    return requantized(path, cfg.requantize, cache_dir)


def _check_model_file(role: str, cfg: TransformersModel, base_dir: Path) -> None:
    from engine.backends.hf_loading import model_file

    path = model_file(cfg, base_dir)
    if path is not None and not path.is_file():
        raise ModelLoadError(f"models.{role}.model: no such file: {path}")
    check_sha256(role, path, cfg.sha256)


def prepare_copy(role: str, cfg, base_dir: Path, cache_dir: Path) -> str | None:
    """Make the local copy a model is served from (a re-encoded GGUF, a GGUF's dequantized folder) if it is
    missing or stale; what the backend will read, or None for a remote model."""
    try:
        if isinstance(cfg, LlamaCppModel):
            return str(gguf_file(role, cfg, base_dir, cache_dir))
        if isinstance(cfg, TransformersModel):
            from engine.backends.hf_loading import readable_source

            _check_model_file(role, cfg, base_dir)
            return readable_source(cfg, base_dir, cache_dir)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - one line that names the model
        raise ModelLoadError(f"models.{role}: cannot prepare: {e}") from e
    return None


def load_backend(role: str, cfg, base_dir: Path, cache_dir: Path,
                 env: Mapping[str, str] | None = None) -> TextGenerator:
    """Load one model (blocking; call it in a thread); ``env`` holds secrets such as a server's API key."""
    try:
        if isinstance(cfg, LlamaCppModel):
            from engine.backends.llamacpp_backend import make_llamacpp

            return make_llamacpp(cfg, gguf_file(role, cfg, base_dir, cache_dir))
        if isinstance(cfg, TransformersModel):
            from engine.backends.transformers_backend import TransformersGenerator

            check_device(role, cfg.device)
            _check_model_file(role, cfg, base_dir)
            return TransformersGenerator(cfg, base_dir, cache_dir)
        if isinstance(cfg, OpenAIModel):
            from engine.backends.openai_backend import OpenAIGenerator

            env = os.environ if env is None else env
            return OpenAIGenerator(cfg, base_dir, api_key=env.get(cfg.api_key_env) if cfg.api_key_env else None)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"models.{role}: cannot load: {e}") from e
    raise ModelLoadError(f"models.{role}: unknown backend")
