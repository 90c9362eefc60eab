"""Hugging Face transformers backend: a causal LM (optionally 4-bit) streamed token by token."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from engine.backends.base import BatchStats, Emit, Finish, Sampling
from engine.backends.hf_loading import adapter_info, load_causal_lm, model_source
from engine.settings import TransformersModel

log = logging.getLogger(__name__)


class _Decoder:
    """Turns token ids into text pieces; holds back a piece that ends inside a UTF-8 character."""

    def __init__(self, tokenizer, emit: Emit):
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.sent = 0

    def push(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.emit(text[self.sent:])
            self.sent = len(text)


class TransformersGenerator:
    def __init__(self, cfg: TransformersModel, base_dir: Path, cache_dir: Path):
        import torch

        self.cfg = cfg
        self.torch = torch
        self.model, self.tokenizer = load_causal_lm(cfg, base_dir, cache_dir)
        self.n_ctx = cfg.n_ctx
        self.max_concurrent = 1
        self.source = model_source(cfg, base_dir)
        self.device = next(self.model.parameters()).device
        self.adapter = adapter_info(cfg, base_dir)

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        prompt_len = inputs["input_ids"].shape[1]
        decoder = _Decoder(self.tokenizer, emit)
        eos = self.tokenizer.eos_token_id

        class Streamer(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:           # generate() first hands over the prompt itself
                    self.first = False
                    return
                for token_id in value.reshape(-1).tolist():
                    if token_id != eos:
                        decoder.push(token_id)

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature <= 0
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None if greedy else (sampling.top_k or None),
                repetition_penalty=sampling.repetition_penalty,
                # No stop_strings here: building transformers' stop tables costs more than the first token;
                # the engine's streaming cleaner finds stop strings and cancels within one token.
                streamer=Streamer(),
                stopping_criteria=StoppingCriteriaList([Cancelled()]),
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out.shape[1] - prompt_len
        reason = "cancelled" if cancel.is_set() else ("length" if new >= sampling.max_new_tokens else "stop")
        return Finish(tokens=new, prompt_tokens=prompt_len, reason=reason)

    def batch_stats(self) -> BatchStats:
        return BatchStats()

    def info(self) -> dict:
        return {"backend": "transformers", "model": self.cfg.model, "device": str(self.device),
                "quantization": self.cfg.quantization, "n_ctx": self.n_ctx,
                "adapter": self.adapter["name"] if self.adapter else None,
                "adapter_path": self.adapter["path"] if self.adapter else None}

    def close(self) -> None:
        del self.model
