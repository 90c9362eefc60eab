"""HTTP errors: the one map from engine error to status, JSON errors in the older server's shape, and the
middleware that turns every failure into one (engine errors as the user-facing message, never log detail)."""
from __future__ import annotations

import asyncio
import errno
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from bot.http.context import ctx_of
from bot.i18n import describe, pick_lang, section, text
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
    "prompt_too_long": 422,
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

# A status aiohttp (or a route) made itself -> the catalog's text for it (section "http").
STATUS_TEXT: dict[int, str] = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                               405: "method_not_allowed", 408: "timeout", 413: "too_large", 414: "too_large",
                               415: "unsupported", 417: "expectation_failed", 431: "too_large"}
# A file name the OS refuses (too long, not a folder, ...) names no file: 404, not a server error.
_NO_SUCH_FILE = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EINVAL, errno.ELOOP, errno.EISDIR}


def status_of(error: EngineError) -> int:
    if isinstance(error, CardError):
        return 413 if error.code == "too_large" else 422
    return STATUS.get(error.code, 500)


def request_lang(request: web.BaseRequest, default: str | None = None) -> str:
    """The caller's language from Accept-Language, else ``default``, else the bot's default language."""
    if default is None:
        try:
            default = ctx_of(request).config.language.default
        except (AttributeError, KeyError, RuntimeError):
            default = "en"       # a request aiohttp refused before routing has no app
    return pick_lang(request.headers.get("Accept-Language", "").split(",")[0], default=default)


def http_text(key: str, lang: str, **kw) -> str:
    return text(section("http"), key, lang, **kw)


def status_text(status: int, lang: str) -> str:
    return http_text(STATUS_TEXT.get(status, "bad_request" if status < 500 else "error"), lang)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


RETRY_AFTER_S = 5        # what a "busy" 503 or a 429 tells the client to wait


def json_error(status: int, message: str) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return web.json_response({"status": status, "message": message, "data": None}, status=status, headers=headers)


def validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    msg = "field required" if err["type"] == "missing" else err["msg"]
    return f"{field}: {msg}"


async def read_body(request: web.Request) -> bytes:
    """The whole body within ``http.body_timeout_s``; 408 for a body that stops coming, 400/413 for a bad one."""
    lang = request_lang(request)
    try:
        async with asyncio.timeout(ctx_of(request).config.http.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, status_text(408, lang)) from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, status_text(413, lang)) from None
    except (HttpProcessingError, web.RequestPayloadError):   # a Content-Encoding the body does not match, bad chunks
        raise ApiError(400, status_text(400, lang)) from None


def _has_lone_surrogate(data) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def parse_body(request: web.Request, model):
    """The request's JSON body validated by a pydantic model; 400 for broken JSON, 422 naming the field."""
    raw = await read_body(request)
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body: expected a JSON object")
    # "\ud800" is valid JSON but no text: it cannot be stored, prompted or sent back.
    if b"\\u" in raw.lower() and _has_lone_surrogate(data):
        raise ApiError(400, "body: text contains a lone UTF-16 surrogate (\\ud800-\\udfff)")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, validation_message(e)) from None


def check_length(value: str | None, limit: int, field: str, lang: str) -> None:
    """422 naming ``field`` when ``value`` is longer than ``limit`` characters."""
    if value is not None and len(value) > limit:
        raise ApiError(422, http_text("too_long_field", lang, field=field, limit=limit, got=len(value)))


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return json_error(e.status, e.message)
    except EngineError as e:
        log.info("%s %s: %s", request.method, request.path, e.detail)
        return json_error(status_of(e), describe(e, request_lang(request)))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return json_error(e.status, status_text(e.status, request_lang(request)))
    except (HttpProcessingError, web.RequestPayloadError, RecursionError):
        return json_error(400, status_text(400, request_lang(request)))
    except ConnectionError as e:
        log.info("client went away: %s", e)
        raise
    except OSError as e:
        if e.errno in _NO_SUCH_FILE:
            return json_error(404, status_text(404, request_lang(request)))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, status_text(500, request_lang(request)))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, status_text(500, request_lang(request)))
