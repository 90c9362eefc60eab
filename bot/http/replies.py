"""Running an engine reply for an HTTP request: errors before the first piece become JSON, then chunks."""
from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from bot.http.sink import ChunkSink
from bot.i18n import describe, pick_lang
from bot.streaming import deliver
from engine.engine import Reply


def request_lang(request: web.Request, default: str) -> str:
    return pick_lang(request.headers.get("Accept-Language", "").split(",")[0], default=default)


async def _chain(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    if first:
        yield first
    async for piece in rest:
        yield piece


async def stream_text(request: web.Request, reply: Reply, lang: str,
                      content_type: str = "text/plain; charset=utf-8") -> web.StreamResponse:
    """Chunked text/plain; a refusal that comes before any text (busy, bad character…) is a JSON error."""
    pieces = aiter(reply)
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        first = ""
    sink = ChunkSink(request, content_type)
    await deliver(_chain(first, pieces), sink, interval=0.0, describe_error=lambda e: describe(e, lang))
    await sink.response.write_eof()
    return sink.response


async def collect(reply: Reply) -> str:
    async for _ in reply:
        pass
    return reply.text
