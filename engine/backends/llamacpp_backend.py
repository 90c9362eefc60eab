"""llama-cpp-python backend: a GGUF model, its own chat template, streamed completion."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from engine.backends.base import BatchStats, Emit, Finish, Sampling, TextGenerator
from engine.settings import LlamaCppModel

log = logging.getLogger(__name__)

# llama.cpp's enum llama_split_mode
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}


def load_llama(cfg: LlamaCppModel, path: Path, n_ctx: int | None = None):
    """The high-level ``Llama`` object on ``cfg``'s GPU placement; ``n_ctx`` overrides the config's window."""
    from llama_cpp import Llama

    n_ctx = n_ctx or cfg.n_ctx
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=min(cfg.n_batch, n_ctx),
        n_threads=cfg.n_threads,
        n_gpu_layers=cfg.n_gpu_layers,
        main_gpu=cfg.main_gpu,
        split_mode=SPLIT_MODES[cfg.split_mode],
        tensor_split=list(cfg.tensor_split) if cfg.tensor_split else None,
        offload_kqv=cfg.offload_kqv,
        use_mmap=cfg.use_mmap,
        use_mlock=cfg.use_mlock,
        seed=cfg.seed if cfg.seed is not None else 0xFFFFFFFF,
        chat_format=cfg.chat_format,
        verbose=False,
    )


class LlamaText:
    """The parts both llama.cpp backends share: the chat template, token counts, info."""

    def __init__(self, cfg: LlamaCppModel, path: Path, llm):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.cfg = cfg
        self.path = path
        self.n_ctx = cfg.n_ctx
        self.llm = llm
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{path}: the GGUF has no chat template; set chat_format in bot.yaml")
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(llm.token_eos()),
            bos_token=llm._model.token_get_text(llm.token_bos()),
        )

    def render(self, messages: list[dict[str, str]]) -> str:
        return self._formatter(messages=messages).prompt

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def info(self) -> dict:
        return {"backend": "llamacpp", "model": str(self.path), "n_ctx": self.n_ctx,
                "n_gpu_layers": self.cfg.n_gpu_layers, "split_mode": self.cfg.split_mode,
                "max_batch": self.max_concurrent}


class LlamaCppGenerator(LlamaText):
    """One ``Llama`` object, one reply at a time (``max_batch: 1``)."""

    def __init__(self, cfg: LlamaCppModel, path: Path):
        super().__init__(cfg, path, load_llama(cfg, path))
        self.max_concurrent = 1                   # one Llama object decodes one sequence at a time

    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        finish = Finish(prompt_tokens=self.count_tokens(prompt))
        stream = self.llm.create_completion(
            prompt,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            repeat_penalty=sampling.repetition_penalty,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            stream=True,
        )
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                if not choice.get("finish_reason"):    # the closing chunk carries no new token
                    finish.tokens += 1
                if choice["text"]:
                    emit(choice["text"])
                if choice.get("finish_reason"):
                    finish.reason = choice["finish_reason"]
                if cancel.is_set():
                    finish.reason = "cancelled"
                    break
        finally:
            stream.close()
        return finish

    def batch_stats(self) -> BatchStats:
        return BatchStats()

    def close(self) -> None:
        self.llm.close()


def make_llamacpp(cfg: LlamaCppModel, path: Path) -> TextGenerator:
    """The slot backend (continuous batching, prompt cache) when ``max_batch > 1``, else one ``Llama``."""
    if cfg.max_batch > 1:
        from engine.backends.llamacpp_slots import LlamaCppSlots

        return LlamaCppSlots(cfg, path)
    return LlamaCppGenerator(cfg, path)
