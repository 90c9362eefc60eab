"""PNG chunk level: find the card text chunks (tEXt/zTXt/iTXt) in a checked chunk walk, and splice new ones in."""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from engine.cards.errors import CardError
from engine.settings import CardLimits

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("ccv3", "chara")        # read in this order: V3 first (spec), then V2
TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
MAX_CHUNKS = 100_000
_HEAD = struct.Struct(">I4s")


@dataclass
class PngCard:
    """What a card PNG holds for us: the card chunks' text by keyword, the image size, the image without them."""

    texts: dict[str, str]
    width: int
    height: int
    image: bytes


def is_png(data: bytes) -> bool:
    return data[:8] == SIGNATURE


def read_png(data: bytes, limits: CardLimits) -> PngCard:
    """Walk every chunk (lengths and CRCs checked) up to IEND; Pillow is not used so nothing is decoded."""
    if not is_png(data):
        raise CardError("not_png", "the file is not a PNG image")
    view = memoryview(data)
    pos, n, width, height = 8, 0, 0, 0
    texts: dict[str, str] = {}
    kept: list[memoryview] = [view[:8]]
    while True:
        if pos + 12 > len(data):
            raise CardError("bad_png", "the PNG is truncated (no IEND chunk)")
        length, ctype = _HEAD.unpack_from(data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise CardError("bad_png", f"the PNG is truncated (chunk at byte {pos} runs past the end)")
        if not ctype.isalpha():
            raise CardError("bad_png", f"the PNG has a malformed chunk type at byte {pos}")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4:end - 4]) != crc:
            raise CardError("bad_png", f"the PNG's {ctype.decode()} chunk at byte {pos} is corrupt (CRC mismatch)")
        body = view[pos + 8:end - 4]
        if n == 0:
            if ctype != b"IHDR" or length != 13:
                raise CardError("bad_png", "the PNG does not start with an IHDR chunk")
            width, height = struct.unpack_from(">II", body)
            if not width or not height:
                raise CardError("bad_png", "the PNG has a zero width or height")
            if width * height > limits.max_image_pixels:
                raise CardError("image_too_large", f"the image is {width}x{height} pixels, more than the limit "
                                f"of {limits.max_image_pixels} pixels")
        n += 1
        if n > MAX_CHUNKS:
            raise CardError("bad_png", f"the PNG has more than {MAX_CHUNKS} chunks")
        keyword = _keyword(body) if ctype in TEXT_TYPES else None
        if keyword in CARD_KEYWORDS:
            if keyword not in texts:        # the first chunk of a keyword wins, as in other readers
                texts[keyword] = _text_value(ctype, bytes(body), limits)
        else:
            kept.append(view[pos:end])
        pos = end
        if ctype == b"IEND":
            break
    return PngCard(texts=texts, width=width, height=height, image=b"".join(kept))


def _keyword(body: memoryview) -> str | None:
    head = bytes(body[:80])
    sep = head.find(b"\0")
    return head[:sep].decode("latin-1").lower() if sep > 0 else None


def _text_value(ctype: bytes, body: bytes, limits: CardLimits) -> str:
    """The text of a tEXt/zTXt/iTXt chunk (its keyword already matched)."""
    sep = body.index(b"\0")
    rest = body[sep + 1:]
    if ctype == b"tEXt":
        return rest.decode("latin-1")
    if ctype == b"zTXt":
        if rest[:1] != b"\0":
            raise CardError("bad_png", "a zTXt card chunk uses an unknown compression method")
        return _inflate(rest[1:], limits).decode("latin-1")
    # iTXt: compression flag, method, language tag\0, translated keyword\0, UTF-8 text
    if len(rest) < 2:
        raise CardError("bad_png", "an iTXt card chunk is truncated")
    flag, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        raise CardError("bad_png", "an iTXt card chunk is malformed")
    text = parts[2]
    if flag:
        if method != 0:
            raise CardError("bad_png", "an iTXt card chunk uses an unknown compression method")
        text = _inflate(text, limits)
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise CardError("bad_png", "an iTXt card chunk is not UTF-8 text") from None


def _inflate(data: bytes, limits: CardLimits) -> bytes:
    """Decompress at most the size limit, so a zlib bomb costs nothing."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limits.max_file_bytes + 1)
    except zlib.error as e:
        raise CardError("bad_png", f"a compressed card chunk is corrupt ({e})") from None
    if len(out) > limits.max_file_bytes or inflater.unconsumed_tail:
        raise CardError("too_large", f"a compressed card chunk inflates past {limits.max_file_bytes} bytes")
    return out


def text_chunk(keyword: str, text: str) -> bytes:
    """One tEXt chunk (text must be Latin-1, e.g. base64)."""
    body = keyword.encode("latin-1") + b"\0" + text.encode("latin-1")
    ctype = b"tEXt"
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def insert_before_iend(png_without_cards: bytes, chunks: list[bytes]) -> bytes:
    """The PNG with ``chunks`` placed right before its IEND chunk (always its last 12 bytes here)."""
    return png_without_cards[:-12] + b"".join(chunks) + png_without_cards[-12:]
