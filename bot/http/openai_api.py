"""OpenAI-compatible API on the sidecar: GET /v1/models and POST /v1/chat/completions (streamed or not)."""
from __future__ import annotations

import functools
import json
import time
import uuid
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from bot.http.context import CHARACTER_PREFIX, ctx_of
from bot.http.errors import ApiError, check_length, parse_body, request_lang, status_of
from bot.http.limits import limits_of
from bot.http.replies import collect, stream_reply
from bot.http.openai_scenes import SCENE_PREFIX, SceneCompletion, scene_characters, scene_turn
from bot.http.sink import ChunkEvents, finish_reason, usage_of
from bot.i18n import describe
from engine.api import EngineAPI
from engine.cards import Card
from engine.errors import EngineError
from engine.types import GenParams, Speaker, Turn

BASE_MODELS = ("chat", "roleplay")
MAX_STOP = 16
PREFIX = "/v1/"


# errors in OpenAI's shape -------------------------------------------------------------------------

class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _error_type(status), "param": param, "code": code}}


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, param, code), status=status)


def _api_lang(request: web.Request) -> str:
    # API clients rarely send Accept-Language; English is the lingua franca of API errors.
    return request_lang(request, default="en")


def openai_errors(handler):
    """Turn this module's and the engine's errors into OpenAI's error shape, with the right status."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OpenAIError as e:
            return openai_error(e.status, e.message, e.param, e.code)
        except EngineError as e:
            return openai_error(status_of(e), describe(e, _api_lang(request)), code=e.code)

    return wrapped


@web.middleware
async def reshape_errors(request: web.Request, handler):
    """Errors made outside these handlers (401, 404, 405, 413) in OpenAI's shape too, on /v1/ paths only."""
    response = await handler(request)
    if (request.path.startswith(PREFIX) and isinstance(response, web.Response) and response.status >= 400
            and response.content_type == "application/json" and response.body):
        try:
            body = json.loads(response.body)
        except (TypeError, ValueError):
            return response
        if isinstance(body, dict) and "error" not in body and "message" in body:
            code = "invalid_api_key" if response.status == 401 else None
            return openai_error(response.status, str(body["message"]), code=code)
    return response


# request body ---------------------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")      # clients send many fields this server does not use


class ContentPart(_Body):
    type: StrictStr
    text: StrictStr | None = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise OpenAIError(400, f"messages[{index}].content: only text parts are supported, "
                                       f"not {part.type!r}", param=f"messages[{index}].content")
        return "".join(p.text or "" for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class ChatRequest(_Body):
    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: StrictStr | list[StrictStr] | None = None
    n: int = 1
    num_beams: int | None = Field(None, ge=1, le=16)   # an extension: beam search, non-streamed only
    seed: int | None = None
    user: StrictStr | None = Field(None, max_length=200)


async def _parse(request: web.Request) -> ChatRequest:
    try:
        body = await parse_body(request, ChatRequest)
    except ApiError as e:
        # OpenAI calls a field error 400 and names the field in ``param``.
        param = e.message.split(":")[0].split(".")[0] if e.status == 422 else None
        raise OpenAIError(400 if e.status == 422 else e.status, e.message, param=param) from None
    if body.n != 1:
        raise OpenAIError(400, "n: only n=1 is supported", param="n")
    if body.stream and (body.num_beams or 1) > 1:
        raise OpenAIError(400, "num_beams: beam search returns the whole reply at once and cannot stream; "
                               "send stream: false", param="num_beams")
    return body


# models ---------------------------------------------------------------------------------------------

def model_ids(engine: EngineAPI) -> list[str]:
    names = engine.characters().names()
    return [*BASE_MODELS, *(CHARACTER_PREFIX + n for n in names)]


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "llmbot"}


@openai_errors
async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(m) for m in model_ids(ctx_of(request).engine)]})


@openai_errors
async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    if model_id not in model_ids(ctx_of(request).engine):
        raise OpenAIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")
    return web.json_response(_model_card(model_id))


# chat completions -----------------------------------------------------------------------------------

def _check_sizes(http, system: str, history: list[dict], lang: str) -> None:
    try:
        check_length(system, http.max_system_chars, "messages (system)", lang)
        check_length("".join(m["content"] for m in history), http.max_history_chars, "messages (earlier)", lang)
    except ApiError as e:
        raise OpenAIError(400, e.message, param="messages") from None


