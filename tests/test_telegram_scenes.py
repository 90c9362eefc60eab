"""Scenes on Telegram: the real python-telegram-bot client against tests/fake_telegram.py."""
from __future__ import annotations

from bot.scene_texts import SCENE_TEXTS
from bot.telegram.scenes import button_data
from engine.cards.image import placeholder
from tests.fake_telegram import FakeTelegram
from tests.test_scenes import scripted
from tests.test_telegram import Harness

LINE = "Steam rises from the tteokbokki pots."


def bold_name(call, name: str) -> bool:
    return call.params.get("entities") == [{"type": "bold", "offset": 0, "length": len(name)}]


async def test_a_group_scene_shows_each_reply_signed_with_its_characters_name(engine):
    eng, backend = scripted(engine, LINE)
    fake = await FakeTelegram(bot_id=990001).start()
    tg = await Harness(eng, fake).start()
    group = -100900
    try:
        started = fake.send_text(group, "/scene Wren Mina", user_id=901)
        await tg.done(started)
        photos = fake.calls_of("sendPhoto", group)
        assert [p.params["caption"] for p in photos] == ["Wren", "Mina"]       # each card's photo once
        assert photos[1].params["photo"] == (eng.characters().get("Mina").image or placeholder("Mina"))
        sent = fake.calls_of("sendMessage", group)
        assert sent[0].text == SCENE_TEXTS["scene_started"]["en"].format(names="Wren, Mina")
        assert sent[1].text == "Wren: " + eng.characters().get("Wren").group_only_greetings[0]
        assert bold_name(sent[1], "Wren") and bold_name(sent[2], "Mina")

        # in a scene chat every message goes to the scene: no mention needed; the named character answers
        asked = fake.send_text(group, "Mina, where do we eat tonight?", user_id=901)
        await tg.done(asked)
        last = fake.calls_of("sendMessage", group)[-1]
        final = fake.texts[(group, max(m for (c, m) in fake.texts if c == group))]
        assert last.text.startswith("Mina: ") and bold_name(last, "Mina")
        assert final == f"Mina: {LINE}"
        assert "[Write the next reply only as Mina.]" in backend.prompts[-1]
        assert "- Wren: " in backend.prompts[-1]

        # the picker: /scene alone lists who is here and offers buttons; a button brings 하늘 in
        shown = fake.send_text(group, "/scene", user_id=901)
        await tg.done(shown)
        picker = fake.calls_of("sendMessage", group)[-1]
        buttons = [row[0]["text"] for row in picker.params["reply_markup"]["inline_keyboard"]]
        assert "✅ Wren" in buttons and "✅ Mina" in buttons and "하늘" in buttons
        pressed = fake.press_button(group, button_data("하늘"), user_id=901)
        await tg.done(pressed)
        assert (await eng.scenes.get(f"telegram:chat:{group}")).characters == ["Wren", "Mina", "하늘"]
        assert fake.calls_of("sendPhoto", group)[-1].params["caption"] == "하늘"

        ended = fake.send_text(group, "/scene_end", user_id=901)
        await tg.done(ended)
        assert fake.calls_of("sendMessage", group)[-1].text == SCENE_TEXTS["scene_ended"]["en"]
        assert await eng.scenes.get(f"telegram:chat:{group}") is None
        unknown = fake.send_text(group, "/scene Wren Zorro", user_id=901)
        await tg.done(unknown)
        assert fake.calls_of("sendMessage", group)[-1].text == SCENE_TEXTS["scene_unknown"]["en"].format(
            names="Zorro")
    finally:
        await tg.stop()
        await fake.stop()
