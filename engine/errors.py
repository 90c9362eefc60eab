"""Typed engine errors; each carries a stable code that surfaces translate for the user."""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error a surface may show to a user.

    ``code`` is stable (surfaces map it to a message in the user's language);
    ``detail`` is for logs.
    """

    code = "internal"

    def __init__(self, detail: str = "", **info):
        super().__init__(detail or self.code)
        self.detail = detail or self.code
        self.info = info


class UserBusy(EngineError):
    """The user already has a reply in flight and the policy is to refuse."""
    code = "user_busy"


class EngineBusy(EngineError):
    """The model's queue is full."""
    code = "busy"


class GenerationTimeout(EngineError):
    code = "timeout"


class GenerationCancelled(EngineError):
    code = "cancelled"


class ModelError(EngineError):
    code = "model_error"


class StoreUnavailable(EngineError):
    code = "db_unavailable"


class UnknownCharacter(EngineError):
    code = "unknown_character"


class InputTooLong(EngineError):
    code = "input_too_long"


class EmptyReply(EngineError):
    """The model produced no text (e.g. it stopped at once)."""
    code = "empty_reply"


class RateLimitedUser(EngineError):
    """The user sent more requests per minute than allowed."""
    code = "rate_limited"
