"""Build the engine, the HTTP sidecar and the platform adapters from config; run them; stop them cleanly."""
from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from pathlib import Path
from typing import Protocol

from bot.config import Loaded, load
from bot.http.context import HttpContext
from bot.http.metrics import Metrics
from bot.http.server import HttpServer
from engine.engine import Engine, build_engine

log = logging.getLogger(__name__)


class Surface(Protocol):
    """A platform adapter: started after the engine, stopped before it."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


# (name, module with make_surface(engine, loaded) -> Surface, the secret that turns it on)
PLATFORMS = [
    ("Discord", "bot.discord.adapter", "discord_token", "DISCORD_TOKEN"),
    ("Telegram", "bot.telegram.adapter", "telegram_token", "TELEGRAM_TOKEN"),
]


class App:
    def __init__(self, loaded: Loaded, data_dir: Path, http_host: str | None = None, http_port: int | None = None):
        self.loaded = loaded
        self.data_dir = data_dir
        self.http_host = http_host or loaded.config.http.host
        self.http_port = loaded.config.http.port if http_port is None else http_port
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.http: HttpServer | None = None
        self.surfaces: list[Surface] = []
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def _reload_characters(self):
        """bot.yaml's characters as they are now on disk; an invalid file raises and the old set stays."""
        return load(self.loaded.path).config.characters

    async def start(self) -> None:
        cfg, secrets = self.loaded.config, self.loaded.secrets
        self.engine = await build_engine(
            models_cfg=cfg.models, mongo_cfg=cfg.mongo, limits=cfg.limits, cards_cfg=cfg.cards,
            character_entries=cfg.characters, mongo_uri=secrets.mongo_uri, data_dir=self.data_dir,
            base_dir=self.loaded.base_dir, cache_dir=self.loaded.base_dir / "ai_model", metrics=self.metrics,
            config_file=self.loaded.path, env=secrets.env, scenes_cfg=cfg.scenes,
        )
        if cfg.cards.reload:
            self.tasks.append(asyncio.create_task(self.engine.characters.watch(self._reload_characters)))
        self.metrics.describe_models({role: m.backend.info() for role, m in self.engine.models.items()})
        if secrets.api_key is None:
            log.warning("BOT_API_KEY is not set: the HTTP API answers 401 except /health and /metrics")
        self.http = HttpServer(HttpContext(self.engine, cfg, secrets, self.metrics), self.http_host, self.http_port)
        await self.http.start()
        for name, module, secret, env in PLATFORMS:
            if getattr(secrets, secret) is None:
                log.info("%s adapter off: %s is not set", name, env)
                continue
            try:
                make = importlib.import_module(module).make_surface
            except (ImportError, AttributeError) as e:
                log.error("%s adapter unavailable: %s", name, e)
                continue
            surface = make(self.engine, self.loaded)
            await surface.start()
            self.surfaces.append(surface)
            log.info("%s adapter on", name)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for s in reversed(self.surfaces):
            try:
                await s.stop()
            except Exception:  # noqa: BLE001 - one adapter's failure must not keep the others running
                log.exception("stopping %s failed", type(s).__name__)
        if self.http:
            await self.http.stop()
        if self.engine:
            await self.engine.close()
        log.info("stopped")

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self.start()
            log.info("ready")
            await self.stopping.wait()
            log.info("stopping: finishing replies in flight")
        finally:
            await self.stop()
