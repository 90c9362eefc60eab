"""Card JSON in and out: decode with limits, normalize V1/V2/V3 objects to a Card, and write V2/V3 objects back."""
from __future__ import annotations

import json
from typing import Any

from engine.cards.errors import CardError
from engine.cards.model import V1_FIELDS, Card
from engine.settings import CardLimits

SPEC_V1, SPEC_V2, SPEC_V3 = "chara_card_v1", "chara_card_v2", "chara_card_v3"

# A card's JSON is small text; these bound what a hostile one can cost to parse and keep.
MAX_DEPTH = 64                  # nesting of objects/arrays (extensions are the deepest legit part)
MAX_CONTAINERS = 100_000        # objects + arrays in one card
MAX_STRINGS = 1_000_000         # strings (keys included) in one card

# Old TavernAI/Pygmalion V1 names for the V1 fields.
V1_ALIASES = {
    "char_name": "name", "char_persona": "description", "world_scenario": "scenario",
    "char_greeting": "first_mes", "example_dialogue": "mes_example",
}
V2_TEXT = (*V1_FIELDS, "creator_notes", "system_prompt", "post_history_instructions", "creator",
           "character_version")
V2_KEYS = frozenset({*V2_TEXT, "alternate_greetings", "character_book", "tags", "extensions"})
V3_KEYS = frozenset({*V2_KEYS, "assets", "nickname", "creator_notes_multilingual", "source",
                     "group_only_greetings", "creation_date", "modification_date"})
ENTRY_BOOLS = ("enabled", "case_sensitive", "constant", "selective", "use_regex")
ENTRY_NUMBERS = ("insertion_order", "priority")
BOOK_NUMBERS = ("scan_depth", "token_budget")


