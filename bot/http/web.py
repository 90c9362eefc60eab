"""The web chat page at / and its key-less session API under /web/ (characters, history, chat, stop, reset,
memory)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from bot.http.context import ctx_of
from bot.http.errors import ApiError, json_error, parse_body
from bot.http.openai_api import CHARACTER_PREFIX, ChunkEvents, stream_events
from bot.http.replies import request_lang
from bot.i18n import describe
from engine.engine import Engine
from engine.errors import EngineError
from engine.types import Speaker, Turn

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
# The page must work without the API key, so it and its own API are open; they reach only the
# caller's own browser session (an unguessable id kept in the browser's localStorage).
OPEN_PATHS = ("/", "/web/", "/favicon.ico")
USER_NAME = "User"
HISTORY_LIMIT = 200

SessionId = Annotated[StrictStr, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Target = Annotated[StrictStr, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionBody(_Body):
    session: SessionId


class TargetBody(SessionBody):
    target: Target = "chat"


class ChatBody(TargetBody):
    text: StrictStr = Field(min_length=1)


class PinBody(TargetBody):
    text: StrictStr = Field(min_length=1)


class UnpinBody(TargetBody):
    n: int = Field(ge=1)


def _character(engine: Engine, target: str):
    """The registered character a target names, or None for plain chat; unknown names are a 404."""
    if target == "chat":
        return None
    name = target[len(CHARACTER_PREFIX):] if target.startswith(CHARACTER_PREFIX) else None
    found = engine.characters.character(name) if (name and engine.characters) else None
    if found is None or not engine.characters.allowed(found.name, "web"):
        raise ApiError(404, f"target: no character {name or target!r}; use chat or character:<name>")
    return found


def _turn(request: web.Request, body: TargetBody, text: str = "") -> Turn:
    engine = ctx_of(request).engine
    found = _character(engine, body.target)
    lang = request_lang(request, ctx_of(request).config.language.default)
    target = "chat" if found is None else CHARACTER_PREFIX + found.name
    return Turn(speaker=Speaker(id=f"web:{body.session}", name=USER_NAME, lang=lang),
                scope=f"web:{body.session}:{target}", text=text, mode="chat" if found is None else "roleplay",
                character=found.name if found else None, remember=True)


def _query_body(request: web.Request) -> TargetBody:
    try:
        return TargetBody(session=request.query.get("session", ""), target=request.query.get("target", "chat"))
    except ValueError:
        raise ApiError(422, "session: 8-64 letters, digits, - or _; target: chat or character:<name>") from None


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)      # browsers ask for it; the page has none


async def characters(request: web.Request) -> web.Response:
    engine = ctx_of(request).engine
    found = [c for c in (engine.characters.entries() if engine.characters else [])
             if engine.characters.allowed(c.name, "web")]
    return web.json_response({"characters": [{
        "name": c.name,
        "target": CHARACTER_PREFIX + c.name,
        # The greeting a new conversation opens with (the engine stores the one it actually uses).
        "greeting": engine.characters.greeting(c.name, USER_NAME, random.Random(0)),
        "image": f"/web/api/characters/{c.name}/image" if c.card.image else None,
    } for c in found]})


async def character_image(request: web.Request) -> web.Response:
    found = _character(ctx_of(request).engine, CHARACTER_PREFIX + request.match_info["name"])
    if not found.card.image:
        raise ApiError(404, f"{found.name} has no image")
    return web.Response(body=found.card.image, content_type="image/png",
                        headers={"Cache-Control": "public, max-age=300"})


async def history(request: web.Request) -> web.Response:
    engine = ctx_of(request).engine
    turn = _turn(request, _query_body(request))
    conv = await engine.conversation_for(turn)
    messages = await engine.history(conv, limit=HISTORY_LIMIT)
    return web.json_response({"conversation_id": conv, "messages": [
        {"role": m["role"], "content": m["content"], "status": (m.get("meta") or {}).get("status")}
        for m in messages if m["role"] in ("user", "assistant")]})


async def chat(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    body = await parse_body(request, ChatBody)
    turn = _turn(request, body, body.text)
    lang = turn.speaker.lang or ctx.config.language.default
    sink = ChunkEvents(request, ctx.engine.reply(turn), body.target)
    try:
        return await stream_events(sink, lang)
    except EngineError as e:          # refused before any text: a plain error, in the user's language
        return json_error(e.http_status if 400 <= e.http_status < 600 else 500, describe(e, lang))


async def stop(request: web.Request) -> web.Response:
    body = await parse_body(request, SessionBody)
    return web.json_response({"stopped": await ctx_of(request).engine.stop(f"web:{body.session}")})


async def reset(request: web.Request) -> web.Response:
    body = await parse_body(request, TargetBody)
    turn = _turn(request, body)
    await ctx_of(request).engine.reset(turn.speaker.id, turn.scope)
    return web.json_response({"reset": True})


async def _memory_answer(request: web.Request, body: TargetBody, act) -> web.Response:
    """Run ``act(engine, conversation id, turn)`` on the session's conversation; its memory afterwards.

    A refusal (no room for a pin, an unknown number) is a plain error in the browser's language.
    """
    engine = ctx_of(request).engine
    turn = _turn(request, body)
    conv = await engine.conversation_for(turn)
    try:
        await act(engine, conv, turn)
    except EngineError as e:
        return json_error(e.http_status if 400 <= e.http_status < 600 else 500, describe(e, turn.speaker.lang))
    return web.json_response(await engine.memory_of(conv))


async def memory(request: web.Request) -> web.Response:
    async def nothing(engine, conv, turn) -> None:
        return None
    return await _memory_answer(request, _query_body(request), nothing)


async def memory_pin(request: web.Request) -> web.Response:
    body = await parse_body(request, PinBody)

    async def pin(engine, conv, turn) -> None:
        await engine.pin_fact(conv, body.text, by=turn.speaker.id)
    return await _memory_answer(request, body, pin)


async def memory_unpin(request: web.Request) -> web.Response:
    body = await parse_body(request, UnpinBody)

    async def unpin(engine, conv, turn) -> None:
        await engine.unpin_fact(conv, body.n)
    return await _memory_answer(request, body, unpin)


async def memory_forget(request: web.Request) -> web.Response:
    async def forget(engine, conv, turn) -> None:
        await engine.forget(conv, by=turn.speaker.id)
    return await _memory_answer(request, await parse_body(request, TargetBody), forget)


def setup(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/web/static/", WEB_DIR, append_version=False)
    app.router.add_get("/web/api/characters", characters)
    app.router.add_get("/web/api/characters/{name}/image", character_image)
    app.router.add_get("/web/api/history", history)
    app.router.add_post("/web/api/chat", chat)
    app.router.add_post("/web/api/stop", stop)
    app.router.add_post("/web/api/reset", reset)
    app.router.add_get("/web/api/memory", memory)
    app.router.add_post("/web/api/memory/pin", memory_pin)
    app.router.add_post("/web/api/memory/unpin", memory_unpin)
    app.router.add_post("/web/api/memory/forget", memory_forget)
