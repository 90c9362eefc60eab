"""Pick one sequence's next token from its logits: repetition penalty, temperature, top-k, top-p, its own RNG."""
from __future__ import annotations

import random

from engine.backends.base import Sampling


class TokenPicker:
    """One request's sampler, in the order transformers' generate() applies the same settings.

    ``seen`` holds the ids the repetition penalty applies to (prompt and
    reply, as in generate()). A request with a seed gets its own
    ``torch.Generator``, so its draws do not depend on what else is batched
    with it. Temperature 0 is greedy (the penalty still applies).
    """

    def __init__(self, torch, sampling: Sampling, prompt_ids: list[int], device):
        self.torch, self.s = torch, sampling
        self.penalize = sampling.repetition_penalty != 1.0
        self._seen_set = set(prompt_ids) if self.penalize else set()
        self.seen = torch.tensor(sorted(self._seen_set), dtype=torch.long, device=device)
        self.generator = None
        if sampling.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))

    def _note(self, token_id: int) -> None:
        if self.penalize and token_id not in self._seen_set:
            self._seen_set.add(token_id)
            self.seen = self.torch.cat([self.seen, self.seen.new_tensor([token_id])])

    def pick(self, logits) -> int:
        """The next token for a 1-D row of logits (float32)."""
        torch, s = self.torch, self.s
        if self.penalize and self.seen.numel():
            logits = logits.clone()
            score = logits.gather(0, self.seen)
            logits.scatter_(0, self.seen, torch.where(score < 0, score * s.repetition_penalty,
                                                      score / s.repetition_penalty))
        if self.generator is None:
            token = int(logits.argmax())
        else:
            token = self._draw(logits / s.temperature)
        self._note(token)
        return token

    def _draw(self, logits) -> int:
        torch, s = self.torch, self.s
        # top-k first, then top-p over the survivors only: the same distribution as filtering the
        # whole vocabulary, without sorting all of it for every token.
        if 0 < s.top_k < logits.shape[0]:
            values, ids = torch.topk(logits, s.top_k)
        else:
            values, ids = torch.sort(logits, descending=True)
        probs = torch.softmax(values, dim=0)
        if s.top_p < 1.0:
            # Keep the smallest head whose mass reaches top_p (at least one token).
            keep = (torch.cumsum(probs, dim=0) - probs) < s.top_p
            keep[0] = True
            probs = torch.where(keep, probs, torch.zeros_like(probs))
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return int(ids[choice])