def decode_json(raw: bytes, limits: CardLimits) -> Any:
    """Parse card JSON bytes, refusing what would cost too much before and after parsing."""
    if len(raw) > limits.max_file_bytes:
        raise CardError("too_large", f"card JSON is {len(raw)} bytes, more than the limit of {limits.max_file_bytes}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CardError("bad_json", f"card JSON is not UTF-8 text (byte {e.start})") from None
    # Counting brackets and quotes is a cheap upper bound on the objects json.loads would build.
    if text.count("{") + text.count("[") > MAX_CONTAINERS:
        raise CardError("too_large", f"card JSON has more than {MAX_CONTAINERS} objects and arrays")
    if text.count('"') > 2 * MAX_STRINGS:
        raise CardError("too_large", f"card JSON has more than {MAX_STRINGS} strings")
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise CardError("bad_json", f"card JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise CardError("bad_json", f"card is not valid JSON: {e}") from None
    _check_depth(obj)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_depth(obj: Any) -> None:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CardError("bad_json", f"card JSON is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


class _Reader:
    """Typed, limit-checked access to one JSON object's fields; errors name the field."""

    def __init__(self, obj: dict[str, Any], limits: CardLimits, where: str = ""):
        self.obj, self.limits, self.where = obj, limits, where

    def _name(self, key: str) -> str:
        return f"{self.where}{key}"

    def text(self, key: str) -> str:
        value = self.obj.get(key)
        if value is None:
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)          # e.g. character_version: 1.2 from a careless tool
        if not isinstance(value, str):
            raise CardError("bad_card", f"field {self._name(key)!r} must be text, not {_kind(value)}")
        return self.check_len(key, value)

    def check_len(self, key: str, value: str) -> str:
        if len(value) > self.limits.max_field_chars:
            raise CardError("field_too_long", f"field {self._name(key)!r} has {len(value)} characters, "
                            f"more than the limit of {self.limits.max_field_chars}")
        return value

    def texts(self, key: str) -> list[str]:
        value = self.obj.get(key)
        if value is None:
            return []
        if isinstance(value, str):      # some tools write tags as one comma-separated string
            value = [t.strip() for t in value.split(",")] if key == "tags" else [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CardError("bad_card", f"field {self._name(key)!r} must be a list of text")
        return [self.check_len(key, v) for v in value if not (key == "tags" and not v)]

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise CardError("bad_card", f"field {self._name(key)!r} must be an object, not {_kind(value)}")
        return value

    def date(self, key: str) -> int | None:
        value = self.obj.get(key)
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)) and value == value and abs(value) < 1e13:
            return int(value)
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 14:
            return int(value.strip())
        return None                     # dates are informative only; a strange one is not worth refusing


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(type(value), type(value).__name__)


def card_from_obj(obj: Any, limits: CardLimits) -> Card:
    """Normalize a parsed V1, V2 or V3 card object to a Card (no image)."""
    if not isinstance(obj, dict):
        raise CardError("bad_card", f"a card must be a JSON object, not {_kind(obj)}")
    spec = obj.get("spec")
    data = obj.get("data")
    if isinstance(data, dict) and (spec is None or (isinstance(spec, str) and spec.startswith("chara_card_v"))):
        spec = spec if spec in (SPEC_V2, SPEC_V3) else (SPEC_V3 if str(spec).startswith("chara_card_v3") else SPEC_V2)
        version = obj.get("spec_version")
        version = str(version) if isinstance(version, (str, int, float)) and not isinstance(version, bool) else ""
        return _card_from_data(data, spec, version or ("3.0" if spec == SPEC_V3 else "2.0"), limits)
    if spec is not None or data is not None:
        raise CardError("bad_card", f"unknown card layout (spec {str(spec)[:40]!r}); expected chara_card_v2 or chara_card_v3 with a data object")
    v1 = {V1_ALIASES.get(k, k): v for k, v in obj.items()}
    return _card_from_data(v1, SPEC_V1, "1.0", limits)


def _card_from_data(data: dict[str, Any], spec: str, version: str, limits: CardLimits) -> Card:
    r = _Reader(data, limits)
    name = r.text("name").strip()
    if not name:
        raise CardError("missing_name", "the card has no name")
    texts = {k: r.text(k) for k in V2_TEXT if k != "name"}
    return Card(
        name=name,
        **texts,
        alternate_greetings=r.texts("alternate_greetings"),
        character_book=_book(data.get("character_book"), limits),
        nickname=r.text("nickname").strip(),
        tags=r.texts("tags"),
        extensions=r.mapping("extensions"),
        assets=_assets(data.get("assets")),
        group_only_greetings=r.texts("group_only_greetings"),
        creator_notes_multilingual=_str_map(r, "creator_notes_multilingual"),
        source=r.texts("source"),
        creation_date=r.date("creation_date"),
        modification_date=r.date("modification_date"),
        spec=spec,
        spec_version=version,
        extra={k: v for k, v in data.items() if k not in V3_KEYS},
    )


def _str_map(r: _Reader, key: str) -> dict[str, str]:
    value = r.mapping(key)
    if not all(isinstance(v, str) for v in value.values()):
        raise CardError("bad_card", f"field {key!r} must map language codes to text")
    return {k: r.check_len(f"{key}.{k}", v) for k, v in value.items()}


def _assets(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise CardError("bad_card", "field 'assets' must be a list of objects")
    for a in value:
        for key in ("type", "uri", "name", "ext"):
            if key in a and not isinstance(a[key], str):
                raise CardError("bad_card", f"asset field {key!r} must be text")
    return [dict(a) for a in value]


def _book(value: Any, limits: CardLimits) -> dict[str, Any] | None:
    """Check a lorebook and fill the spec's required defaults; unknown keys are kept as they are."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CardError("bad_card", f"field 'character_book' must be an object, not {_kind(value)}")
    book = dict(value)
    r = _Reader(book, limits, "character_book.")
    for key in ("name", "description"):
        if key in book:
            book[key] = r.text(key)
    for key in BOOK_NUMBERS:
        if book.get(key) is not None and not _is_number(book[key]):
            raise CardError("bad_card", f"field 'character_book.{key}' must be a number")
    if "recursive_scanning" in book and book["recursive_scanning"] is not None and not isinstance(book["recursive_scanning"], bool):
        raise CardError("bad_card", "field 'character_book.recursive_scanning' must be true or false")
    book["extensions"] = r.mapping("extensions")
    entries = book.get("entries")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise CardError("bad_card", "field 'character_book.entries' must be a list")
    book["entries"] = [_entry(e, i, limits) for i, e in enumerate(entries)]
    return book


def _entry(value: Any, i: int, limits: CardLimits) -> dict[str, Any]:
    where = f"character_book.entries[{i}]."
    if not isinstance(value, dict):
        raise CardError("bad_card", f"field '{where[:-1]}' must be an object")
    entry = dict(value)
    r = _Reader(entry, limits, where)
    entry["keys"] = r.texts("keys")
    if "secondary_keys" in entry:
        entry["secondary_keys"] = r.texts("secondary_keys")
    entry["content"] = r.text("content")
    for key in ("name", "comment"):
        if key in entry and entry[key] is not None:
            entry[key] = r.text(key)
    for key in ENTRY_BOOLS:
        if entry.get(key) is not None and not isinstance(entry[key], bool):
            if entry[key] in (0, 1):        # 0/1 from tools that have no booleans
                entry[key] = bool(entry[key])
            else:
                raise CardError("bad_card", f"field '{where}{key}' must be true or false")
    for key in ENTRY_NUMBERS:
        if entry.get(key) is not None and not _is_number(entry[key]):
            raise CardError("bad_card", f"field '{where}{key}' must be a number")
    if "position" in entry and entry["position"] is not None and not isinstance(entry["position"], str):
        raise CardError("bad_card", f"field '{where}position' must be text")
    entry.setdefault("enabled", True)
    if entry.get("insertion_order") is None:
        entry["insertion_order"] = 100
    entry["extensions"] = r.mapping("extensions")
    return entry


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _v2_data(card: Card) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": card.name, "description": card.description, "personality": card.personality,
        "scenario": card.scenario, "first_mes": card.first_mes, "mes_example": card.mes_example,
        "creator_notes": card.creator_notes, "system_prompt": card.system_prompt,
        "post_history_instructions": card.post_history_instructions,
        "alternate_greetings": list(card.alternate_greetings), "tags": list(card.tags),
        "creator": card.creator, "character_version": card.character_version,
        "extensions": card.extensions,
    }
    if card.character_book is not None:
        data["character_book"] = card.character_book
    return data


def card_to_v2(card: Card) -> dict[str, Any]:
    """The card as a V2 object, with the V1 fields mirrored at the top for V1-only readers."""
    data = _v2_data(card)
    for k, v in card.extra.items():
        data.setdefault(k, v)
    return {"spec": SPEC_V2, "spec_version": "2.0", **{k: data[k] for k in V1_FIELDS}, "data": data}


def card_to_v3(card: Card) -> dict[str, Any]:
    """The card as a V3 object (fields V3 requires are filled with their defaults)."""
    data = _v2_data(card)
    if card.character_book is not None:
        book = dict(card.character_book)
        book["entries"] = [{"use_regex": False, **e} for e in book.get("entries", [])]
        data["character_book"] = book
    data["group_only_greetings"] = list(card.group_only_greetings)
    optional = {
        "assets": card.assets, "nickname": card.nickname, "source": card.source,
        "creator_notes_multilingual": card.creator_notes_multilingual,
        "creation_date": card.creation_date, "modification_date": card.modification_date,
    }
    data.update({k: v for k, v in optional.items() if v not in (None, "", [], {})})
    for k, v in card.extra.items():
        data.setdefault(k, v)
    return {"spec": SPEC_V3, "spec_version": "3.0", "data": data}


def card_to_dict(card: Card) -> dict[str, Any]:
    """Every normalized field (not the image), flat, for showing and for storing."""
    return {
        "spec": card.spec, "spec_version": card.spec_version, "name": card.name,
        "nickname": card.nickname, "description": card.description, "personality": card.personality,
        "scenario": card.scenario, "first_mes": card.first_mes, "mes_example": card.mes_example,
        "alternate_greetings": card.alternate_greetings, "group_only_greetings": card.group_only_greetings,
        "system_prompt": card.system_prompt, "post_history_instructions": card.post_history_instructions,
        "creator_notes": card.creator_notes, "creator_notes_multilingual": card.creator_notes_multilingual,
        "tags": card.tags, "creator": card.creator, "character_version": card.character_version,
        "source": card.source, "creation_date": card.creation_date, "modification_date": card.modification_date,
        "character_book": card.character_book, "assets": card.assets, "extensions": card.extensions,
        "extra": card.extra,
    }
