"""What every HTTP route module is given: the engine, the config and the metrics."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bot.config import AppConfig, Secrets
from bot.http.metrics import Metrics
from engine.engine import Engine

CTX = web.AppKey("ctx", object)


@dataclass
class HttpContext:
    engine: Engine
    config: AppConfig
    secrets: Secrets
    metrics: Metrics


def ctx_of(request: web.Request) -> HttpContext:
    return request.app[CTX]
