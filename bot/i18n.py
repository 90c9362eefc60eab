"""User-facing texts from one catalog (bot/locales/<lang>.json, one file a language), and a user's language.

Each file has the same sections: ``errors`` (engine error codes, every
surface), ``memory`` (the summary and pinned facts, every surface), ``discord``
and ``discord.commands`` (slash-command descriptions), ``telegram`` and
``telegram.menu`` (the command menu), ``scenes`` (every surface). A third language is
one more file with the same keys; a key missing there falls back to English.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from engine.cards import CardError
from engine.errors import EngineError

LOCALES = Path(__file__).resolve().parent / "locales"
FALLBACK = "en"


@functools.cache
def catalog() -> Mapping[str, Mapping[str, Mapping[str, str]]]:
    """{lang: {section: {key: text}}}, read once."""
    return MappingProxyType({p.stem: json.loads(p.read_text(encoding="utf-8"))
                             for p in sorted(LOCALES.glob("*.json"))})


def languages() -> tuple[str, ...]:
    return tuple(catalog())


@functools.cache
def section(name: str) -> Mapping[str, Mapping[str, str]]:
    """One section as {key: {lang: text}}, the shape ``text`` takes."""
    keys = catalog()[FALLBACK][name]
    return MappingProxyType({k: MappingProxyType({lang: texts[name][k] for lang, texts in catalog().items()
                                                  if k in texts.get(name, {})}) for k in keys})


def pick_lang(*candidates: str | None, default: str = "ko") -> str:
    """The first candidate that is a supported language ("ko-KR" counts as "ko")."""
    for c in candidates:
        if c:
            short = c.split("-")[0].split("_")[0].lower()
            if short in catalog():
                return short
    return default


def text(entries: Mapping[str, Mapping[str, str]], key: str, lang: str, **kw) -> str:
    entry = entries[key]
    template = entry.get(lang) or entry[FALLBACK]
    return template.format_map(_Blank(kw)) if kw else template


class _Blank(dict):
    """Formatting values; a placeholder with no value reads as '?' rather than failing."""

    def __missing__(self, key: str) -> str:
        return "?"


def describe(error: Exception, lang: str) -> str:
    """A short message for the user about an engine error."""
    errors = section("errors")
    if isinstance(error, CardError):
        return text(errors, "bad_card", lang, message=error.message)
    code = error.code if isinstance(error, EngineError) else "internal"
    info = error.info if isinstance(error, EngineError) else {}
    return text(errors, code if code in errors else "internal", lang, **info)


def memory_text(memory: dict, lang: str, limit: int = 4000) -> str:
    """The summary and the numbered pinned facts (``EngineAPI.memory_of``) as one message of at most ``limit`` chars."""
    texts = section("memory")
    summary, pins = memory["summary"], memory["pins"]
    lines = [f"{text(texts, 'summary', lang)}:"]
    if summary and summary["text"].strip():
        lines.append(summary["text"].strip())
        if (summary.get("covers") or {}).get("messages"):
            lines.append(f"({text(texts, 'covers', lang, messages=summary['covers']['messages'])})")
    else:
        lines.append(text(texts, "no_summary", lang))
    lines += ["", f"{text(texts, 'pins', lang)}:"]
    lines += [f"{p['n']}. {p['text']}" for p in pins] or [text(texts, "no_pins", lang)]
    out = "\n".join(lines)
    return out if len(out) <= limit else out[: limit - 1] + "…"
