"""Hugging Face transformers backend: a causal LM (optionally 4-bit) streamed token by token."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from engine.backends.base import BatchStats, Emit, Finish, Sampling
from engine.backends.hf_loading import adapter_info, load_causal_lm, model_source
from engine.backends.hf_text import IncrementalDecoder
from engine.backends.torch_threads import in_own_thread
from engine.settings import TransformersModel

log = logging.getLogger(__name__)


def eos_ids(model, tokenizer) -> set[int]:
    """Every token that ends a reply: the tokenizer's EOS and the generation config's (an int or a list)."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return {i for i in ids if i is not None}


class TransformersGenerator:
    """The chat model. With ``max_batch`` > 1, concurrent generate() calls share one continuous batch
    (``transformers_batching.BatchLoop``); otherwise each call runs transformers' own generate().

    ``model``, ``tokenizer`` and ``device`` stay public: other paths (beam search, fine-tuning, the
    classifier) call the model directly. The batch loop changes no model state, and packed weights
    (``packed_linear``) compute the same products where they apply, so they still work.
    """

    def __init__(self, cfg: TransformersModel, base_dir: Path, cache_dir: Path):
        import torch

        self.cfg = cfg
        self.torch = torch
        self.model, self.tokenizer = in_own_thread(load_causal_lm, cfg, base_dir, cache_dir)
        self.n_ctx = cfg.n_ctx
        self.source = model_source(cfg, base_dir)
        self.device = next(self.model.parameters()).device
        self.adapter = adapter_info(cfg, base_dir)
        self.packed_bytes = 0           # the packed copies' size (packed_linear); shown in info()
        self.batch = self._batch_loop(cfg)
        self.max_concurrent = cfg.max_batch if self.batch else 1

    def _batch_loop(self, cfg: TransformersModel):
        from engine.backends.packed_linear import pack_for_batches
        from engine.backends.transformers_batching import BatchLoop, batchable

        if cfg.max_batch <= 1:
            return None
        why_not = batchable(self.model)
        if why_not:
            log.warning("%s decodes one reply at a time: %s", cfg.model, why_not)
            return None
        if cfg.packed_weights and self.device.type == "cpu":
            import psutil

            # Half of what is free: the KV cache, the other model and the prompt cache still need room.
            budget = psutil.virtual_memory().available // 2
            self.packed_bytes = in_own_thread(pack_for_batches, self.model, cfg.max_batch, budget)
        return BatchLoop(self.model, self.tokenizer, self.device, max_batch=cfg.max_batch,
                         kv_budget=cfg.kv_budget_tokens or cfg.n_ctx * cfg.max_batch,
                         prefill_chunk=cfg.prefill_chunk, prompt_cache=cfg.prompt_cache,
                         eos_ids=eos_ids(self.model, self.tokenizer))

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        if self.batch is not None:
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            return self.batch.submit(ids, sampling, cancel, emit)
        return self.generate_unbatched(prompt, sampling, cancel, emit)

    def generate_unbatched(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        """transformers' own generate() on this one prompt, outside the batch (the max_batch: 1 path)."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        prompt_len = inputs["input_ids"].shape[1]
        decoder = IncrementalDecoder(self.tokenizer, emit)
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

        def run():
            with torch.inference_mode():       # thread-local: entered in the thread that runs generate()
                return self.model.generate(
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

        out = in_own_thread(run)
        new = out.shape[1] - prompt_len
        reason = "cancelled" if cancel.is_set() else ("length" if new >= sampling.max_new_tokens else "stop")
        return Finish(tokens=new, prompt_tokens=prompt_len, reason=reason)

    def batch_stats(self) -> BatchStats:
        return self.batch.stats() if self.batch is not None else BatchStats()

    def info(self) -> dict:
        return {"backend": "transformers", "model": self.cfg.model, "device": str(self.device),
                "quantization": self.cfg.quantization, "n_ctx": self.n_ctx,
                "adapter": self.adapter["name"] if self.adapter else None,
                "adapter_path": self.adapter["path"] if self.adapter else None,
                "max_batch": self.max_concurrent,
                "prompt_cache": self.batch is not None and self.batch.prefix is not None,
                "packed_weights_mib": round(self.packed_bytes / 2**20)}

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
        del self.model
