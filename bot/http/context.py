"""What every HTTP route module is given: the engine, the config and the metrics."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bot.config import AppConfig, Secrets
from bot.http.metrics import Metrics
from engine.api import EngineAPI

CTX = web.AppKey("ctx", object)
CHARACTER_PREFIX = "character:"    # a /v1 model id or a web page target naming a registered character


@dataclass
class HttpContext:
    """The engine API (the only part of the engine routes hold), the config, the secrets and the metrics."""

    engine: EngineAPI
    config: AppConfig
    secrets: Secrets
    metrics: Metrics


def ctx_of(request: web.Request) -> HttpContext:
    return request.app[CTX]
