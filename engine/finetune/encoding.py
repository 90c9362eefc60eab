"""Render examples with the model's own chat template into token ids, with labels only on the assistant's words."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.finetune.datasets import DatasetReport, Example, Message, RowProblem
from engine.settings import TransformersModel

IGNORE = -100          # the label value torch's cross-entropy skips


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    line: int

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def load_tokenizer(cfg: TransformersModel, base_dir: Path):
    """The chat model's tokenizer alone (dataset checks need no weights)."""
    from transformers import AutoTokenizer

    from engine.backends.hf_loading import readable_source

    return AutoTokenizer.from_pretrained(readable_source(cfg, base_dir, base_dir / "ai_model"))


def with_system(messages: tuple[Message, ...] | list[Message], system_prompt: str) -> list[Message]:
    """The conversation as serving sends it: the configured system prompt first unless the row has its own."""
    messages = list(messages)
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def serving_prompt(tokenizer, system_prompt: str, question: str) -> str:
    """The text the engine feeds the chat model for a one-off question (no history)."""
    return render(tokenizer, with_system([{"role": "user", "content": question}], system_prompt), prompt=True)


def render(tokenizer, messages: list[Message], *, prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def _segments(tokenizer, messages: list[Message]) -> list[tuple[str, bool]]:
    """(text, trained) pieces whose concatenation is the rendered conversation.

    Each assistant turn is the difference between the conversation rendered up
    to it and the same rendered with a generation prompt, so exactly what the
    model must produce after the serving prompt is trained: the reply and its
    end-of-turn token. Templates that rewrite earlier turns (no clean prefix)
    fall back to training only the last reply, ended by the EOS token.
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], prompt=True)
        upto = render(tokenizer, messages[: i + 1], prompt=False)
        if not (before.startswith(done) and upto.startswith(before)):
            last = max(j for j, x in enumerate(messages) if x["role"] == "assistant")
            head = render(tokenizer, messages[:last], prompt=True)
            return [(head, False), (messages[last]["content"] + (tokenizer.eos_token or ""), True)]
        pieces += [(before[len(done):], False), (upto[len(before):], True)]
        done = upto
    return pieces


def encode(tokenizer, example: Example, system_prompt: str) -> Encoded:
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in _segments(tokenizer, with_system(example.messages, system_prompt)):
        # The template already writes its special tokens; serving tokenizes the same way.
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return Encoded(ids, labels, example.line)


def encode_all(tokenizer, examples: list[Example], system_prompt: str, max_length: int,
               report: DatasetReport) -> list[Encoded]:
    """Encoded examples that fit ``max_length``; the rest go into the report with their line."""
    kept: list[Encoded] = []
    for example in examples:
        enc = encode(tokenizer, example, system_prompt)
        if len(enc.input_ids) > max_length:
            report.problems.append(RowProblem(
                example.line, f"too long: {len(enc.input_ids)} tokens > max length {max_length}"))
        elif enc.trained_tokens == 0:
            report.problems.append(RowProblem(example.line, "empty: no assistant tokens to learn"))
        else:
            kept.append(enc)
            report.token_lengths.append(len(enc.input_ids))
    report.problems.sort(key=lambda p: p.line)
    return kept
