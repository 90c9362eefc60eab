"""The OpenAI API's ``scene:Wren,Mina`` models: several characters answer, each message named by its speaker."""
from __future__ import annotations

import json
import time
import uuid

from aiohttp import web

from bot.i18n import describe
from engine.api import EngineAPI
from engine.errors import EngineError
from engine.scenes import SceneTurn, parse_names
from engine.scenes.prompt import Line
from engine.types import GenParams, Speaker, Turn

SCENE_PREFIX = "scene:"
USER_NAME = "User"


def scene_characters(engine: EngineAPI, model: str) -> list[str] | None:
    """The characters a ``scene:`` model names, or None when it names none or one that does not exist."""
    names, unknown = parse_names(model[len(SCENE_PREFIX):], engine.characters().names())
    return names if names and not unknown else None


def scene_turn(engine: EngineAPI, characters: list[str], messages: list[tuple[str, str, str | None]],
               speaker_id: str, lang: str, max_new: int | None, temperature: float | None,
               top_p: float | None) -> SceneTurn:
    """The chain answering the last of ``messages`` ((role, text, name) each; the last is the user's).

    A user message's ``name`` is the person, an assistant message's the
    character who said it; the client keeps the scene, nothing is stored.
    """
    lines = [Line(role, name or (USER_NAME if role == "user" else characters[0]), text)
             for role, text, name in messages[:-1] if role in ("user", "assistant") and text.strip()]
    _, text, name = messages[-1]
    turn = Turn(speaker=Speaker(speaker_id, name or USER_NAME, lang), scope="openai", text=text, mode="roleplay",
                remember=False, params=GenParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p))
    return engine.kept_scene_turn(turn, characters, lines)


class SceneCompletion:
    """One ``chat.completion`` (or its chunks) with a choice per speaking character, ``name`` its speaker."""

    def __init__(self, request: web.Request, chain: SceneTurn, model: str, lang: str):
        self.request, self.chain, self.model, self.lang = request, chain, model, lang
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    async def whole(self) -> web.Response:
        choices = []
        try:
            async for speech in self.chain:
                async for _ in speech:
                    pass
                choices.append({"index": len(choices), "logprobs": None, "finish_reason": "stop", "message": {
                    "role": "assistant", "name": speech.character, "content": speech.text, "refusal": None}})
        except EngineError:
            if not choices:
                raise                       # nothing said yet: a plain error with its status
        return web.json_response({**self._head("chat.completion"), "choices": choices})

    async def streamed(self) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def event(payload: dict | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            await response.write(f"data: {data}\n\n".encode("utf-8"))

        def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
            return {**self._head("chat.completion.chunk"),
                    "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        speeches = aiter(self.chain)
        speech = await anext(speeches, None)      # a refusal before the first speech stays a plain HTTP error
        await response.prepare(self.request)
        index = 0
        try:
            while speech is not None:
                await event(chunk(index, {"role": "assistant", "name": speech.character, "content": ""}))
                async for piece in speech:
                    await event(chunk(index, {"content": piece}))
                await event(chunk(index, {}, "stop"))
                index += 1
                speech = await anext(speeches, None)
        except EngineError as e:
            await event({"error": {"message": describe(e, self.lang), "type": "server_error", "param": None,
                                   "code": e.code}})
        await event("[DONE]")
        await response.write_eof()
        return response
