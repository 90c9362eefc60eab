"""Assemble the sidecar's aiohttp application and run it on the configured address."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from bot.http import admin, characters, health, legacy, memory, openai_api, web_scenes
from bot.http import web as web_page
from bot.http.auth import make_auth_middleware
from bot.http.context import CTX, HttpContext
from bot.http.errors import error_middleware, json_error

log = logging.getLogger(__name__)

# Route modules added by later features register here; each has setup(app) and may name open paths.
ROUTE_MODULES = [health, legacy, admin, memory, characters, openai_api, web_page, web_scenes]
# The tasks of requests in progress, so that a stop can cancel them when its grace is over.
IN_FLIGHT = web.AppKey("in_flight", set)


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

    in_flight: set[asyncio.Task] = set()

    @web.middleware
    async def count(request: web.Request, handler):
        task = asyncio.current_task()
        in_flight.add(task)
        try:
            response = await handler(request)
        finally:
            in_flight.discard(task)
        route = request.match_info.route.resource
        ctx.metrics.requests.labels(route.canonical if route else "unmatched", str(response.status)).inc()
        return response

    app = web.Application(
        client_max_size=http.max_body_bytes,
        middlewares=[count, body_deadline(http.body_timeout_s), error_middleware,
                     make_auth_middleware(ctx.secrets.api_key, http.allow_ips, open_paths)],
    )
    app[CTX] = ctx
    app[IN_FLIGHT] = in_flight
    for module in ROUTE_MODULES:
        module.setup(app)
    return app


class HttpServer:
    def __init__(self, ctx: HttpContext, host: str, port: int, shutdown_timeout_s: float = 10.0):
        """``shutdown_timeout_s``: how long requests in progress may run on at stop before they are cancelled."""
        self.app = build_app(ctx)
        self.host, self.port = host, port
        self.shutdown_timeout_s = shutdown_timeout_s
        # A client that disconnects cancels its handler, which cancels its generation.
        # aiohttp closes a connection idle for keepalive_timeout, including one that never completes its
        # request line and headers: that is the header read timeout. Its own shutdown wait is only a
        # backstop: it waits once more after cancelling and its cancel does not reach a streaming handler.
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                    shutdown_timeout=shutdown_timeout_s + 5,
                                    keepalive_timeout=ctx.config.http.header_timeout_s)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info("HTTP API on http://%s:%d", self.host, self.port)

    def _cancel_in_flight(self) -> None:
        tasks = [t for t in self.app[IN_FLIGHT] if not t.done()]
        if tasks:
            log.info("cancelling %d HTTP request(s) still running after %gs", len(tasks), self.shutdown_timeout_s)
        for task in tasks:
            task.cancel()

    async def stop(self) -> None:
        """Stop listening; requests in progress get ``shutdown_timeout_s``, then are cancelled (their replies stop)."""
        timer = asyncio.get_running_loop().call_later(self.shutdown_timeout_s, self._cancel_in_flight)
        try:
            await self.runner.cleanup()
        finally:
            timer.cancel()
