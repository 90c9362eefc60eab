"""A session's memory over HTTP: replace the summary, pin and unpin facts, forget everything remembered."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from bot.http.admin import conversation_id_of
from bot.http.context import ctx_of
from bot.http.errors import ApiError, parse_body


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SummaryBody(_Body):
    text: StrictStr = Field(max_length=20_000)


class PinBody(_Body):
    text: StrictStr = Field(min_length=1)


def _by(request: web.Request) -> str:
    return f"http:{request.match_info['session']}"


async def put_summary(request: web.Request) -> web.Response:
    body = await parse_body(request, SummaryBody)
    conv_id = await conversation_id_of(request)
    return web.json_response(await ctx_of(request).engine.edit_summary(conv_id, body.text, _by(request)))


async def add_pin(request: web.Request) -> web.Response:
    body = await parse_body(request, PinBody)
    conv_id = await conversation_id_of(request)
    return web.json_response(await ctx_of(request).engine.pin_fact(conv_id, body.text, _by(request)), status=201)


async def remove_pin(request: web.Request) -> web.Response:
    """``DELETE .../pins/{n}`` or ``DELETE .../pins?n=``: unpin fact number n (as GET numbers them)."""
    raw = request.match_info.get("n") or request.query.get("n", "")
    if not raw.isdigit():
        raise ApiError(422, "n: the number of a pinned fact (1 = oldest)")
    engine = ctx_of(request).engine
    conv_id = await conversation_id_of(request)
    removed = await engine.unpin_fact(conv_id, int(raw))
    return web.json_response({"removed": removed, **await engine.memory_of(conv_id)})


async def forget(request: web.Request) -> web.Response:
    engine = ctx_of(request).engine
    conv_id = await conversation_id_of(request)
    await engine.forget(conv_id, _by(request))
    return web.json_response(await engine.memory_of(conv_id))


def setup(app: web.Application) -> None:
    app.router.add_put("/conversations/{session}/summary", put_summary)
    app.router.add_post("/conversations/{session}/pins", add_pin)
    app.router.add_delete("/conversations/{session}/pins", remove_pin)
    app.router.add_delete("/conversations/{session}/pins/{n}", remove_pin)
    app.router.add_delete("/conversations/{session}/memory", forget)
