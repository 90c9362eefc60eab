"""The HTTP surfaces of the streaming-sink interface: chunked text, and OpenAI-shaped server-sent events."""
from __future__ import annotations

import json
import time
import uuid

from aiohttp import web

from engine.api import ReplyStream

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class HttpSink:
    """Sends only what is new since the last write; ``open`` sends the headers, ``close`` ends the body."""

    def __init__(self, request: web.Request, content_type: str):
        self.request = request
        self.response = web.StreamResponse(headers={"Content-Type": content_type, **STREAM_HEADERS})
        self.sent = 0
        self.code: str | None = None        # the engine error code a failure reports, if any

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def _send_new(self, text: str) -> None:
        raise NotImplementedError

    async def update(self, text: str) -> None:
        if len(text) > self.sent:
            await self._send_new(text[self.sent:])
            self.sent = len(text)

    async def finish(self, text: str) -> None:
        await self.update(text)

    async def close(self) -> None:
        await self.response.write_eof()


class ChunkSink(HttpSink):
    """Chunked text, one chunk per new piece."""

    def __init__(self, request: web.Request, content_type: str = "text/plain; charset=utf-8"):
        super().__init__(request, content_type)
        self.response.enable_chunked_encoding()

    async def _send_new(self, text: str) -> None:
        await self.response.write(text.encode("utf-8"))

    async def fail(self, message: str) -> None:
        # Headers are gone already: the error can only follow the text, on a line of its own.
        await self.response.write((("\n" if self.sent else "") + f"[error] {message}").encode("utf-8"))


def finish_reason(reply: ReplyStream) -> str:
    finish = reply.stats.finish
    return "length" if finish is not None and finish.reason == "length" else "stop"


def usage_of(reply: ReplyStream) -> dict:
    finish = reply.stats.finish
    prompt, completion = (finish.prompt_tokens, finish.tokens) if finish else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ChunkEvents(HttpSink):
    """OpenAI's ``chat.completion.chunk`` server-sent events (the /v1 API and the web page both read them)."""

    def __init__(self, request: web.Request, reply: ReplyStream, model: str, include_usage: bool = False):
        super().__init__(request, "text/event-stream; charset=utf-8")
        self.reply, self.model = reply, model
        self.include_usage = include_usage
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.failed = False

    async def _event(self, payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        await self.response.write(f"data: {data}\n\n".encode("utf-8"))

    def _chunk(self, delta: dict, reason: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

    async def open(self) -> None:
        await super().open()
        await self._event(self._chunk({"role": "assistant", "content": ""}))

    async def _send_new(self, text: str) -> None:
        await self._event(self._chunk({"content": text}))

    async def fail(self, message: str) -> None:
        # Headers are gone: the error is an event of its own, which OpenAI's clients raise as APIError.
        self.failed = True
        await self._event({"error": {"message": message, "type": "server_error", "param": None,
                                     "code": self.code}})

    async def close(self) -> None:
        """The final chunk (finish reason), usage if asked, and the [DONE] line."""
        if not self.failed:
            await self._event(self._chunk({}, finish_reason(self.reply)))
            if self.include_usage:
                await self._event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.model, "system_fingerprint": None, "choices": [],
                                   "usage": usage_of(self.reply)})
        await self._event("[DONE]")
        await super().close()
