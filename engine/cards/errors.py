"""The one error a card can raise: a stable code for surfaces plus a readable message for people and logs."""
from __future__ import annotations

from engine.errors import EngineError

# Stable codes; surfaces translate them (ko/en). The message says what exactly is wrong.
CODES = frozenset({
    "not_png",          # neither a PNG nor JSON
    "bad_png",          # a PNG whose chunk structure is broken (truncated, bad CRC, no IEND)
    "no_card_chunk",    # a valid PNG without a chara/ccv3 chunk
    "bad_base64",
    "bad_json",
    "bad_card",         # JSON that is not a card (wrong types, unknown layout)
    "missing_name",
    "too_large",        # file, chunk or JSON structure over the limits
    "field_too_long",
    "image_too_large",  # more pixels than allowed
    "bad_image",        # an image Pillow cannot read (when writing a card)
    "io_error",         # the file cannot be read
})


class CardError(EngineError):
    """A card that cannot be read, written or accepted; ``code`` is one of ``CODES``."""


    def __init__(self, code: str, message: str, *, file: str | None = None):
        if code not in CODES:
            raise ValueError(f"unknown card error code {code!r}")
        super().__init__(message, file=file)
        self.code = code
        self.message = message
        self.file = file

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.code}: {self.message}"

    def with_file(self, file: str) -> "CardError":
        """The same error, naming the file it came from (for log lines)."""
        return CardError(self.code, self.message, file=file)
