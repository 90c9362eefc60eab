"""The web chat page at / and its key-less session API under /web/ (characters, history, chat, stop, reset,
memory)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from bot.http.context import CHARACTER_PREFIX, CTX, ctx_of
from bot.http.errors import ApiError, parse_body, request_lang, status_text
from bot.http.limits import limits_of
from bot.http.replies import stream_reply
from bot.http.sink import ChunkEvents
from engine.api import EngineAPI
from engine.types import Speaker, Turn

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
# The page must work without the API key, so it is open, and so is its own API unless http.web.require_key;
# the API reaches only the caller's own browser session (an unguessable id kept in the browser's
# localStorage), and its chats are limited per address (bot/http/limits.py), whatever the session.
OPEN_PATHS = ("/", "/web/static/", "/favicon.ico")
API_PREFIX = "/web/api/"
STATIC_PREFIX = "/web/static/"
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


def _character(engine: EngineAPI, target: str):
    """The registered character a target names, or None for plain chat; unknown names are a 404."""
    if target == "chat":
        return None
    name = target[len(CHARACTER_PREFIX):] if target.startswith(CHARACTER_PREFIX) else None
    chars = engine.characters()
    found = chars.character(name) if name else None
    if found is None or not chars.allowed(found.name, "web"):
        raise ApiError(404, f"target: no character {name or target!r}; use chat or character:<name>")
    return found


def _turn(request: web.Request, body: TargetBody, text: str = "") -> Turn:
    engine = ctx_of(request).engine
    found = _character(engine, body.target)
    lang = request_lang(request)
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


async def static(request: web.Request) -> web.FileResponse:
    """A file of the page's folder; anything else (a missing file, a way out of the folder) is a JSON 404."""
    name = request.match_info["name"]
    path = (WEB_DIR / name).resolve() if name and len(name) <= 200 and "\x00" not in name else None
    if path is None or not path.is_relative_to(WEB_DIR) or not path.is_file():
        raise ApiError(404, status_text(404, request_lang(request)))
    return web.FileResponse(path)


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)      # browsers ask for it; the page has none


async def characters(request: web.Request) -> web.Response:
    chars = ctx_of(request).engine.characters()
    found = [c for c in chars.entries() if chars.allowed(c.name, "web")]
    return web.json_response({"characters": [{
        "name": c.name,
        "target": CHARACTER_PREFIX + c.name,
        # The greeting a new conversation opens with (the engine stores the one it actually uses).
        "greeting": chars.greeting(c.name, USER_NAME, random.Random(0)),
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
    async with limits_of(request).hold(request, turn, web_page=True):
        reply = ctx.engine.reply(turn)
        # A refusal before any text is the error middleware's: a plain JSON error in the user's language.
        return await stream_reply(reply, ChunkEvents(request, reply, body.target), turn.speaker.lang)


async def stop(request: web.Request) -> web.Response:
    body = await parse_body(request, SessionBody)
    return web.json_response({"stopped": await ctx_of(request).engine.stop_replies_of(f"web:{body.session}")})


async def reset(request: web.Request) -> web.Response:
    body = await parse_body(request, TargetBody)
    turn = _turn(request, body)
    await ctx_of(request).engine.reset(turn.speaker.id, turn.scope)
    return web.json_response({"reset": True})


async def _conversation(request: web.Request, body: TargetBody) -> tuple[EngineAPI, str, str]:
    """(engine, the conversation the page shows for this session and target, the speaker id)."""
    engine = ctx_of(request).engine
    turn = _turn(request, body)
    return engine, await engine.conversation_for(turn), turn.speaker.id


async def memory(request: web.Request) -> web.Response:
    engine, conv, _ = await _conversation(request, _query_body(request))
    return web.json_response(await engine.memory_of(conv))


async def memory_pin(request: web.Request) -> web.Response:
    body = await parse_body(request, PinBody)
    engine, conv, by = await _conversation(request, body)
    return web.json_response(await engine.pin_fact(conv, body.text, by=by))


async def memory_unpin(request: web.Request) -> web.Response:
    body = await parse_body(request, UnpinBody)
    engine, conv, _ = await _conversation(request, body)
    await engine.unpin_fact(conv, body.n)
    return web.json_response(await engine.memory_of(conv))


async def memory_forget(request: web.Request) -> web.Response:
    engine, conv, by = await _conversation(request, await parse_body(request, TargetBody))
    await engine.forget(conv, by=by)
    return web.json_response(await engine.memory_of(conv))


def setup(app: web.Application) -> None:
    if not app[CTX].config.http.web.enabled:
        return                      # every path of the page is then an unknown route: a JSON 404
    app.router.add_get("/", page)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get(STATIC_PREFIX + "{name:.*}", static)
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
