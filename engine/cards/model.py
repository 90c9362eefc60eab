"""The one in-memory character every card version is normalized to."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The text fields every card version has, in the spec's order.
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")


@dataclass
class Card:
    """A character, whatever file it came from (V1, V2 or V3; PNG or JSON).

    Every field of the V2 and V3 specs is kept; ``extensions`` (and any key of
    the card's ``data`` this code does not know, in ``extra``) is written back
    unchanged, so tools that put their own settings there lose nothing.
    ``character_book`` is the spec's lorebook object, checked and completed
    with the spec's defaults but otherwise kept as it came (unknown keys stay).
    """

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    character_book: dict[str, Any] | None = None
    nickname: str = ""
    image: bytes | None = None          # the card's PNG (avatar), if any, without its card chunks
    # V2
    creator_notes: str = ""
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)
    # V3
    assets: list[dict[str, Any]] = field(default_factory=list)
    group_only_greetings: list[str] = field(default_factory=list)
    creator_notes_multilingual: dict[str, str] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)
    creation_date: int | None = None        # unix seconds
    modification_date: int | None = None    # unix seconds
    # Where it came from: "chara_card_v1" | "chara_card_v2" | "chara_card_v3", and unknown data keys.
    spec: str = "chara_card_v3"
    spec_version: str = "3.0"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.nickname or self.name

    def greetings(self, *, group: bool = False) -> list[str]:
        """Every non-empty opening message: ``first_mes``, the alternates, and in groups the group-only ones."""
        found = [self.first_mes, *self.alternate_greetings, *(self.group_only_greetings if group else ())]
        return [g for g in found if g.strip()]
