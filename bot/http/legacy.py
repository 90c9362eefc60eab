"""The older servers' endpoints, same shapes: /Llama_stream, /Lumimaid_stream, /inferweb, /chatweb."""
from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StrictBool, StrictStr

from bot.http.context import ctx_of
from bot.http.errors import ApiError, check_length, parse_body, request_lang
from bot.http.limits import limits_of
from bot.http.replies import collect, stream_text
from engine.cards import Card
from engine.types import GenParams, Speaker, Turn

Session = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
# Where a ``session``'s conversation lives, per route kind (GET /conversations/{session}?kind=...).
SESSION_SCOPES = {"llama": "http:llama", "lumimaid": "http:lumimaid"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Streamed(_Body):
    # Accepted only to refuse it clearly: beam search returns the whole reply at once.
    num_beams: int | None = None

    def refuse_beams(self) -> None:
        if self.num_beams is not None and self.num_beams > 1:
            raise ApiError(422, "num_beams: beam search cannot stream; use /inferweb or /chatweb (or /v1 with "
                                "stream: false), which use the model's num_beams from bot.yaml")


class LlamaBody(_Streamed):
    input_data: StrictStr = Field(min_length=1)
    google_access: StrictBool = False        # accepted for compatibility; this bot does no web search
    session: Session | None = None           # remember the conversation under this id


class LumimaidBody(_Streamed):
    input_data: StrictStr = Field(min_length=1)
    character_name: StrictStr = Field(min_length=1, max_length=100)
    greeting: StrictStr = ""
    context: StrictStr = ""
    # Accepted for compatibility with the older server's clients and ignored: this bot sends no images
    # and has no access levels (a malformed value is still a 422, as it was).
    image: HttpUrl | None = None
    access_level: StrictBool = True
    session: Session | None = None


class Instruction(_Body):
    command: StrictStr


class HistoryItem(_Body):
    type: StrictStr
    str: StrictStr


class History(_Body):
    count: int = Field(0, ge=0)
    history: list[HistoryItem] = []


class InferBody(_Body):
    instruction: Instruction
    input: StrictStr = Field(min_length=1)


class ChatBody(InferBody):
    history: History = History()


def session_speaker(session: str | None, lang: str, remote: str | None = None) -> Speaker:
    """The owner of an HTTP ``session``'s conversations (also used by the terminal chat's --session)."""
    return Speaker(id=f"http:{session}" if session else f"http:{remote}", name="User", lang=lang)


def _speaker(request: web.Request, session: str | None, lang: str) -> Speaker:
    return session_speaker(session, lang, request.remote)


async def _answer(request: web.Request, turn: Turn, stream: bool):
    """Run ``turn`` within the caller's limits (key and address, whatever the session): streamed or collected."""
    async with limits_of(request).hold(request, turn):
        reply = ctx_of(request).engine.reply(turn)
        return await (stream_text(request, reply, turn.speaker.lang) if stream else collect(reply))


async def llama_stream(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    body = await parse_body(request, LlamaBody)
    body.refuse_beams()
    lang = request_lang(request)
    check_length(body.input_data, ctx.config.http.max_input_chars, "input_data", lang)
    turn = Turn(speaker=_speaker(request, body.session, lang), scope=SESSION_SCOPES["llama"], text=body.input_data,
                mode="chat", remember=body.session is not None)
    return await _answer(request, turn, stream=True)


async def lumimaid_stream(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    body = await parse_body(request, LumimaidBody)
    body.refuse_beams()
    lang = request_lang(request)
    http = ctx.config.http
    check_length(body.input_data, http.max_input_chars, "input_data", lang)
    check_length(body.context, http.max_context_chars, "context", lang)
    check_length(body.greeting, http.max_context_chars, "greeting", lang)
    registered = ctx.engine.characters().get(body.character_name)
    if registered is not None and not (body.context or body.greeting):
        turn_card, character = None, registered.name
    else:   # the older server's way: the character described in the request itself
        turn_card = Card(name=body.character_name, description=body.context, first_mes=body.greeting)
        character = None
    turn = Turn(speaker=_speaker(request, body.session, lang), scope=SESSION_SCOPES["lumimaid"],
                text=body.input_data,
                mode="roleplay", character=character, card=turn_card, remember=body.session is not None)
    return await _answer(request, turn, stream=True)


def _stop(ctx) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*ctx.config.http.stop_strings, ctx.config.http.human_tag, ctx.config.http.ai_tag)))


def _item(tag: str, text: str) -> dict:
    return {"type": tag, "str": text}


def _check_instruction(ctx, request: web.Request, body: InferBody) -> str:
    """The caller's language, once ``input`` and ``instruction.command`` are within their limits."""
    lang = request_lang(request)
    check_length(body.input, ctx.config.http.max_input_chars, "input", lang)
    check_length(body.instruction.command, ctx.config.http.max_system_chars, "instruction.command", lang)
    return lang


async def inferweb(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, InferBody)
    lang = _check_instruction(ctx, request, body)
    turn = Turn(speaker=_speaker(request, None, lang), scope="http:inferweb", text=body.input, mode="chat",
                remember=False, system=body.instruction.command or None,
                params=GenParams(stop=_stop(ctx), whole_reply=True))
    result = await _answer(request, turn, stream=False)
    http = ctx.config.http
    return web.json_response({"result": result, "history": {
        "history": [_item(http.human_tag, body.input), _item(http.ai_tag, result)]}})


async def chatweb(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, ChatBody)
    lang = _check_instruction(ctx, request, body)
    http = ctx.config.http
    check_length("".join(i.str for i in body.history.history), http.max_history_chars, "history.history", lang)
    roles = {http.human_tag: "user", http.ai_tag: "assistant"}
    for i, item in enumerate(body.history.history):
        if item.type not in roles:
            raise ApiError(422, f"history.history.{i}.type: must be {http.human_tag!r} or {http.ai_tag!r}")
    past = [{"role": roles[i.type], "content": i.str} for i in body.history.history]
    turn = Turn(speaker=_speaker(request, None, lang), scope="http:chatweb", text=body.input, mode="chat",
                remember=False, history=past, system=body.instruction.command or None,
                params=GenParams(stop=_stop(ctx), whole_reply=True))
    result = await _answer(request, turn, stream=False)
    items = [i.model_dump() for i in body.history.history] + [_item(http.human_tag, body.input),
                                                              _item(http.ai_tag, result)]
    items = items[-2 * http.max_history:]          # a turn is a question and its answer
    return web.json_response({"result": result, "history": {"count": len(items) // 2, "history": items}})


def setup(app: web.Application) -> None:
    app.router.add_post("/Llama_stream", llama_stream)
    app.router.add_post("/Lumimaid_stream", lumimaid_stream)
    app.router.add_post("/inferweb", inferweb)
    app.router.add_post("/chatweb", chatweb)
