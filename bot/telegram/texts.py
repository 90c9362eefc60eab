"""What the Telegram bot says, in Korean and English."""
from __future__ import annotations

# (command, description) for setMyCommands, per language.
COMMANDS: dict[str, list[tuple[str, str]]] = {
    "ko": [("start", "봇 소개"), ("help", "도움말"), ("chat", "일반 대화: /chat 메시지"),
           ("characters", "캐릭터 목록"), ("character", "캐릭터 선택: /character 이름"),
           ("scene", "장면: /scene 이름 이름…"), ("scene_add", "장면에 캐릭터 추가"),
           ("scene_remove", "장면에서 캐릭터 빼기"), ("scene_end", "장면 끝내기"),
           ("reset", "새 대화 시작"), ("stop", "답변 멈추기"), ("lang", "언어 설정: /lang ko|en")],
    "en": [("start", "What this bot does"), ("help", "Help"), ("chat", "Plain chat: /chat message"),
           ("characters", "List the characters"), ("character", "Pick a character: /character name"),
           ("scene", "A scene: /scene name name…"), ("scene_add", "Bring a character into the scene"),
           ("scene_remove", "Send a character out of the scene"), ("scene_end", "End the scene"),
           ("reset", "Start a new conversation"), ("stop", "Stop the reply"), ("lang", "Language: /lang ko|en")],
}

TEXTS: dict[str, dict[str, str]] = {
    "start": {
        "ko": "안녕하세요, {name}님! 저는 대화와 캐릭터 롤플레이를 하는 봇이에요.\n"
              "메시지를 보내면 대답하고, /characters 로 캐릭터를 고를 수 있어요. /help 로 명령어를 볼 수 있어요.",
        "en": "Hello, {name}! I'm a chat and character roleplay bot.\n"
              "Send me a message and I'll answer; pick a character with /characters. See /help for the commands.",
    },
    "help": {
        "ko": "명령어:\n/chat 메시지 — 일반 대화\n/characters — 캐릭터 목록\n/character 이름 — 캐릭터 선택 "
              "(/character off 로 해제)\n/scene 이름 이름… — 여러 캐릭터의 장면 (/scene_add, /scene_remove, "
              "/scene_auto N, /scene_end)\n/reset — 새 대화 시작\n/stop — 답변 멈추기\n/lang ko|en — 언어 설정\n"
              "그룹에서는 저를 멘션하거나 제 메시지에 답장하면 대답해요.",
        "en": "Commands:\n/chat message — plain chat\n/characters — list the characters\n/character name — "
              "pick a character (/character off to leave it)\n/scene name name… — a scene with several characters "
              "(/scene_add, /scene_remove, /scene_auto N, /scene_end)\n/reset — start a new conversation\n/stop — stop the "
              "reply\n/lang ko|en — language\nIn groups, mention me or reply to my message.",
    },
    "chat_usage": {"ko": "사용법: /chat 메시지", "en": "Usage: /chat message"},
    "no_characters": {"ko": "아직 캐릭터가 없어요.", "en": "There are no characters yet."},
    "pick_character": {"ko": "캐릭터를 골라 주세요:", "en": "Pick a character:"},
    "character_usage": {"ko": "사용법: /character 이름 (지금: {current})",
                        "en": "Usage: /character name (now: {current})"},
    "character_none": {"ko": "없음", "en": "none"},
    "character_off": {"ko": "캐릭터 없이 일반 대화로 돌아왔어요.", "en": "Back to plain chat, no character."},
    "unknown_character": {"ko": "'{name}' 캐릭터가 없어요. /characters 로 목록을 볼 수 있어요.",
                          "en": "There is no character '{name}'. See /characters for the list."},
    "character_not_here": {"ko": "'{name}' 캐릭터는 이 대화방에서 쓸 수 없어요.",
                           "en": "The character '{name}' is not available in this chat."},
    "reset": {"ko": "새 대화를 시작했어요.", "en": "Started a new conversation."},
    "stopped": {"ko": "답변을 멈췄어요.", "en": "Stopped the reply."},
    "nothing_to_stop": {"ko": "멈출 답변이 없어요.", "en": "There is no reply to stop."},
    "lang_set": {"ko": "이제 한국어로 말할게요.", "en": "I'll speak English now."},
    "lang_usage": {"ko": "사용법: /lang ko 또는 /lang en", "en": "Usage: /lang ko or /lang en"},
    "text_only": {"ko": "지금은 글 메시지만 읽을 수 있어요.", "en": "I can only read text messages for now."},
    "not_allowed": {"ko": "죄송해요, 이 봇을 쓸 권한이 없어요.", "en": "Sorry, you are not allowed to use this bot."},
    "chat_not_allowed": {"ko": "죄송해요, 이 대화방에서는 쓸 수 없어요.", "en": "Sorry, I'm not enabled in this chat."},
    "admin_only": {"ko": "관리자만 쓸 수 있는 명령어예요.", "en": "Only admins may use this command."},
    "import_usage": {"ko": "캐릭터 카드(PNG 또는 JSON) 파일을 보내면서 설명에 /import 라고 적어 주세요.",
                     "en": "Send a character card (PNG or JSON) as a file with /import as its caption."},
    "import_too_large": {"ko": "파일이 너무 커요 (최대 {limit}바이트).",
                         "en": "The file is too large (at most {limit} bytes)."},
    "import_bad": {"ko": "카드를 읽을 수 없어요 ({code}): {message}",
                   "en": "The card cannot be read ({code}): {message}"},
    "import_ok": {"ko": "'{name}' 캐릭터를 추가했어요.", "en": "Added the character '{name}'."},
    "internal": {"ko": "알 수 없는 오류가 발생했어요.", "en": "Something went wrong."},
}
