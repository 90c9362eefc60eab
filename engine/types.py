"""The values passed between surfaces and the engine: who speaks, what they ask, what comes back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["chat", "roleplay"]


@dataclass(frozen=True)
class Speaker:
    """A person talking to the bot.

    ``id`` is platform-qualified ("discord:123", "telegram:456", "http:127.0.0.1",
    "web:<session>") so one store holds every platform's users apart.
    """

    id: str
    name: str = "User"
    lang: str | None = None


@dataclass(frozen=True)
class GenParams:
    """Per-request overrides of a model's generation defaults (None = model default)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] | None = None
    # Beam search, for routes that return the whole reply at once (never streamed: beams end together).
    whole_reply: bool = False             # the model's num_beams (bot.yaml) applies
    num_beams: int | None = None          # the request's own beam width, over the model's


@dataclass(frozen=True)
class Cue:
    """What a turn among several speakers (a scene) adds to the roleplay prompt.

    ``context`` is system text after the character's card (the others
    present); ``stop`` are more stop strings (their names followed by ":");
    ``prefill`` opens the reply ("Wren:") where the prompt is text, so the
    model goes on as that speaker instead of labelling a line as someone else.
    """

    context: str = ""
    stop: tuple[str, ...] = ()
    prefill: str = ""


@dataclass
class Turn:
    """One user message for the engine to answer.

    ``scope`` names where the conversation lives ("discord:channel:1",
    "telegram:chat:5", "http:llama"); together with the speaker and the mode it
    selects the active conversation unless ``conversation_id`` is given (reply
    chains, shared group conversations).
    """

    speaker: Speaker
    scope: str
    text: str
    mode: Mode = "chat"
    character: str | None = None          # a registered character's name
    card: "object | None" = None          # an ad-hoc engine.cards.Card (e.g. /Lumimaid_stream)
    conversation_id: str | None = None
    remember: bool = True                 # store the messages and use the memory
    params: GenParams = field(default_factory=GenParams)
    request_key: str | None = None        # idempotency key from the surface (e.g. a Telegram update id)
    history: list[dict] | None = None     # explicit prior messages (stateless APIs); replaces stored memory
    system: str | None = None             # replaces the chat model's system prompt for this turn
    cue: Cue | None = None                # a scene turn's additions to the roleplay prompt
    low_priority: bool = False            # may not take the places of a model's queue kept for the others
    max_wait_s: float | None = None       # longest wait for the model before a "busy" answer (None: no limit)
