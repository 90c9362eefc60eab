"""/health (models loaded, store reachable) and /metrics (Prometheus text)."""
from __future__ import annotations

from aiohttp import web

from bot.http.context import ctx_of
from bot.http.metrics import public_model_info


async def health(request: web.Request) -> web.Response:
    report = await ctx_of(request).engine.health()
    report["models"] = {role: public_model_info(info) for role, info in report["models"].items()}
    ok = report["store"]["ok"]
    report["status"] = "ok" if ok else "degraded"
    return web.json_response(report, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    m = ctx.metrics
    return web.Response(body=m.render(ctx.engine.batch_stats()), headers={"Content-Type": m.content_type})


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
