"""Ask a model the taught questions as serving does (system prompt, sampling settings) and count taught answers."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.finetune.datasets import Example
from engine.finetune.encoding import serving_prompt
from engine.settings import TransformersModel


@dataclass
class Recall:
    hits: int = 0
    asked: int = 0
    misses: list[tuple[str, str, str]] = field(default_factory=list)    # (question, taught, said)

    def __str__(self) -> str:
        return f"recalled {self.hits}/{self.asked}"


def qa_pairs(examples: list[Example]) -> list[tuple[str, str]]:
    """(question, answer) of the single-turn examples."""
    pairs = []
    for ex in examples:
        turns = [m for m in ex.messages if m["role"] != "system"]
        if len(turns) == 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant":
            pairs.append((turns[0]["content"], turns[1]["content"]))
    return pairs


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?。").lower()


def contains_answer(said: str, taught: str) -> bool:
    return _norm(taught) in _norm(said)


def stop_token_ids(tokenizer, model, cfg: TransformersModel) -> list[int]:
    """EOS plus every configured stop string that is one token (e.g. <|im_end|>, <|eot_id|>)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    for stop in cfg.stop:
        tokens = tokenizer(stop, add_special_tokens=False)["input_ids"]
        if len(tokens) == 1:
            ids.add(tokens[0])
    return sorted(i for i in ids if i is not None)


def answer(model, tokenizer, cfg: TransformersModel, question: str, *, sample: bool = True,
           max_new_tokens: int = 64, system_prompt: str | None = None) -> str:
    """One reply to ``question`` built like the engine's stateless chat prompt, with its sampling settings."""
    import torch

    prompt = serving_prompt(tokenizer, cfg.system_prompt if system_prompt is None else system_prompt, question)
    device = model.get_input_embeddings().weight.device
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    kwargs = dict(do_sample=False)
    if sample and cfg.temperature > 0:
        kwargs = dict(do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            repetition_penalty=cfg.repetition_penalty, eos_token_id=stop_token_ids(tokenizer, model, cfg),
            pad_token_id=tokenizer.pad_token_id, **kwargs,
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def recall(model, tokenizer, cfg: TransformersModel, pairs: list[tuple[str, str]], *, sample: bool = True,
           seed: int = 0, system_prompt: str | None = None, max_new_tokens: int = 64) -> Recall:
    """Ask each question once; a hit is a reply that contains the expected text (a taught reply stops at EOS)."""
    import torch

    torch.manual_seed(seed)
    result = Recall()
    for question, taught in pairs:
        said = answer(model, tokenizer, cfg, question, sample=sample, system_prompt=system_prompt,
                      max_new_tokens=max_new_tokens)
        result.asked += 1
        if contains_answer(said, taught):
            result.hits += 1
        else:
            result.misses.append((question, taught, said))
    return result
