"""Build the engine, the HTTP sidecar and the platform adapters from config; run them; stop them cleanly."""
from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Protocol

from bot.api_key import KEY_FILE, curl_example, ensure_api_key
from bot.config import Loaded, load
from bot.http.context import HttpContext
from bot.http.metrics import Metrics
from bot.http.server import HttpServer
from bot.startup import StartupError, check_port_free, missing_cards_directory
from engine.api import EngineAPI
from engine.engine import build_engine

log = logging.getLogger(__name__)

# From SIGTERM, replies in flight get this long to finish (HTTP streams, Discord, Telegram alike); then they
# are cancelled and the bot exits. The engine's own wind-down adds at most a few seconds.
STOP_GRACE_S = 10.0


class Surface(Protocol):
    """A platform adapter: started after the engine, stopped before it."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


# (name, module with make_surface(engine, loaded) -> Surface, the secret that turns it on)
PLATFORMS = [
    ("Discord", "bot.discord.adapter", "discord_token", "DISCORD_TOKEN"),
    ("Telegram", "bot.telegram.adapter", "telegram_token", "TELEGRAM_TOKEN"),
]


async def start_engine(loaded: Loaded, data_dir: Path, *, mongo_uri: str | None, metrics=None) -> EngineAPI:
    """The engine as bot.yaml describes it (the bot and the terminal chat build it alike)."""
    cfg = loaded.config
    return await build_engine(
        models_cfg=cfg.models, mongo_cfg=cfg.mongo, limits=cfg.limits, cards_cfg=cfg.cards,
        character_entries=cfg.characters, mongo_uri=mongo_uri, data_dir=data_dir,
        base_dir=loaded.base_dir, cache_dir=loaded.base_dir / "ai_model", metrics=metrics,
        config_file=loaded.path, env=loaded.secrets.env, memory_cfg=cfg.memory,
        scenes_cfg=cfg.scenes,
    )


class App:
    """The running bot: the engine, its HTTP sidecar and the platform adapters configured on; stopped in reverse."""

    def __init__(self, loaded: Loaded, data_dir: Path, http_host: str | None = None, http_port: int | None = None):
        self.loaded = loaded
        self.data_dir = data_dir
        self.http_host = http_host or loaded.config.http.host
        self.http_port = loaded.config.http.port if http_port is None else http_port
        self.metrics = Metrics()
        self.engine: EngineAPI | None = None
        self.http: HttpServer | None = None
        self.surfaces: list[Surface] = []
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self._new_key = False

    def _reload_characters(self):
        """bot.yaml's characters as they are now on disk; an invalid file raises and the old set stays."""
        return load(self.loaded.path).config.characters

    async def start(self) -> None:
        cfg, secrets = self.loaded.config, self.loaded.secrets
        # Checked before the models load for minutes: a taken port fails now, with one line.
        check_port_free(self.http_host, self.http_port, "HTTP API (http.port / --http-port)")
        missing = missing_cards_directory(self.loaded.base_dir, cfg.cards.directory)
        if missing is not None:
            log.warning("cards.directory %s does not exist: starting with no card files from it", missing)
        if secrets.api_key is None:
            secrets = dataclasses.replace(secrets, api_key=self._generated_api_key())
        self.engine = await start_engine(self.loaded, self.data_dir, mongo_uri=secrets.mongo_uri, metrics=self.metrics)
        if cfg.cards.reload:
            self.tasks.append(asyncio.create_task(self.engine.watch_characters(self._reload_characters)))
        self.metrics.describe_models(self.engine.model_info())
        self.http = HttpServer(HttpContext(self.engine, cfg, secrets, self.metrics), self.http_host, self.http_port,
                               shutdown_timeout_s=STOP_GRACE_S)
        try:
            await self.http.start()
        except OSError as e:
            raise StartupError(f"HTTP API: cannot listen on {self.http_host}:{self.http_port} "
                               f"({e.strerror or e})") from None
        if self._new_key:
            # Printed once, at the start that created the key; later starts reuse it silently.
            print(f"No BOT_API_KEY is set: generated an API key, kept in {self.data_dir / KEY_FILE} (mode 0600).\n"
                  f"Try it: {curl_example(secrets.api_key, self.http_host, self.http.port)}",
                  file=sys.stderr, flush=True)
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

    def _generated_api_key(self) -> str:
        try:
            key, self._new_key = ensure_api_key(self.data_dir)
        except OSError as e:
            raise StartupError(f"cannot keep the generated API key in {self.data_dir / KEY_FILE} "
                               f"({e.strerror or e}); set BOT_API_KEY instead") from None
        if not self._new_key:
            log.info("BOT_API_KEY is not set: using the API key kept in %s", self.data_dir / KEY_FILE)
        return key

    async def _stop_surface(self, s: Surface) -> None:
        try:
            await s.stop()
        except Exception:  # noqa: BLE001 - one adapter's failure must not keep the others running
            log.exception("stopping %s failed", type(s).__name__)

    async def stop(self) -> None:
        """Every front end winds down at once, so the grace runs from the signal, not one after another."""
        deadline = time.monotonic() + STOP_GRACE_S
        for t in self.tasks:
            t.cancel()
        stopping = [self._stop_surface(s) for s in reversed(self.surfaces)]
        if self.http:
            stopping.append(self.http.stop())
        await asyncio.gather(*stopping)
        log.info("front ends stopped after %.1fs", STOP_GRACE_S - (deadline - time.monotonic()))
        if self.engine:
            await self.engine.close(grace_s=max(0.0, deadline - time.monotonic()))
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
