"""Assemble the sidecar's aiohttp application and run it on the configured address."""
from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from bot.http import admin, characters, health, legacy, memory, openai_api, web_scenes
from bot.http import web as web_page
from bot.http.auth import make_auth_middleware
from bot.http.context import CTX, HttpContext
from bot.http.errors import error_middleware, json_error, request_lang, status_text
from bot.http.limits import ClientLimits

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


def _is_json(response: web.StreamResponse) -> bool:
    return response.content_type == "application/json"


class _JsonErrorProtocol(RequestHandler):
    """aiohttp's own answers (a bad request line, headers too long, Expect, errors raised outside the
    middlewares) are text/plain and may echo the request; every one goes out as the JSON error shape."""

    def log_exception(self, msg: str, *args, exc_info=None) -> None:
        # A malformed request is the client's fault: one line, not a traceback per fuzzed request.
        if isinstance(exc_info, HttpProcessingError):
            self.logger.info("bad request from %s: %s", self.peername, " ".join(str(exc_info).split())[:200])
            return
        super().log_exception(msg, *args, exc_info=exc_info)

    async def finish_response(self, request, resp, start_time):
        if isinstance(resp, web.Response) and resp.status >= 400 and not resp.prepared and not _is_json(resp):
            lang = request_lang(request, default="en")
            body = json_error(resp.status, status_text(resp.status, lang))
            if str(request.rel_url.path).startswith(openai_api.PREFIX):
                body = openai_api.openai_error(resp.status, json.loads(body.body)["message"])
            if not resp.keep_alive:
                body.force_close()
            resp = body
        return await super().finish_response(request, resp, start_time)


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server itself; this only changes which protocol class it makes per connection.
        server.__class__ = _JsonErrorServer
        return server


def build_app(ctx: HttpContext) -> web.Application:
    http = ctx.config.http
    open_paths = tuple(p for m in ROUTE_MODULES for p in getattr(m, "OPEN_PATHS", ()))
    if not http.web.require_key:
        open_paths += (web_page.API_PREFIX,)

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
    app[ClientLimits.KEY] = ClientLimits(http)
    for module in ROUTE_MODULES:
        module.setup(app)
    return app


class HttpServer:
    def __init__(self, ctx: HttpContext, host: str, port: int, shutdown_timeout_s: float = 10.0):
        """``shutdown_timeout_s``: how long requests in progress may run on at stop before they are cancelled."""
        self.app = build_app(ctx)
        self.host, self.port = host, port
        self.shutdown_timeout_s = shutdown_timeout_s
        http = ctx.config.http
        # A client that disconnects cancels its handler, which cancels its generation. aiohttp closes a
        # connection that sends no complete request head within keepalive_timeout (slowloris). Its own
        # shutdown wait is only a backstop: it waits once more after cancelling and its cancel does not
        # reach a streaming handler. After an answer to a request whose body never all came (408, 413),
        # aiohttp reads on so the client sees the answer rather than a reset; a client that stops sending
        # is held that long at most, as before its request.
        self.runner = _Runner(self.app, handler_cancellation=True, access_log=None,
                              shutdown_timeout=shutdown_timeout_s + 5, keepalive_timeout=http.header_timeout_s,
                              lingering_time=http.header_timeout_s,
                              max_line_size=http.max_header_bytes, max_field_size=http.max_header_bytes)

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
