"""The hooks through which the engine reports what it does; a surface may plug in Prometheus."""
from __future__ import annotations

from typing import Protocol


class EngineMetrics(Protocol):
    def reply_started(self, model: str) -> None: ...
    def reply_finished(self, model: str, *, tokens: int, gen_s: float, ttft_s: float | None, error: str | None) -> None: ...
    def queue_depth(self, model: str, depth: int) -> None: ...


class NoMetrics:
    def reply_started(self, model: str) -> None:
        pass

    def reply_finished(self, model: str, *, tokens: int, gen_s: float, ttft_s: float | None, error: str | None) -> None:
        pass

    def queue_depth(self, model: str, depth: int) -> None:
        pass
