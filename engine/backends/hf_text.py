"""Incremental detokenizing for transformers tokenizers: new token ids in, new text pieces out."""
from __future__ import annotations

from engine.backends.base import Emit


class IncrementalDecoder:
    """Turns token ids into text pieces as they come; holds back a piece that ends inside a UTF-8 character.

    Each push decodes only the last few ids (from ``prefix`` on), not the whole
    reply, so a long reply costs O(n), not O(n²). Decoding a short window
    rather than single ids keeps byte-level and SentencePiece tokenizers right
    (leading spaces, characters split over several tokens).
    """

    def __init__(self, tokenizer, emit: Emit):
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.prefix = 0      # ids[prefix:read] decode to text already sent
        self.read = 0

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> None:
        self.ids.append(token_id)
        sent = self._text(self.ids[self.prefix:self.read])
        text = self._text(self.ids[self.prefix:])
        if text.endswith("\ufffd") or len(text) <= len(sent):
            return
        self.emit(text[len(sent):])
        self.prefix, self.read = self.read, len(self.ids)
