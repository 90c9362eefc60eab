"""Streaming output clean-up: stop strings, a leading role tag, stray wrapping quotes and brackets."""
from __future__ import annotations

import re

from engine.settings import Cleaning

_ROLE_PREFIX = re.compile(r"^\s*(?:###\s*)?(?:AI|Assistant|assistant|Bot|어시스턴트|{name})\s*[:：]\s*")
_QUOTES = "\"'“”‘’「」『』"
_OPENERS = {")": "(", "]": "[", "}": "{", "」": "「", "』": "『"}
_TAGS = ("ai", "assistant", "### ai", "###ai", "bot", "어시스턴트")


class StreamCleaner:
    """Feed raw model text in pieces; get back the text to show, which only ever grows.

    Whatever is emitted is final, so the concatenation of emitted pieces equals
    the cleaned reply: the cleaner holds back text that a stop string, a role
    tag or a stray trailing quote/bracket could still change.
    """

    def __init__(self, rules: Cleaning, stop: tuple[str, ...] = (), name: str = ""):
        self.rules = rules
        self.stop = tuple(s for s in stop if s)
        self.prefix = re.compile(_ROLE_PREFIX.pattern.replace("{name}", re.escape(name) if name else "AI"))
        self.tags = tuple(t + ":" for t in (*_TAGS, *((name.lower(),) if name else ())))
        self.raw = ""
        self.started = False        # the head has been decided
        self.opened_quote = ""      # the quote we removed from the start, if any
        self.emitted = 0            # length of self.clean already emitted
        self.clean = ""             # cleaned text after the head, before hold-back
        self.stopped = False

    def _cut_stop(self, text: str) -> tuple[str, int]:
        """Text before the first stop string, and how many trailing chars might begin one."""
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            self.stopped = True
            return text[: min(hits)], 0
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return text, hold

    def _undecided(self, text: str) -> bool:
        """Could the start still become a role tag ("Assistant:") or is it only blank so far?"""
        t = text.lstrip().lower()
        return not t or any(tag.startswith(t) for tag in self.tags)

    def _head(self, text: str, final: bool) -> str | None:
        """Strip a role tag and an opening quote as soon as the start is known (held only while ambiguous)."""
        if not final and self.rules.strip_role_prefix and self._undecided(text):
            return None
        if self.rules.strip_role_prefix:
            text = self.prefix.sub("", text, count=1)
        text = text.lstrip()
        if not text and not final:
            return None             # only a tag so far: what follows may open with a quote
        if self.rules.strip_quotes and text and text[0] in _QUOTES:
            self.opened_quote, text = text[0], text[1:]
        return text

    def _tail_hold(self, text: str) -> int:
        """Trailing quotes/brackets are held until more text shows whether they belong."""
        n = 0
        while n < len(text) and (text[len(text) - 1 - n] in _QUOTES or text[len(text) - 1 - n] in _OPENERS
                                 or text[len(text) - 1 - n].isspace()):
            n += 1
        return n

    def _final_tail(self, text: str) -> str:
        text = text.rstrip()
        if self.rules.strip_quotes and self.opened_quote and text[-1:] in _QUOTES:
            text = text[:-1].rstrip()
        if self.rules.strip_brackets:
            while text[-1:] in _OPENERS and text.count(_OPENERS[text[-1]]) < text.count(text[-1]):
                text = text[:-1].rstrip()
        return text

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.raw += piece
        return self._advance(final=False)

    def finish(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        text, hold = self._cut_stop(self.raw)
        if self.stopped:
            final = True
        if not final:
            text = text[: len(text) - hold]
        if not self.started:
            head = self._head(text, final)
            if head is None:
                return ""
            self.started = True
            self.head_cut = len(text) - len(head)
        body = text[self.head_cut:]
        if final:
            body = self._final_tail(body)
        else:
            body = body[: len(body) - self._tail_hold(body)]
        if len(body) <= self.emitted:
            return ""
        out, self.emitted = body[self.emitted:], len(body)
        return out
