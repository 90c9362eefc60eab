"""The web page's scenes: pick several characters, talk to all of them; each reply carries its speaker."""
from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field, StrictStr

from bot.http.context import ctx_of
from bot.http.errors import ApiError, json_error, parse_body, request_lang, status_of
from bot.http.openai_scenes import SceneCompletion
from bot.http.web import USER_NAME, SessionBody, SessionId
from bot.i18n import describe
from engine.errors import EngineError
from engine.types import Speaker, Turn

HISTORY_LIMIT = 200
Name = Annotated[StrictStr, Field(min_length=1, max_length=200)]


class StartBody(SessionBody):
    characters: list[Name] = Field(min_length=1, max_length=20)


class SceneChatBody(SessionBody):
    text: StrictStr = Field(min_length=1)


def _scope(session: SessionId) -> str:
    return f"web:{session}:scene"


def _speaker(request: web.Request, session: str) -> Speaker:
    return Speaker(id=f"web:{session}", name=USER_NAME, lang=_lang(request))


def _lang(request: web.Request) -> str:
    return request_lang(request)


def _cast(engine, names: list[str]) -> list[dict]:
    out = []
    for name in names:
        card = engine.characters().get(name)
        out.append({"name": name, "image": f"/web/api/characters/{name}/image" if card and card.image else None})
    return out


def _refused(request: web.Request, e: EngineError) -> web.Response:
    return json_error(status_of(e), describe(e, _lang(request)))


async def start(request: web.Request) -> web.Response:
    engine = ctx_of(request).engine
    body = await parse_body(request, StartBody)
    try:
        scene, greetings = await engine.start_scene(_scope(body.session), body.characters,
                                                     _speaker(request, body.session), "web")
    except EngineError as e:
        return _refused(request, e)
    return web.json_response({"characters": _cast(engine, scene.characters), "messages": [
        {"role": g.role, "speaker": g.speaker, "content": g.content} for g in greetings]})


async def show(request: web.Request) -> web.Response:
    engine = ctx_of(request).engine
    try:
        body = SessionBody(session=request.query.get("session", ""))
    except ValueError:
        raise ApiError(422, "session: 8-64 letters, digits, - or _") from None
    scene = await engine.scene(_scope(body.session))
    if scene is None:
        return web.json_response({"characters": [], "messages": []})
    messages = await engine.history(scene.conversation_id, limit=HISTORY_LIMIT)
    return web.json_response({"characters": _cast(engine, scene.characters), "messages": [
        {"role": m["role"], "speaker": m.get("speaker") or "", "content": m["content"], "status": m.get("status")}
        for m in messages if m["role"] in ("user", "assistant")]})


async def chat(request: web.Request) -> web.StreamResponse:
    engine = ctx_of(request).engine
    body = await parse_body(request, SceneChatBody)
    turn = Turn(speaker=_speaker(request, body.session), scope=_scope(body.session), text=body.text)
    chain = engine.scene_turn(turn)
    try:
        return await SceneCompletion(request, chain, "scene", _lang(request)).streamed()
    except EngineError as e:          # refused before the stream opened (no scene, too long)
        return _refused(request, e)


async def end(request: web.Request) -> web.Response:
    body = await parse_body(request, SessionBody)
    return web.json_response({"ended": await ctx_of(request).engine.end_scene(_scope(body.session))})


def setup(app: web.Application) -> None:
    app.router.add_get("/web/api/scene", show)
    app.router.add_post("/web/api/scene", start)
    app.router.add_post("/web/api/scene/chat", chat)
    app.router.add_post("/web/api/scene/end", end)
