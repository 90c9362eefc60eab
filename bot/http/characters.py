"""Characters over HTTP: list, fetch (JSON or the card PNG), and admin import of a PNG or JSON card."""
from __future__ import annotations

from aiohttp import web

from bot.http.context import ctx_of
from bot.http.errors import ApiError
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


async def _upload(request: web.Request) -> bytes:
    """The card bytes: the first file of a multipart form, or the raw body (PNG or JSON)."""
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        async for part in reader:
            if part.filename or part.name in ("card", "file"):
                return bytes(await part.read(decode=False))
        raise ApiError(422, "card: no file in the form (field 'card')")
    body = await request.read()
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
