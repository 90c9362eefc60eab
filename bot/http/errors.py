"""JSON errors in the older server's shape, and the middleware that turns every failure into one."""
from __future__ import annotations

import json
import logging

from aiohttp import web
from pydantic import ValidationError

from engine.errors import EngineError

log = logging.getLogger(__name__)


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
        return json_error(e.http_status if e.http_status < 600 else 500, e.detail if e.http_status != 500 else e.code)
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
