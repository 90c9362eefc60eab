"""The one HTTP streaming path: first piece, then headers, then chunks; and collecting a whole reply."""
from __future__ import annotations

from typing import AsyncIterator

from bot.http.sink import ChunkSink, HttpSink
from bot.i18n import describe
from bot.streaming import deliver
from engine.api import ReplyStream
from engine.errors import EngineError


async def _chain(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    if first:
        yield first
    async for piece in rest:
        yield piece


async def stream_reply(reply: ReplyStream, sink: HttpSink, lang: str):
    """Stream ``reply`` into ``sink``; its response.

    The reply is started before any header is sent, so a refusal that comes
    before the first piece (busy, unknown character, database down) raises
    the EngineError for the route's error handler to answer with a status. Once
    text flows, an error can only follow it in the stream, in the user's language.
    """
    pieces = aiter(reply)
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        first = ""

    def describe_error(e: Exception) -> str | None:
        if isinstance(e, OSError):
            return None                      # the client went away: nothing to tell anyone
        sink.code = e.code if isinstance(e, EngineError) else "internal"
        return describe(e, lang)

    await deliver(_chain(first, pieces), sink, interval=0.0, describe_error=describe_error)
    await sink.close()
    return sink.response


async def stream_text(request, reply: ReplyStream, lang: str, content_type: str = "text/plain; charset=utf-8"):
    """Chunked text/plain (the legacy endpoints)."""
    return await stream_reply(reply, ChunkSink(request, content_type), lang)


async def collect(reply: ReplyStream) -> str:
    async for _ in reply:
        pass
    return reply.text
