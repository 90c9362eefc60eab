"""The Discord surface's own texts (command descriptions and answers), in Korean and English."""
from __future__ import annotations

# Slash-command and option descriptions: the English text is what Discord shows by default;
# the Korean one is sent as the ko localization (see translator.py).
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "chat": {"en": "Talk with the assistant in this channel", "ko": "이 채널에서 어시스턴트와 대화해요"},
    "chat.message": {"en": "What you want to say", "ko": "하고 싶은 말"},
    "roleplay": {"en": "Talk with a character", "ko": "캐릭터와 대화해요"},
    "roleplay.character": {"en": "The character", "ko": "캐릭터"},
    "roleplay.message": {"en": "What you say to the character", "ko": "캐릭터에게 할 말"},
    "character": {"en": "Characters: list, info, use, import", "ko": "캐릭터: 목록, 정보, 선택, 가져오기"},
    "character.list": {"en": "List the characters", "ko": "캐릭터 목록을 보여줘요"},
    "character.info": {"en": "Show a character's card", "ko": "캐릭터 카드를 보여줘요"},
    "character.use": {"en": "Talk with this character here when you mention me",
                      "ko": "여기서 저를 멘션하면 이 캐릭터가 대답해요"},
    "character.import": {"en": "Add a character card (PNG or JSON; admins only)",
                         "ko": "캐릭터 카드(PNG 또는 JSON)를 추가해요 (관리자 전용)"},
    "character.name": {"en": "The character's name", "ko": "캐릭터 이름"},
    "character.card": {"en": "A character card file (PNG or JSON)", "ko": "캐릭터 카드 파일 (PNG 또는 JSON)"},
    "scene": {"en": "Scenes: several characters talking here", "ko": "장면: 여러 캐릭터가 여기서 함께 대화해요"},
    "scene.start": {"en": "Start a scene with these characters", "ko": "이 캐릭터들로 장면을 시작해요"},
    "scene.characters": {"en": "Character names, separated by commas", "ko": "캐릭터 이름 (쉼표로 구분)"},
    "scene.add": {"en": "Bring a character into the scene", "ko": "캐릭터를 장면에 불러와요"},
    "scene.remove": {"en": "Send a character out of the scene", "ko": "캐릭터를 장면에서 내보내요"},
    "scene.auto": {"en": "Let characters answer each other for up to N turns", "ko": "캐릭터끼리 최대 N턴까지 이어서 대화해요"},
    "scene.turns": {"en": "Turns after each human message (0: off)", "ko": "사람이 말한 뒤 이어질 턴 수 (0: 끄기)"},
    "scene.end": {"en": "End the scene here", "ko": "여기서 장면을 끝내요"},
    "scene.show": {"en": "Who is in the scene here", "ko": "이 장면에 누가 있는지 보여줘요"},
    "reset": {"en": "Start a new conversation here", "ko": "여기서 새 대화를 시작해요"},
    "stop": {"en": "Stop the reply I am writing for you", "ko": "쓰고 있는 답변을 멈춰요"},
    "help": {"en": "How to use this bot", "ko": "사용법을 보여줘요"},
    "lang": {"en": "Choose the language I answer you in", "ko": "답변 언어를 골라요"},
    "lang.code": {"en": "Language", "ko": "언어"},
    "lang.ko": {"en": "Korean (한국어)", "ko": "한국어"},
    "lang.en": {"en": "English", "ko": "영어 (English)"},
}

TEXTS: dict[str, dict[str, str]] = {
    "denied": {"ko": "이 봇을 여기서 사용할 권한이 없어요.", "en": "You are not allowed to use this bot here."},
    "admins_only": {"ko": "관리자만 할 수 있어요.", "en": "Only admins can do that."},
    "dms_off": {"ko": "DM에서는 대화할 수 없어요. 서버 채널에서 불러 주세요.",
                "en": "I don't talk in DMs. Please mention me in a server channel."},
    "empty_message": {"ko": "메시지가 비어 있어요.", "en": "Your message is empty."},
    "reset_done": {"ko": "새 대화를 시작했어요. 이전 대화는 저장되어 있어요.",
                   "en": "Started a new conversation. The previous one is kept."},
    "stopped": {"ko": "답변 {count}개를 멈췄어요.", "en": "Stopped {count} reply(ies)."},
    "nothing_to_stop": {"ko": "멈출 답변이 없어요.", "en": "There is no reply in progress."},
    "lang_set": {"ko": "이제 한국어로 답할게요.", "en": "I will answer you in English now."},
    "no_characters": {"ko": "등록된 캐릭터가 없어요.", "en": "No characters are configured."},
    "characters": {"ko": "캐릭터 ({count})", "en": "Characters ({count})"},
    "unknown_character": {"ko": "'{name}' 캐릭터가 없어요. /character list 로 확인해 주세요.",
                          "en": "There is no character named '{name}'. See /character list."},
    "character_not_here": {"ko": "'{name}' 캐릭터는 이 채널에서 쓸 수 없어요.",
                           "en": "The character '{name}' is not available in this channel."},
    "character_used": {"ko": "이제 여기서 저를 멘션하면 {name}(이)가 대답해요.",
                       "en": "{name} will answer you here when you mention me."},
    "first_message": {"ko": "첫 메시지", "en": "First message"},
    "imported": {"ko": "'{name}' 캐릭터를 추가했어요.", "en": "Added the character '{name}'."},
    "bad_card": {"ko": "카드 파일이 아니에요: {detail}", "en": "That is not a character card: {detail}"},
    "attachment_too_large": {"ko": "파일이 너무 커요 (최대 {limit} 바이트).",
                             "en": "The file is too large (at most {limit} bytes)."},
    "attachment_unreadable": {"ko": "첨부 파일을 받을 수 없어요. 다시 시도해 주세요.",
                              "en": "I could not download the attachment. Please try again."},
    "continued": {"ko": "↪ 아래 메시지에서 이어져요.", "en": "↪ Continued in the message below."},
    "help": {
        "ko": "**사용법**\n"
              "`/chat message` 어시스턴트와 대화\n"
              "`/roleplay character message` 캐릭터와 대화\n"
              "`/character list|info|use|import` 캐릭터 목록, 카드 보기, 선택, 가져오기(관리자)\n"
              "`/scene start|add|remove|auto|end|show` 여러 캐릭터가 함께하는 장면\n"
              "`/reset` 새 대화 · `/stop` 답변 멈추기 · `/lang` 언어 선택\n"
              "저를 멘션하거나 DM을 보내도 대화할 수 있어요. 스레드는 따로 대화를 기억하고, "
              "제 답변에 답장하면 그 대화가 이어져요.",
        "en": "**How to use me**\n"
              "`/chat message` talk with the assistant\n"
              "`/roleplay character message` talk with a character\n"
              "`/character list|info|use|import` list, show, pick, import (admins) characters\n"
              "`/scene start|add|remove|auto|end|show` a scene with several characters\n"
              "`/reset` new conversation · `/stop` stop my reply · `/lang` language\n"
              "You can also mention me or DM me. A thread keeps its own conversation, and replying "
              "to one of my messages continues that conversation.",
    },
}
