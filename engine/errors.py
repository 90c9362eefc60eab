"""Typed engine errors; each carries a stable code that surfaces translate for the user."""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error a surface may show to a user.

    ``code`` is stable (surfaces map it to a message in the user's language);
    ``detail`` is for logs.
    """

    code = "internal"

    def __init_subclass__(cls, code: str = "", **kwargs):
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code

    def __init__(self, detail: str = "", **info):
        super().__init__(detail or self.code)
        self.detail = detail or self.code
        self.info = info


class UserBusy(EngineError, code="user_busy"):
    """The user already has a reply in flight and the policy is to refuse."""


class EngineBusy(EngineError, code="busy"):
    """The model's queue is full."""


class GenerationTimeout(EngineError, code="timeout"):
    """The model did not finish within its ``timeout_s``."""


class GenerationCancelled(EngineError, code="cancelled"):
    """The reply was stopped (a user's /stop, or shutdown); partial text may have come first."""


class ModelError(EngineError, code="model_error"):
    """The backend failed while generating."""


class StoreUnavailable(EngineError, code="db_unavailable"):
    """The database cannot be reached (a durable write is kept for retry instead)."""


class UnknownCharacter(EngineError, code="unknown_character"):
    """No registered character has that name."""


class InputTooLong(EngineError, code="input_too_long"):
    """The user's message is longer than ``limits.max_input_chars``; ``info['limit']`` says how long."""


class PromptTooLong(EngineError, code="prompt_too_long"):
    """Instructions (system text, character) and message do not fit the model's context even with no
    memory; ``info['limit']`` is the token budget, ``info['tokens']`` what they took."""


class EmptyReply(EngineError, code="empty_reply"):
    """The model produced no text (e.g. it stopped at once)."""


class BeamSearchUnavailable(EngineError, code="beam_unavailable"):
    """Beam search was asked of a model whose backend cannot run it (only transformers can)."""


class RateLimitedUser(EngineError, code="rate_limited"):
    """The user sent more requests per minute than allowed."""


class MemoryOff(EngineError, code="memory_off"):
    """bot.yaml memory.enabled is false: no summaries or pins."""


class PinRejected(EngineError, code="pin_rejected"):
    """A fact to pin is empty, longer than memory.pin_chars, or would exceed memory.pin_tokens.

    ``info['reason']`` is empty | too_long | full, and the code says the same (pin_empty, pin_too_long,
    pins_full) so each gets its own message.
    """

    CODES = {"empty": "pin_empty", "too_long": "pin_too_long", "full": "pins_full"}

    def __init__(self, detail: str = "", *, reason: str, **info):
        super().__init__(detail, reason=reason, **info)
        self.code = self.CODES[reason]


class UnknownPin(EngineError, code="unknown_pin"):
    """No pinned fact with that number; ``info`` has ``n`` and ``count``."""


class NoScene(EngineError, code="no_scene"):
    """The channel has no scene (a scene command other than start)."""


class SceneFull(EngineError, code="scene_full"):
    """A scene may hold at most ``scenes.max_characters`` characters (``info['limit']``)."""


class CharacterNotHere(EngineError, code="character_not_here"):
    """bot.yaml's ``characters[].channels`` keeps this character out of the scope (``info['name']``)."""
