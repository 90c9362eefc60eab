"""Character cards (SillyTavern V1/V2/V3): the in-memory model, PNG/JSON read/write, registry and prompt."""
from engine.cards.errors import CardError
from engine.cards.files import card_to_json, card_to_png, load_card, load_card_file
from engine.cards.model import Card
from engine.cards.parse import card_from_obj, card_to_dict, card_to_v2, card_to_v3
from engine.cards.prompt import build_roleplay_parts
from engine.cards.registry import Character, CharacterRegistry

__all__ = [
    "Card", "CardError", "Character", "CharacterRegistry", "build_roleplay_parts", "card_from_obj",
    "card_to_dict", "card_to_json", "card_to_png", "card_to_v2", "card_to_v3", "load_card", "load_card_file",
]