def _turn(engine: EngineAPI, http, body: ChatRequest, lang: str) -> Turn:
    texts = [m.text(i) for i, m in enumerate(body.messages)]
    if body.messages[-1].role != "user":
        raise OpenAIError(400, "messages: the last message must be the user's", param="messages")
    system = "\n\n".join(t for m, t in zip(body.messages, texts) if m.role in ("system", "developer") and t.strip())
    history = [{"role": m.role, "content": t} for m, t in zip(body.messages[:-1], texts[:-1])
               if m.role in ("user", "assistant")]
    _check_sizes(http, system, history, lang)
    if body.model == "chat":
        mode, character, card, role = "chat", None, None, "chat"
    elif body.model == "roleplay":
        # The roleplay model with the request's own persona, as the older /Lumimaid_stream did.
        mode, character, role = "roleplay", None, "roleplay"
        card = Card(name="Assistant", description=system)
    elif body.model.startswith(CHARACTER_PREFIX) and \
            (found := engine.characters().character(body.model[len(CHARACTER_PREFIX):])) is not None:
        mode, character, card, role = "roleplay", found.name, None, found.model
    else:
        raise OpenAIError(404, f"The model {body.model!r} does not exist; GET /v1/models lists them",
                          param="model", code="model_not_found")
    limits = engine.model_limits(role)
    max_new = body.max_completion_tokens or body.max_tokens
    if max_new is not None and max_new >= limits.n_ctx:
        raise OpenAIError(400, f"max_tokens: at most {limits.n_ctx - 1} for this model",
                          param="max_tokens")
    stop = None
    if body.stop is not None:
        extra = [body.stop] if isinstance(body.stop, str) else body.stop
        if len(extra) > MAX_STOP:
            raise OpenAIError(400, f"stop: at most {MAX_STOP} sequences", param="stop")
        # The model's own stops (end-of-turn markers) stay: a request adds to them.
        stop = tuple(dict.fromkeys((*limits.stop, *(s for s in extra if s))))
    speaker = Speaker(id=f"openai:{body.user}" if body.user else f"openai:req:{uuid.uuid4().hex}",
                      name="User", lang=lang)
    return Turn(speaker=speaker, scope="openai", text=texts[-1], mode=mode, character=character, card=card,
                remember=False, history=history, system=(system or None) if mode == "chat" else None,
                params=GenParams(max_new_tokens=max_new, temperature=body.temperature, top_p=body.top_p,
                                 stop=stop, whole_reply=not body.stream, num_beams=body.num_beams))


@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    body = await _parse(request)
    lang = _api_lang(request)
    if body.model.startswith(SCENE_PREFIX):
        return await _scene(request, ctx.engine, body, lang)
    turn = _turn(ctx.engine, ctx.config.http, body, lang)
    try:
        async with limits_of(request).hold(request, turn):
            reply = ctx.engine.reply(turn)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return await stream_reply(reply, ChunkEvents(request, reply, body.model, include_usage), lang)
            await collect(reply)
    except ApiError as e:
        raise OpenAIError(e.status, e.message, code="rate_limit_exceeded" if e.status == 429 else None) from None
    return web.json_response({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": body.model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text, "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason(reply)}],
        "usage": usage_of(reply),
    })


async def _scene(request: web.Request, engine: EngineAPI, body: ChatRequest, lang: str) -> web.StreamResponse:
    characters = scene_characters(engine, body.model)
    if characters is None:
        raise OpenAIError(404, f"The model {body.model!r} names no characters or an unknown one; GET /v1/models "
                               f"lists them", param="model", code="model_not_found")
    if body.messages[-1].role != "user":
        raise OpenAIError(400, "messages: the last message must be the user's", param="messages")
    messages = [(m.role, m.text(i), m.name) for i, m in enumerate(body.messages)]
    speaker = f"openai:{body.user}" if body.user else f"openai:req:{uuid.uuid4().hex}"
    chain = scene_turn(engine, characters, messages, speaker, lang, body.max_completion_tokens or body.max_tokens,
                       body.temperature, body.top_p)
    completion = SceneCompletion(request, chain, body.model, lang)
    return await (completion.streamed() if body.stream else completion.whole())


def setup(app: web.Application) -> None:
    app.middlewares.insert(0, reshape_errors)     # outermost: sees the auth and routing errors too
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
