"""Admin endpoints: the older server's /mongo listing, and a user's stored conversation."""
from __future__ import annotations

from aiohttp import web

from bot.http.context import ctx_of
from bot.http.errors import ApiError
from bot.http.legacy import SESSION_SCOPES, session_speaker

MAX_MESSAGES = 1000        # most messages one /conversations answer lists


def _all_databases(request: web.Request) -> bool:
    return ctx_of(request).config.http.admin.all_databases


async def mongo_databases(request: web.Request) -> web.Response:
    names = await ctx_of(request).engine.database_names(_all_databases(request))
    return web.json_response({"Database": names})


async def mongo_collections(request: web.Request) -> web.Response:
    db_name = request.query.get("db_name", "")
    if not db_name:
        raise ApiError(422, "db_name: query parameter required")
    names = await ctx_of(request).engine.collection_names(db_name, _all_databases(request))
    if names is None:
        raise ApiError(404, f"no database named {db_name!r}")
    return web.json_response({"Collections": names})


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and 1 <= len(raw) <= 4 and 1 <= int(raw) <= MAX_MESSAGES):
        raise ApiError(422, f"limit: a whole number from 1 to {MAX_MESSAGES}")
    return int(raw)


async def conversation_id_of(request: web.Request) -> str:
    """The conversation of an HTTP session (the ``session`` of /Llama_stream and /Lumimaid_stream; ?kind=)."""
    engine = ctx_of(request).engine
    session, kind = request.match_info["session"], request.query.get("kind", "llama")
    if kind not in SESSION_SCOPES:
        raise ApiError(422, "kind: must be llama or lumimaid")
    owner = session_speaker(session, lang="").id
    convs = [c for c in await engine.conversations_of(owner) if c["scope"] == SESSION_SCOPES[kind]]
    if not convs:
        raise ApiError(404, f"no conversation for session {session[:100]!r}")
    return convs[0]["_id"]


async def conversation(request: web.Request) -> web.Response:
    """The remembered messages of an HTTP session, with its summary and pinned facts."""
    engine = ctx_of(request).engine
    conv_id = await conversation_id_of(request)
    messages = await engine.history(conv_id, limit=_limit(request.query.get("limit", "100")))
    return web.json_response({"conversation_id": conv_id, "messages": [
        {"id": m["_id"], "role": m["role"], "content": m["content"], "ts": m["ts"]} for m in messages],
        **await engine.memory_of(conv_id)})


def setup(app: web.Application) -> None:
    app.router.add_get("/mongo/db", mongo_databases)
    app.router.add_get("/mongo/collections", mongo_collections)
    app.router.add_get("/conversations/{session}", conversation)
