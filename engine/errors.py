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


class NoScene(EngineError):
    """The channel has no scene (a scene command other than start)."""
    code = "no_scene"
    http_status = 404


class SceneFull(EngineError):
    """A scene may hold at most ``scenes.max_characters`` characters (``info['limit']``)."""
    code = "scene_full"
    http_status = 422


class CharacterNotHere(EngineError):
    """bot.yaml's ``characters[].channels`` keeps this character out of the scope (``info['name']``)."""
    code = "character_not_here"
    http_status = 403
