"""Prometheus metrics: HTTP requests and errors, and the engine's tokens, speed, queue and first-token time."""
from __future__ import annotations

from pathlib import PurePath

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


# What a backend reports that names a place on this machine (or a private service): not for key-less readers.
_PRIVATE_KEYS = ("adapter_path", "base_url", "tokenizer")


def public_model_info(info: dict) -> dict:
    """A backend's report with model names instead of file paths, for /health and /metrics."""
    out = {k: v for k, v in info.items() if k not in _PRIVATE_KEYS}
    for key in ("model", "adapter"):
        if isinstance(out.get(key), str):
            out[key] = PurePath(out[key].replace("\\", "/")).name
    return out


class Metrics:
    """One registry per app (no global state), also the engine's EngineMetrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llmbot_http_requests", "HTTP requests", ["path", "status"], registry=r)
        self.errors = Counter("llmbot_errors", "Replies that ended in an error", ["model", "code"], registry=r)
        self.replies = Counter("llmbot_replies", "Replies started", ["model"], registry=r)
        self.tokens = Counter("llmbot_tokens_generated", "Tokens generated", ["model"], registry=r)
        self.tps = Gauge("llmbot_tokens_per_second", "Tokens/s of the last finished reply", ["model"], registry=r)
        self.depth = Gauge("llmbot_queue_depth", "Requests waiting or generating", ["model"], registry=r)
        self.ttft = Histogram("llmbot_time_to_first_token_seconds", "Time to first token", ["model"], registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.gpu = Gauge("llmbot_gpu_memory_bytes", "GPU memory in use (NVML: every library's allocations)",
                         ["device"], registry=r)
        self.batch = Gauge("llmbot_batch_running", "Sequences in the model's running batch", ["model"], registry=r)
        self.kv_used = Gauge("llmbot_kv_cells_used", "KV cache cells in use (running and cached prefixes)",
                             ["model"], registry=r)
        self.kv_capacity = Gauge("llmbot_kv_cells_capacity", "KV cache budget in cells", ["model"], registry=r)
        self.cache_hits = Gauge("llmbot_prompt_cache_hit_tokens", "Prompt tokens served from the prompt cache since start",
                                ["model"], registry=r)
        self.prompt_tokens = Gauge("llmbot_prompt_tokens", "Prompt tokens seen since start", ["model"], registry=r)
        self.info = Gauge("llmbot_model_info", "Loaded models", ["role", "backend", "model", "adapter"], registry=r)

    # EngineMetrics
    def reply_started(self, model: str) -> None:
        self.replies.labels(model).inc()

    def reply_finished(self, model: str, *, tokens: int, gen_s: float, ttft_s: float | None, error: str | None) -> None:
        self.tokens.labels(model).inc(tokens)
        if tokens and gen_s > 0:
            self.tps.labels(model).set(tokens / gen_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if error:
            self.errors.labels(model, error).inc()

    def queue_depth(self, model: str, depth: int) -> None:
        self.depth.labels(model).set(depth)

    def describe_models(self, infos: dict[str, dict]) -> None:
        for role, info in infos.items():
            info = public_model_info(info)
            self.info.labels(role, info.get("backend", ""), str(info.get("model", "")),
                             str(info.get("adapter") or "")).set(1)

    def render(self, batches: dict | None = None) -> bytes:
        """The Prometheus text; ``batches`` is the engine's ``batch_stats()`` sampled now."""
        for role, b in (batches or {}).items():
            self.batch.labels(role).set(b.running)
            self.kv_used.labels(role).set(b.kv_used_tokens)
            self.kv_capacity.labels(role).set(b.kv_capacity_tokens)
            self.cache_hits.labels(role).set(b.cache_hit_tokens)
            self.prompt_tokens.labels(role).set(b.prompt_tokens)
        self._sample_gpu()
        return generate_latest(self.registry)

    def _sample_gpu(self) -> None:
        # NVML sees the whole device, so llama.cpp's allocations count as well as torch's.
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # noqa: BLE001 - no NVIDIA driver here: nothing to report
            return
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                used = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                self.gpu.labels(f"cuda:{i}").set(used)
        finally:
            pynvml.nvmlShutdown()
