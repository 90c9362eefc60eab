"""Characters over HTTP: list, fetch (JSON or the card PNG), and admin import of a PNG or JSON card."""
from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.http.context import ctx_of
from bot.http.errors import ApiError, read_body, request_lang, status_text
from engine.cards import card_to_dict, card_to_png


def _summary(character) -> dict:
    card = character.card
    return {"name": character.name, "description": card.description, "first_mes": card.first_mes,
            "tags": list(getattr(card, "tags", []) or []), "model": character.model, "source": character.source,
            "has_image": card.image is not None}


async def list_characters(request: web.Request) -> web.Response:
    registry = ctx_of(request).engine.characters()
    return web.json_response({"characters": [_summary(c) for c in registry.entries()]})


async def get_character(request: web.Request) -> web.Response:
    registry = ctx_of(request).engine.characters()
    found = registry.character(request.match_info["name"])
    if found is None:
        raise ApiError(404, f"no character named {request.match_info['name']!r}")
    if request.query.get("image") in ("1", "true"):
        return web.Response(body=card_to_png(found.card, found.card.image), content_type="image/png")
    return web.json_response(_summary(found) | {"card": card_to_dict(found.card)})


async def _form_file(request: web.Request) -> bytes | None:
    # A form is read part by part, past aiohttp's body size limit: the same limit is kept here.
    most = ctx_of(request).config.http.max_body_bytes
    reader = await request.multipart()
    async for part in reader:
        if part.filename or part.name in ("card", "file"):
            data = bytearray()
            while chunk := await part.read_chunk():
                data += chunk
                if len(data) > most:
                    raise ApiError(413, status_text(413, request_lang(request)))
            return bytes(data)
    return None


async def _upload(request: web.Request) -> bytes:
    """The card bytes: the first file of a multipart form, or the raw body (PNG or JSON)."""
    if request.content_type.startswith("multipart/"):
        lang = request_lang(request)
        try:
            async with asyncio.timeout(ctx_of(request).config.http.body_timeout_s):
                found = await _form_file(request)
        except TimeoutError:
            raise ApiError(408, status_text(408, lang)) from None
        except (ValueError, AssertionError, HttpProcessingError, web.RequestPayloadError):
            # aiohttp's multipart reader reports a broken form (no boundary, cut-off part) this way.
            raise ApiError(400, "card: malformed multipart form") from None
        if found is None:
            raise ApiError(422, "card: no file in the form (field 'card')")
        return found
    body = await read_body(request)
    if not body:
        raise ApiError(422, "card: empty request body")
    return body


async def import_character(request: web.Request) -> web.Response:
    engine = ctx_of(request).engine
    data = await _upload(request)
    character = await engine.import_card(data, by="http")
    return web.json_response(_summary(character), status=201)


def setup(app: web.Application) -> None:
    app.router.add_get("/characters", list_characters)
    app.router.add_get("/characters/{name}", get_character)
    app.router.add_post("/characters", import_character)
