"""Shared fixtures: the embedded MongoDB server, a real engine on the shipped SmolLM2 models, the HTTP API."""
from __future__ import annotations

import itertools
import socket
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from bench.chaos.botproc import merge
from bot.config import AppConfig, Secrets
from engine.engine import Engine, build_engine
from engine.store.embedded import EmbeddedMongo
from engine.store.repository import Store

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-api-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(override: dict | None = None) -> AppConfig:
    """bot.yaml with test-friendly overrides (no per-minute or per-client limit, short replies)."""
    base = yaml.safe_load((ROOT / "bot.yaml").read_text(encoding="utf-8"))
    test = {"limits": {"requests_per_minute": 0},
            "http": {"per_client_in_flight": 0, "per_client_per_minute": 0, "max_queue_wait_s": 600,
                     "web": {"per_ip_in_flight": 0, "per_ip_per_minute": 0}},
            "models": {"chat": {"max_new_tokens": {"policy": "fixed", "fixed": 24}, "seed": 7},
                       "roleplay": {"max_new_tokens": {"policy": "fixed", "fixed": 24}, "seed": 7}}}
    return AppConfig.model_validate(merge(merge(base, test), override or {}))


def secrets(**env) -> Secrets:
    env = {"BOT_API_KEY": API_KEY, **env}
    return Secrets(mongo_uri=None, api_key=env.get("BOT_API_KEY"), discord_token=env.get("DISCORD_TOKEN"),
                   telegram_token=env.get("TELEGRAM_TOKEN"), env=env)


_ids = itertools.count(1)


@pytest.fixture
def speaker_id() -> str:
    """A user id no other test uses (per-user limits are engine-wide)."""
    return f"test:{uuid.uuid4().hex[:8]}-{next(_ids)}"


@pytest_asyncio.fixture(scope="session")
async def mongo_uri(tmp_path_factory):
    server = EmbeddedMongo(tmp_path_factory.mktemp("mongo"))
    await server.start()
    yield server.uri
    await server.stop()


@pytest_asyncio.fixture
async def store(mongo_uri):
    s = Store(mongo_uri, f"t_{uuid.uuid4().hex[:10]}")
    await s.start()
    yield s
    await s.close()


async def start_engine(config: AppConfig, mongo_uri: str, db: str, metrics=None, data_dir: Path | None = None) -> Engine:
    mongo = config.mongo.model_copy(update={"database": db})
    return await build_engine(models_cfg=config.models, mongo_cfg=mongo, limits=config.limits, cards_cfg=config.cards,
                              character_entries=config.characters, mongo_uri=mongo_uri, data_dir=data_dir or ROOT,
                              base_dir=ROOT, cache_dir=ROOT / "ai_model", metrics=metrics,
                              memory_cfg=config.memory)


@pytest_asyncio.fixture(scope="session")
async def engine(mongo_uri):
    """One engine with both real models for the whole session (loading takes seconds)."""
    from bot.http.metrics import Metrics

    metrics = Metrics()
    eng = await start_engine(make_config(), mongo_uri, "llmbot_test", metrics)
    eng.test_metrics = metrics
    yield eng
    await eng.close(grace_s=1)


@pytest_asyncio.fixture(scope="session")
async def http_api(engine):
    """The HTTP sidecar on a free 127.0.0.1 port, on the shared engine; yields its base URL."""
    from bot.http.context import HttpContext
    from bot.http.server import HttpServer

    server = HttpServer(HttpContext(engine, make_config(), secrets(), engine.test_metrics), "127.0.0.1", 0)
    await server.start()
    yield f"http://127.0.0.1:{server.port}"
    await server.stop()


def start_up_refusal(tmp_path: Path, yaml_text: str) -> str:
    """Start ``python -m bot`` on this bot.yaml text; it must stop with code 3: its last stderr line."""
    import os
    import subprocess
    import sys

    from bench.chaos.botproc import share_model_copies

    (tmp_path / "bot.yaml").write_text(yaml_text, encoding="utf-8")
    share_model_copies(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "MONGO_URI")}
    run = subprocess.run([sys.executable, "-m", "bot", "--config", str(tmp_path / "bot.yaml"), "--data-dir",
                          str(tmp_path / "data"), "--http-port", str(free_port())],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 3, run.stderr[-2000:]
    return run.stderr.strip().splitlines()[-1]
