"""What every surface says about scenes (start, who is present, add, remove, auto, end), in Korean and English."""
from __future__ import annotations

SCENE_TEXTS: dict[str, dict[str, str]] = {
    "scene_started": {"ko": "🎬 장면을 시작했어요: {names}. 캐릭터 이름을 부르면 그 캐릭터가 먼저 대답해요.",
                      "en": "🎬 Scene started: {names}. Name a character and it answers first."},
    "scene_present": {"ko": "🎬 이 장면에 있는 캐릭터: {names} (자동 대화 {auto}턴)",
                      "en": "🎬 In this scene: {names} (auto turns: {auto})"},
    "scene_none": {"ko": "여기에는 진행 중인 장면이 없어요. {start} 으로 시작해 주세요.",
                   "en": "There is no scene here. Start one with {start}."},
    "scene_added": {"ko": "{name}(이)가 장면에 들어왔어요.", "en": "{name} joined the scene."},
    "scene_already": {"ko": "{name}(은)는 이미 장면에 있어요.", "en": "{name} is already in the scene."},
    "scene_removed": {"ko": "{name}(이)가 장면에서 나갔어요.", "en": "{name} left the scene."},
    "scene_auto": {"ko": "이제 사람이 말한 뒤 캐릭터들이 최대 {turns}턴까지 이어서 대화해요.",
                   "en": "Characters now go on for up to {turns} turns after each human message."},
    "scene_auto_off": {"ko": "자동 대화를 껐어요. 물어본 캐릭터만 대답해요.",
                       "en": "Auto turns are off: only the characters asked answer."},
    "scene_ended": {"ko": "🎬 장면을 끝냈어요. 대화는 저장되어 있어요.",
                    "en": "🎬 Scene ended. Its conversation is kept."},
    "scene_usage": {"ko": "사용법: {usage}", "en": "Usage: {usage}"},
    "scene_unknown": {"ko": "모르는 캐릭터: {names}", "en": "Unknown characters: {names}"},
    "scene_pick": {"ko": "장면에 넣을 캐릭터를 골라 주세요 (다시 누르면 빠져요):",
                   "en": "Pick the characters for the scene (press again to remove):"},
}
