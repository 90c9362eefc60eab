"""HTTP errors: the one map from engine error to status, JSON errors in the older server's shape, and the
middleware that turns every failure into one (engine errors as the user-facing message, never log detail)."""
from __future__ import annotations

import json
import logging

from aiohttp import web
from pydantic import ValidationError

from bot.http.context import ctx_of
from bot.i18n import describe, pick_lang
from engine.cards import CardError
from engine.errors import EngineError

log = logging.getLogger(__name__)

# Engine error code -> HTTP status, for every HTTP surface (legacy, /v1, web page).
STATUS: dict[str, int] = {
    "user_busy": 429,
    "rate_limited": 429,
    "busy": 503,
    "db_unavailable": 503,
    "timeout": 504,
    "cancelled": 499,           # nginx's "client closed request": the reply was stopped
    "model_error": 500,
    "unknown_character": 404,
    "input_too_long": 422,
    "beam_unavailable": 422,
    "empty_reply": 502,
    "memory_off": 409,
    "pin_empty": 422,
    "pin_too_long": 422,
    "pins_full": 422,
    "unknown_pin": 404,
    "no_scene": 404,
    "scene_full": 422,
    "character_not_here": 403,
    "internal": 500,
}


def status_of(error: EngineError) -> int:
    if isinstance(error, CardError):
        return 413 if error.code == "too_large" else 422
    return STATUS.get(error.code, 500)


def request_lang(request: web.Request, default: str | None = None) -> str:
    """The caller's language from Accept-Language, else ``default``, else the bot's default language."""
    fallback = default or ctx_of(request).config.language.default
    return pick_lang(request.headers.get("Accept-Language", "").split(",")[0], default=fallback)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "message": message, "data": None}, status=status)


def validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    msg = "field required" if err["type"] == "missing" else err["msg"]
    return f"{field}: {msg}"


async def parse_body(request: web.Request, model):
    """The request's JSON body validated by a pydantic model; 400 for broken JSON, 422 naming the field."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise ApiError(413, f"request body too large: {e.text}") from None
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, validation_message(e)) from None


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return json_error(e.status, e.message)
    except EngineError as e:
        log.info("%s %s: %s", request.method, request.path, e.detail)
        return json_error(status_of(e), describe(e, request_lang(request)))
    except web.HTTPRequestEntityTooLarge as e:
        return json_error(413, e.text or "request body too large")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = {404: "not found", 405: "method not allowed"}.get(e.status, e.reason)
        return json_error(e.status, reason)
    except (ConnectionResetError, OSError) as e:
        log.info("client went away: %s", e)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal server error")
