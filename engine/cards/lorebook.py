"""Lorebook (character_book) entries: which are triggered by the recent chat, in what order, within what budget."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import regex     # like re, plus a timeout: a card's regex keys must not be able to stall the bot

DEFAULT_SCAN_DEPTH = 2          # messages scanned when a book names none (SillyTavern's default)
MAX_SCAN_DEPTH = 100
MAX_SCAN_CHARS = 20_000         # of the newest text; bounds the cost of hostile regex keys
MAX_PATTERN_CHARS = 300
REGEX_TIME_S = 0.2              # all regex keys of one scan together; keys left after it do not match
_JS_REGEX = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)


@dataclass(frozen=True)
class LoreEntry:
    index: int
    content: str
    keys: tuple[str, ...] = ()
    secondary_keys: tuple[str, ...] = ()
    enabled: bool = True
    constant: bool = False
    selective: bool = False
    case_sensitive: bool = False
    use_regex: bool = False
    insertion_order: float = 100
    priority: float | None = None
    position: str = "before_char"       # before_char | after_char

    @property
    def importance(self) -> tuple[float, int]:
        """Lower goes first when over budget: the spec's ``priority``, else the insertion order."""
        return (self.priority if self.priority is not None else self.insertion_order, -self.index)


@dataclass(frozen=True)
class Lorebook:
    entries: tuple[LoreEntry, ...]
    scan_depth: int = DEFAULT_SCAN_DEPTH
    token_budget: int | None = None

    @classmethod
    def from_dict(cls, book: dict[str, Any] | None) -> "Lorebook":
        """From a card's (already checked) ``character_book``."""
        if not book:
            return cls(entries=())
        depth = book.get("scan_depth")
        budget = book.get("token_budget")
        return cls(
            entries=tuple(_entry(i, e) for i, e in enumerate(book.get("entries") or ())),
            scan_depth=int(max(1, min(depth, MAX_SCAN_DEPTH))) if depth else DEFAULT_SCAN_DEPTH,
            token_budget=int(min(budget, 1 << 31)) if budget and budget > 0 else None,
        )

    def triggered(self, messages: Iterable[str]) -> list[LoreEntry]:
        """Enabled entries that are constant or whose keys appear in the last ``scan_depth`` messages,
        in insertion order."""
        recent = list(messages)[-self.scan_depth:]
        text = "\n".join(recent)[-MAX_SCAN_CHARS:]
        scan = _Scan(text, text.casefold(), time.monotonic() + REGEX_TIME_S)
        hits = [e for e in self.entries if e.enabled and e.content.strip() and (e.constant or _matches(e, scan))]
        return sorted(hits, key=lambda e: (e.insertion_order, e.index))


def _entry(i: int, e: dict[str, Any]) -> LoreEntry:
    position = e.get("position")
    return LoreEntry(
        index=i, content=e.get("content") or "",
        keys=tuple(e.get("keys") or ()), secondary_keys=tuple(e.get("secondary_keys") or ()),
        enabled=e.get("enabled") is not False, constant=bool(e.get("constant")),
        selective=bool(e.get("selective")), case_sensitive=bool(e.get("case_sensitive")),
        use_regex=bool(e.get("use_regex")),
        insertion_order=e.get("insertion_order") or 0, priority=e.get("priority"),
        position="after_char" if position == "after_char" else "before_char",
    )


@dataclass(frozen=True)
class _Scan:
    text: str
    folded: str
    deadline: float


def _matches(e: LoreEntry, scan: _Scan) -> bool:
    if not _any_key(e, e.keys, scan):
        return False
    if e.selective and e.secondary_keys:
        return _any_key(e, e.secondary_keys, scan)
    return True


def _any_key(e: LoreEntry, keys: tuple[str, ...], scan: _Scan) -> bool:
    for key in keys:
        if not key.strip():
            continue
        if e.use_regex:
            if _regex_search(key, e.case_sensitive, scan):
                return True
        elif (key in scan.text) if e.case_sensitive else (key.casefold() in scan.folded):
            return True
    return False


def _regex_search(key: str, case_sensitive: bool, scan: _Scan) -> bool:
    """A key as a regex; ``/pattern/flags`` (the JavaScript form other tools write) is understood.

    A broken pattern, or one still running at the scan's deadline, does not match.
    """
    left = scan.deadline - time.monotonic()
    if len(key) > MAX_PATTERN_CHARS or left <= 0:
        return False
    flags = 0 if case_sensitive else regex.IGNORECASE
    m = _JS_REGEX.match(key)
    if m:
        key = m.group(1)
        flags |= regex.IGNORECASE if "i" in m.group(2) else 0
        flags |= regex.MULTILINE if "m" in m.group(2) else 0
        flags |= regex.DOTALL if "s" in m.group(2) else 0
    try:
        return regex.search(key, scan.text, flags, timeout=left) is not None
    except (regex.error, TimeoutError, RecursionError, OverflowError, ValueError):
        return False


def within_budget(entries: list[LoreEntry], count: Callable[[str], int], budget: int | None) -> list[LoreEntry]:
    """The most important entries whose content fits ``budget`` tokens together, in their original order."""
    if budget is None:
        return entries
    chosen: set[int] = set()
    used = 0
    for e in sorted(entries, key=lambda e: e.importance, reverse=True):
        cost = count(e.content)
        if used + cost <= budget:
            chosen.add(e.index)
            used += cost
    return [e for e in entries if e.index in chosen]
