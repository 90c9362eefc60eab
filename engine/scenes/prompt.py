"""One scene turn's prompt: the shared history labelled by speaker, the others present, the nudge, stop strings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.cards.macros import apply_macros
from engine.cards.model import Card
from engine.prompts import Message


@dataclass(frozen=True)
class Line:
    """One message of a scene: ``role`` "user" (a person) or "assistant" (a character), and who said it."""

    role: str
    speaker: str
    content: str


@dataclass(frozen=True)
class ScenePrompt:
    """What a scene adds to the speaking character's roleplay prompt (its card and lorebook stay as they are).

    ``history`` is every line but the last, the speaker's own lines as the
    assistant's and everyone else's as the user's, each labelled "Name: ";
    ``text`` is the last line and the nudge; ``context`` describes the other
    characters present; ``stop`` ends a reply that starts speaking for someone else.
    """

    history: list[Message]
    text: str
    context: str
    stop: tuple[str, ...]


def short(text: str, limit: int) -> str:
    """``text`` on one line, cut after the last sentence (else word) that fits in ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    window = flat[:limit]
    cut = max(window.rfind(". "), window.rfind("! "), window.rfind("? "), window.rfind("다. "))
    if cut >= limit // 2:
        return window[:cut + 1].rstrip()
    space = window.rfind(" ")
    return (window[:space] if space >= limit // 2 else window).rstrip() + "…"


def label(line: Line) -> str:
    return f"{line.speaker}: {line.content}"


def build_scene_prompt(speaker: Card, others: Sequence[Card], lines: Sequence[Line], user_name: str, nudge: str,
                       description_chars: int = 300) -> ScenePrompt:
    """The scene parts of ``speaker``'s next turn (see ScenePrompt)."""
    me = speaker.display_name
    history: list[Message] = [
        {"role": "assistant" if (ln.role == "assistant" and ln.speaker == me) else "user", "content": label(ln)}
        for ln in lines[:-1]]
    last = label(lines[-1]) + "\n\n" if lines else ""
    text = last + apply_macros(nudge, me, user_name).strip()
    described = [f"- {c.display_name}: {short(apply_macros(c.description, c.display_name, user_name), description_chars)}"
                 if description_chars and c.description.strip() else f"- {c.display_name}" for c in others]
    context = ("Also in this scene (never write their lines):\n" + "\n".join(described)) if described else ""
    people = [ln.speaker for ln in lines if ln.role == "user"] + [user_name]
    names = [c.display_name for c in others] + people
    stop = tuple(dict.fromkeys(f"{n}:" for n in names if n and n != me))
    return ScenePrompt(history=history, text=text, context=context, stop=stop)
