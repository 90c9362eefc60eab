"""User-facing texts in Korean and English, and the choice of language for a user."""
from __future__ import annotations

from typing import Mapping

from engine.cards import CardError
from engine.errors import EngineError

LANGS = ("ko", "en")

# Engine error codes, shown the same way on every surface.
ERRORS: dict[str, dict[str, str]] = {
    "user_busy": {"ko": "이전 답변을 아직 쓰고 있어요. 끝나면 다시 보내 주세요 (/stop 으로 멈출 수 있어요).",
                  "en": "I'm still writing your previous reply. Send it again when it's done (or /stop it)."},
    "busy": {"ko": "지금 요청이 너무 많아요. 잠시 후 다시 시도해 주세요.",
             "en": "I'm busy with too many requests right now. Please try again in a moment."},
    "timeout": {"ko": "답변 시간이 초과되었어요. 다시 시도해 주세요.",
                "en": "The reply took too long and was stopped. Please try again."},
    "cancelled": {"ko": "답변을 멈췄어요.", "en": "Reply stopped."},
    "model_error": {"ko": "모델 오류가 발생했어요. 잠시 후 다시 시도해 주세요.",
                    "en": "The model ran into an error. Please try again shortly."},
    "db_unavailable": {"ko": "데이터베이스에 연결할 수 없어요. 잠시 후 다시 시도해 주세요. 보내신 메시지는 답변하지 못했어요.",
                       "en": "The database is unavailable right now. Please try again shortly; your message was not answered."},
    "unknown_character": {"ko": "그런 캐릭터가 없어요.", "en": "There is no such character."},
    "input_too_long": {"ko": "메시지가 너무 길어요 (최대 {limit}자).",
                       "en": "Your message is too long (at most {limit} characters)."},
    "empty_reply": {"ko": "모델이 빈 답변을 냈어요. 다시 시도해 주세요.",
                    "en": "The model returned an empty reply. Please try again."},
    "rate_limited": {"ko": "요청이 너무 잦아요. {seconds}초 후에 다시 시도해 주세요.",
                     "en": "Too many requests. Please try again in {seconds} seconds."},
    "bad_card": {"ko": "캐릭터 카드로 읽을 수 없는 파일이에요: {message}",
                 "en": "That file is not a usable character card: {message}"},
    "memory_off": {"ko": "이 봇은 장기 기억을 쓰지 않도록 설정되어 있어요.",
                   "en": "Long-term memory is turned off for this bot."},
    "pin_empty": {"ko": "고정할 내용을 적어 주세요.", "en": "Tell me what to pin."},
    "pin_too_long": {"ko": "고정할 내용이 너무 길어요 (최대 {limit}자).",
                     "en": "That fact is too long to pin (at most {limit} characters)."},
    "pins_full": {"ko": "고정한 내용이 이미 꽉 찼어요. 먼저 하나를 고정 해제해 주세요.",
                  "en": "There is no room for another pinned fact. Unpin one first."},
    "unknown_pin": {"ko": "{n}번 고정 항목이 없어요 (지금 {count}개).",
                    "en": "There is no pinned fact number {n} (there are {count})."},
    "internal": {"ko": "알 수 없는 오류가 발생했어요.", "en": "Something went wrong."},
}

# The memory (summary and pinned facts), shown the same way on every surface.
MEMORY: dict[str, dict[str, str]] = {
    "title": {"ko": "기억", "en": "Memory"},
    "summary": {"ko": "요약", "en": "Summary"},
    "no_summary": {"ko": "아직 요약이 없어요. 대화가 길어지면 오래된 내용을 요약해 둘게요.",
                   "en": "No summary yet. When the conversation gets long, I summarise what scrolls out."},
    "covers": {"ko": "메시지 {messages}개를 요약했어요.", "en": "Covers {messages} earlier message(s)."},
    "pins": {"ko": "고정한 내용", "en": "Pinned facts"},
    "no_pins": {"ko": "고정한 내용이 없어요.", "en": "Nothing is pinned."},
    "pinned": {"ko": "{n}번으로 고정했어요: {text}", "en": "Pinned as #{n}: {text}"},
    "unpinned": {"ko": "고정을 해제했어요: {text}", "en": "Unpinned: {text}"},
    "forgot": {"ko": "요약과 고정한 내용을 지웠어요. 메시지 기록은 그대로 저장되어 있어요.",
               "en": "I cleared the summary and the pinned facts. The messages themselves are still stored."},
    "edited": {"ko": "요약을 고쳤어요.", "en": "Summary updated."},
    "edit_title": {"ko": "대화 요약 고치기", "en": "Edit the conversation summary"},
}


def memory_text(memory: dict, lang: str, limit: int = 4000) -> str:
    """The summary and the numbered pinned facts as one plain message of at most ``limit`` characters."""
    summary = memory["summary"]
    pins = memory["pins"]
    lines = [f"{text(MEMORY, 'summary', lang)}:"]
    if summary and summary["text"].strip():
        lines.append(summary["text"].strip())
        if (summary.get("covers") or {}).get("messages"):
            lines.append(f"({text(MEMORY, 'covers', lang, messages=summary['covers']['messages'])})")
    else:
        lines.append(text(MEMORY, "no_summary", lang))
    lines += ["", f"{text(MEMORY, 'pins', lang)}:"]
    lines += [f"{p['n']}. {p['text']}" for p in pins] or [text(MEMORY, "no_pins", lang)]
    out = "\n".join(lines)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def pick_lang(*candidates: str | None, default: str = "ko") -> str:
    """The first candidate that is a supported language ("ko-KR" counts as "ko")."""
    for c in candidates:
        if c:
            short = c.split("-")[0].split("_")[0].lower()
            if short in LANGS:
                return short
    return default


def text(catalog: Mapping[str, Mapping[str, str]], key: str, lang: str, **kw) -> str:
    entry = catalog[key]
    template = entry.get(lang) or entry["en"]
    return template.format_map(_Blank(kw)) if kw else template


class _Blank(dict):
    """Formatting values; a placeholder with no value reads as '?' rather than failing."""

    def __missing__(self, key: str) -> str:
        return "?"


def describe(error: Exception, lang: str) -> str:
    """A short message for the user about an engine error."""
    if isinstance(error, CardError):
        return text(ERRORS, "bad_card", lang, message=error.message)
    code = error.code if isinstance(error, EngineError) else "internal"
    info = error.info if isinstance(error, EngineError) else {}
    return text(ERRORS, code if code in ERRORS else "internal", lang, **info)
