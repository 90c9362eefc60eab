"""Assemble the sidecar's aiohttp application and run it on the configured address."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from bot.http import admin, characters, health, legacy, openai_api
from bot.http import web as web_page
from bot.http.auth import make_auth_middleware
from bot.http.context import CTX, HttpContext
from bot.http.errors import error_middleware, json_error

log = logging.getLogger(__name__)

# Route modules added by later features register here; each has setup(app) and may name open paths.
ROUTE_MODULES = [health, legacy, admin, characters, openai_api, web_page]
# A connection must finish its request headers within this (aiohttp closes a connection idle this long,
# also one that never completes its first request line and headers) ...
HEADER_TIMEOUT_S = 15.0
# ... and its body within this, however slowly it trickles in.
BODY_TIMEOUT_S = 30.0


def body_deadline(timeout_s: float):
    """Answer 408 to a request whose body has not fully arrived ``timeout_s`` after its headers."""

    @web.middleware
    async def deadline(request: web.Request, handler):
        if not request.body_exists or request.content.is_eof():
            return await handler(request)
        task = asyncio.current_task()
        expired = False

        def check() -> None:
            nonlocal expired
            if not request.content.is_eof():
                expired = True
                task.cancel()

        timer = asyncio.get_running_loop().call_later(timeout_s, check)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            return json_error(408, f"the request body did not arrive within {timeout_s:g}s")
        finally:
            timer.cancel()

    return deadline


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
        middlewares=[count, body_deadline(BODY_TIMEOUT_S), error_middleware,
                     make_auth_middleware(ctx.secrets.api_key, http.allow_ips, open_paths)],
    )
    app[CTX] = ctx
    for module in ROUTE_MODULES:
        module.setup(app)
    return app


class HttpServer:
    def __init__(self, ctx: HttpContext, host: str, port: int, shutdown_timeout_s: float = 10.0):
        """``shutdown_timeout_s``: how long requests in progress may run on at stop before they are cancelled."""
        self.app = build_app(ctx)
        self.host, self.port = host, port
        # A client that disconnects cancels its handler, which cancels its generation.
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                    shutdown_timeout=shutdown_timeout_s, keepalive_timeout=HEADER_TIMEOUT_S)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info("HTTP API on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()
