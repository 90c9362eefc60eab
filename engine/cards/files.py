"""Whole card files: read a PNG or JSON card (V1/V2/V3) into a Card, write a Card as a PNG or JSON card."""
from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from engine.cards.errors import CardError
from engine.cards.image import placeholder, to_png
from engine.cards.model import Card
from engine.cards.parse import card_from_obj, card_to_v2, card_to_v3, decode_json
from engine.cards.png import CARD_KEYWORDS, insert_before_iend, is_png, read_png, text_chunk
from engine.settings import CardLimits


def load_card(data: bytes, limits: CardLimits = CardLimits()) -> Card:
    """A Card from the bytes of a PNG card or a JSON card; anything else raises CardError."""
    if len(data) > limits.max_file_bytes:
        raise CardError("too_large", f"the file is {len(data)} bytes, more than the limit of {limits.max_file_bytes}")
    if is_png(data):
        return _from_png(data, limits)
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return card_from_obj(decode_json(data, limits), limits)
    raise CardError("not_png", "the file is neither a PNG card nor a JSON card")


def load_card_file(path: str | Path, limits: CardLimits = CardLimits()) -> Card:
    """``load_card`` on a file, its size checked before anything is read; errors name the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise CardError("too_large", f"the file is {size} bytes, more than the limit of {limits.max_file_bytes}")
        with path.open("rb") as f:
            data = f.read(limits.max_file_bytes + 1)     # the file may have grown since stat()
        return load_card(data, limits)
    except CardError as e:
        raise e.with_file(str(path)) from None
    except OSError as e:
        raise CardError("io_error", f"cannot read the file ({e.strerror or e})", file=str(path)) from None


def _from_png(data: bytes, limits: CardLimits) -> Card:
    found = read_png(data, limits)
    if not found.texts:
        raise CardError("no_card_chunk", "the PNG has no character card in it (no 'ccv3' or 'chara' text chunk)")
    first_error: CardError | None = None
    for keyword in CARD_KEYWORDS:
        if keyword not in found.texts:
            continue
        try:
            card = card_from_obj(decode_json(_unbase64(found.texts[keyword], keyword), limits), limits)
        except CardError as e:
            # A broken ccv3 next to a good chara still loads, as in other readers; the first error is reported.
            first_error = first_error or e
            continue
        card.image = found.image
        return card
    assert first_error is not None
    raise first_error


def _unbase64(text: str, keyword: str) -> bytes:
    stripped = text.strip()
    if stripped.startswith("{"):        # a few tools store the JSON itself
        return stripped.encode("utf-8")
    compact = "".join(stripped.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CardError("bad_base64", f"the '{keyword}' chunk is not valid base64") from None


def _b64json(obj: dict) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode("utf-8")).decode("ascii")


def card_to_png(card: Card, image: bytes | None = None, limits: CardLimits = CardLimits()) -> bytes:
    """A PNG card other tools read: V3 in ``ccv3`` and V2 in ``chara`` (tEXt, base64 JSON) before IEND.

    ``image`` (PNG/JPEG/WebP/GIF) defaults to the card's own image, else a plain
    drawn one. The result is read back before it is returned, so what is
    written is known to load under the same limits.
    """
    png = to_png(image if image is not None else (card.image or placeholder(card.name)), limits)
    out = insert_before_iend(png, [text_chunk("ccv3", _b64json(card_to_v3(card))),
                                   text_chunk("chara", _b64json(card_to_v2(card)))])
    if len(out) > limits.max_file_bytes:
        raise CardError("too_large", f"the card would be {len(out)} bytes, more than the limit of {limits.max_file_bytes}")
    load_card(out, limits)
    return out


def card_to_json(card: Card, spec: int = 3) -> bytes:
    """The card as a V3 (or V2) JSON file."""
    obj = card_to_v3(card) if spec == 3 else card_to_v2(card)
    return json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8")
