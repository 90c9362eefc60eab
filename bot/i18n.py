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
    "no_scene": {"ko": "여기에는 진행 중인 장면이 없어요. /scene 으로 시작해 주세요.",
                 "en": "There is no scene here. Start one with /scene."},
    "scene_full": {"ko": "한 장면에는 캐릭터가 최대 {limit}명까지 있을 수 있어요.",
                   "en": "A scene can have at most {limit} characters."},
    "character_not_here": {"ko": "{name} 캐릭터는 이 채널에서 쓸 수 없어요.",
                           "en": "{name} is not available in this channel."},
    "internal": {"ko": "알 수 없는 오류가 발생했어요.", "en": "Something went wrong."},
}


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
