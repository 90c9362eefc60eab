"""Typed engine errors; each carries a stable code that surfaces translate for the user."""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error a surface may show to a user.

    ``code`` is stable (surfaces map it to a message in the user's language);
    ``detail`` is for logs.
    """

    code = "internal"
    http_status = 500

    def __init__(self, detail: str = "", **info):
        super().__init__(detail or self.code)
        self.detail = detail or self.code
        self.info = info


class UserBusy(EngineError):
    """The user already has a reply in flight and the policy is to refuse."""
    code = "user_busy"
    http_status = 429


class EngineBusy(EngineError):
    """The model's queue is full."""
    code = "busy"
    http_status = 503


class GenerationTimeout(EngineError):
    code = "timeout"
    http_status = 504


class GenerationCancelled(EngineError):
    code = "cancelled"
    http_status = 499


class ModelError(EngineError):
    code = "model_error"
    http_status = 500


class StoreUnavailable(EngineError):
    code = "db_unavailable"
    http_status = 503


class UnknownCharacter(EngineError):
    code = "unknown_character"
    http_status = 404


class InputTooLong(EngineError):
    code = "input_too_long"
    http_status = 422


class EmptyReply(EngineError):
    """The model produced no text (e.g. it stopped at once)."""
    code = "empty_reply"
    http_status = 502


class RateLimitedUser(EngineError):
    """The user sent more requests per minute than allowed."""
    code = "rate_limited"
    http_status = 429


class MemoryOff(EngineError):
    """bot.yaml memory.enabled is false: no summaries or pins."""
    code = "memory_off"
    http_status = 409


class PinRejected(EngineError):
    """A fact to pin is empty, longer than memory.pin_chars, or would exceed memory.pin_tokens."""
    code = "pin_rejected"
    http_status = 422
    CODES = {"empty": "pin_empty", "too_long": "pin_too_long", "full": "pins_full"}

    def __init__(self, detail: str = "", *, reason: str, **info):
        super().__init__(detail, reason=reason, **info)
        self.code = self.CODES[reason]


class UnknownPin(EngineError):
    """No pinned fact with that number."""
    code = "unknown_pin"
    http_status = 404
