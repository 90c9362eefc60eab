"""Beam search for routes that return the whole reply at once (LightKorLLM's num_beams, early_stopping)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from engine.backends.base import Emit, Finish, Sampling
from engine.backends.torch_threads import in_own_thread


@dataclass(frozen=True)
class Beams:
    """How wide to search; ``early_stopping`` ends once num_beams finished candidates exist."""

    num_beams: int
    early_stopping: bool = False


def beam_text(model, tokenizer, device, prompt: str, beams: Beams, sampling: Sampling,
              cancel: threading.Event | None = None) -> tuple[str, int, int]:
    """(text, new tokens, prompt tokens) of the best beam for ``prompt``; deterministic, no sampling.

    Only ``max_new_tokens`` and ``repetition_penalty`` of ``sampling`` apply:
    beam search keeps the most likely continuations instead of drawing one.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = cancel is not None and cancel.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=sampling.max_new_tokens, do_sample=False, num_beams=beams.num_beams,
            num_return_sequences=1, early_stopping=beams.early_stopping,
            repetition_penalty=sampling.repetition_penalty, temperature=None, top_p=None, top_k=None,
            stopping_criteria=StoppingCriteriaList([Cancelled()]), pad_token_id=tokenizer.pad_token_id,
        )
    new_ids = out[0, prompt_len:].tolist()
    eos = tokenizer.eos_token_id
    if eos is not None and eos in new_ids:
        new_ids = new_ids[:new_ids.index(eos)]
    return tokenizer.decode(new_ids, skip_special_tokens=True), len(new_ids), prompt_len


class BeamSearch:
    """A ``generate`` for the model queue that runs beam search on a transformers backend and emits once."""

    def __init__(self, backend, beams: Beams):
        self.backend, self.beams = backend, beams

    @staticmethod
    def supported(backend) -> bool:
        return all(hasattr(backend, name) for name in ("model", "tokenizer", "device"))

    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        b = self.backend
        text, tokens, prompt_tokens = in_own_thread(beam_text, b.model, b.tokenizer, b.device, prompt, self.beams,
                                                    sampling, cancel)
        if text:
            emit(text)
        reason = "cancelled" if cancel.is_set() else ("length" if tokens >= sampling.max_new_tokens else "stop")
        return Finish(tokens=tokens, prompt_tokens=prompt_tokens, reason=reason,
                      extra={"num_beams": self.beams.num_beams})
