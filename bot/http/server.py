"""Assemble the sidecar's aiohttp application and run it on the configured address."""
from __future__ import annotations

import logging

from aiohttp import web

from bot.http import admin, characters, health, legacy, openai_api, web_scenes
from bot.http import web as web_page
from bot.http.auth import make_auth_middleware
from bot.http.context import CTX, HttpContext
from bot.http.errors import error_middleware

log = logging.getLogger(__name__)

# Route modules added by later features register here; each has setup(app) and may name open paths.
ROUTE_MODULES = [health, legacy, admin, characters, openai_api, web_page, web_scenes]


def build_app(ctx: HttpContext) -> web.Application:
    http = ctx.config.http
    open_paths = tuple(p for m in ROUTE_MODULES for p in getattr(m, "OPEN_PATHS", ()))

    @web.middleware
    async def count(request: web.Request, handler):
        response = await handler(request)
        route = request.match_info.route.resource
        ctx.metrics.requests.labels(route.canonical if route else "unmatched", str(response.status)).inc()
        return response

    app = web.Application(
        client_max_size=http.max_body_bytes,
        middlewares=[count, error_middleware, make_auth_middleware(ctx.secrets.api_key, http.allow_ips, open_paths)],
    )
    app[CTX] = ctx
    for module in ROUTE_MODULES:
        module.setup(app)
    return app


class HttpServer:
    def __init__(self, ctx: HttpContext, host: str, port: int):
        self.app = build_app(ctx)
        self.host, self.port = host, port
        # A client that disconnects cancels its handler, which cancels its generation.
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info("HTTP API on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()
