"""The protocol every model backend implements, and the sampling values a request resolves to."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

Emit = Callable[[str], None]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Finish:
    """How a generation ended."""

    tokens: int = 0
    prompt_tokens: int = 0
    reason: str = "stop"           # stop | length | cancelled
    extra: dict = field(default_factory=dict)


class TextGenerator(Protocol):
    """A loaded model. ``generate`` blocks; the engine runs it in a worker thread.

    ``generate`` calls ``emit`` with each new piece of text and must return
    within one token step once ``cancel`` is set.
    """

    n_ctx: int

    def render(self, messages: list[dict[str, str]]) -> str: ...
    def count_tokens(self, text: str) -> int: ...
    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish: ...
    def info(self) -> dict: ...
    def close(self) -> None: ...
