"""The HTTP surface of the streaming-sink interface: chunked text, one chunk per new piece."""
from __future__ import annotations

from aiohttp import web


class ChunkSink:
    """Writes only what is new since the last write; the first write sends the headers."""

    def __init__(self, request: web.Request, content_type: str = "text/plain; charset=utf-8"):
        self.request = request
        self.response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache",
                                                    "X-Accel-Buffering": "no"})
        self.response.enable_chunked_encoding()
        self.sent = 0

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def update(self, text: str) -> None:
        if len(text) > self.sent:
            await self.response.write(text[self.sent:].encode("utf-8"))
            self.sent = len(text)

    async def finish(self, text: str) -> None:
        await self.update(text)

    async def fail(self, message: str) -> None:
        # Headers are gone already: the error can only follow the text, on a line of its own.
        await self.response.write((("\n" if self.sent else "") + f"[error] {message}").encode("utf-8"))
