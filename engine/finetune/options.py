"""Typed training options and the chat-model settings read from bot.yaml (models.chat)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from engine.settings import Strict, TransformersModel

DEFAULT_TARGETS = ("all-linear",)     # every linear layer but the output head, on any architecture


class TrainOptions(Strict):
    """LoRA and optimisation settings.

    The defaults teach a few dozen short facts to SmolLM2-135M on two CPU cores
    within ~60 steps: a high LoRA learning rate and batches that show every fact
    ~30 times (measured on 20 facts, 60 steps: batch 10, lr 3e-3 recalled 20/20
    with the serving sampling in 225 s; batch 20 too, in twice the time; batch 4,
    lr 2e-3 only 1/20).
    """

    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1)     # wins over epochs
    lr: float = Field(3e-3, gt=0, le=1.0)
    warmup_steps: int = Field(3, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    # After warm-up. cosine and linear end at a tenth of lr (late steps polish what early ones taught).
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    batch_size: int = Field(10, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int | None = Field(None, ge=16)   # None: the model's n_ctx
    eval_fraction: float | None = Field(None, ge=0, lt=1)   # None: 0.1 from 50 rows up, else 0
    seed: int = 0
    save_every: int = Field(20, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    system_prompt: str | None = None              # None: the chat model's system_prompt
    # auto: bf16 autocast where the CPU/GPU computes bf16 natively; the adapter's weights stay fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def eval_fraction_for(self, rows: int) -> float:
        if self.eval_fraction is not None:
            return self.eval_fraction
        # A handful of facts is taught, not sampled: holding some out would leave them untaught.
        return 0.1 if rows >= 50 else 0.0


class ConfigFileError(ValueError):
    """bot.yaml cannot give a chat model to train."""


def chat_model_from_yaml(path: Path) -> TransformersModel:
    """``models.chat`` of a bot.yaml, validated; the rest of the file is the bot's business."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigFileError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path}: not valid YAML: {e}") from None
    chat = ((data or {}).get("models") or {}).get("chat") if isinstance(data, dict) else None
    if not isinstance(chat, dict):
        raise ConfigFileError(f"{path}: no models.chat section")
    if chat.get("backend") != "transformers":
        raise ConfigFileError(
            f"{path}: models.chat.backend is {chat.get('backend')!r}; this command needs backend: transformers")
    try:
        return TransformersModel.model_validate(chat)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigFileError(f"{path}: models.chat.{where}: {first['msg']}") from None


def chat_model_of(config: Path | None, model: str | None) -> tuple[TransformersModel, Path]:
    """The chat model a command works on (``model`` wins over ``config``, default ./bot.yaml) and the folder
    its relative paths are resolved against."""
    if model:
        return TransformersModel(backend="transformers", model=model), Path.cwd()
    path = config or Path("bot.yaml")
    if not path.is_file():
        raise ConfigFileError(f"{path}: no such file (pass --config bot.yaml or --model MODEL)")
    return chat_model_from_yaml(path), path.resolve().parent
