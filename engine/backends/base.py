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
    cached_tokens: int = 0         # prompt tokens whose keys/values came from the prompt cache (not prefilled)
    extra: dict = field(default_factory=dict)


@dataclass
class BatchStats:
    """What a backend is doing right now, for /metrics and /health (all zero for one-at-a-time backends)."""

    running: int = 0               # sequences in the running batch
    kv_used_tokens: int = 0        # key/value cache cells in use (running and cached prefixes)
    kv_capacity_tokens: int = 0    # the KV budget
    cache_hit_tokens: int = 0      # prompt tokens served from the prompt cache since start
    prompt_tokens: int = 0         # prompt tokens seen since start


class TextGenerator(Protocol):
    """A loaded model. ``generate`` blocks; the engine runs it in a worker thread.

    ``generate`` calls ``emit`` with each new piece of text and must return
    within one token step once ``cancel`` is set. Up to ``max_concurrent``
    calls may run at once, each in its own thread: a batching backend joins
    them into one running batch; a backend that decodes one sequence at a
    time says 1.
    """

    n_ctx: int
    max_concurrent: int

    def render(self, messages: list[dict[str, str]]) -> str: ...
    def count_tokens(self, text: str) -> int: ...
    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish: ...
    def info(self) -> dict: ...
    def batch_stats(self) -> BatchStats: ...
    def close(self) -> None: ...
