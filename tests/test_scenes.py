"""Scenes in the engine: who speaks next, the per-turn prompt, auto turns, interruption, the store, /reset."""
from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

import pytest

from engine.cards import Card, CharacterRegistry
from engine.engine import Engine
from engine.errors import CharacterNotHere, NoScene, SceneFull, UnknownCharacter
from engine.scenes import Scene, Scenes, mentioned, next_speakers, parse_names, talkativeness
from engine.scenes.prompt import Line, build_scene_prompt
from engine.settings import CharacterEntry, SceneSettings
from engine.types import Speaker, Turn
from tests.test_discord import Scripted

ROOT = Path(__file__).resolve().parents[1]
NUDGE_MINA = "[Write the next reply only as Mina.]"


def scope() -> str:
    return f"test:scene:{uuid.uuid4().hex[:10]}"


def human(uid: str = "test:alice", name: str = "Alice") -> Speaker:
    return Speaker(uid, name, "en")


# --- who speaks next -------------------------------------------------------------------------------

def test_named_characters_answer_first_in_the_order_named():
    scene = Scene("s", "c", ["Wren", "Mina", "하늘"], last_speaker="Mina")
    rng = random.Random(1)
    assert next_speakers("Mina, and you too Wren: what now?", scene, rng) == ["Mina", "Wren"]
    assert next_speakers("wren? MINA?", scene, rng) == ["Wren", "Mina"]
    assert next_speakers("하늘이 먼저 말해 줘", scene, rng) == ["하늘"]       # a Korean particle may follow
    assert mentioned("Wrenfield is a town", scene.characters) == []


def test_the_draw_is_seeded_never_repeats_and_follows_talkativeness():
    scene = Scene("s", "c", ["Wren", "Mina", "Haneul"])
    weight = {"Wren": 0.9, "Mina": 0.5, "Haneul": 0.0}.get
    picks = []
    rng = random.Random(42)
    for _ in range(300):
        (who,) = next_speakers("and then?", scene, rng, weight)
        assert who != scene.last_speaker
        picks.append(who)
        scene.last_speaker = who
    assert "Haneul" not in picks                          # talkativeness 0 never wins against others
    again, rng = [], random.Random(42)
    scene.last_speaker = None
    for _ in range(300):
        (who,) = next_speakers("and then?", scene, rng, weight)
        again.append(who)
        scene.last_speaker = who
    assert again == picks                                 # the same seed, the same scene
    alone = Scene("s", "c", ["Wren"], last_speaker="Wren")
    assert next_speakers("hm", alone, random.Random(0)) == ["Wren"]
    assert next_speakers("hm", Scene("s", "c", []), random.Random(0)) == []


def test_talkativeness_reads_what_sillytavern_writes():
    assert talkativeness({"talkativeness": "0.8"}) == 0.8
    assert talkativeness({"talkativeness": 3}) == 1.0
    assert talkativeness({"talkativeness": "loud"}) == 0.5
    assert talkativeness({}) == 0.5 and talkativeness(None) == 0.5


def test_parse_names_with_commas_spaces_and_names_with_spaces():
    known = ["Wren", "Mina", "Old Tom", "하늘"]
    assert parse_names("Wren Mina", known) == (["Wren", "Mina"], [])
    assert parse_names("old tom, 하늘, wren", known) == (["Old Tom", "하늘", "Wren"], [])
    assert parse_names("Old Tom Mina Bob", known) == (["Old Tom", "Mina"], ["Bob"])
    assert parse_names("Wren, Wren", known) == (["Wren"], [])


# --- the prompt of one turn ------------------------------------------------------------------------

def test_the_scene_prompt_labels_lines_describes_the_others_and_nudges():
    mina = Card(name="Mina Seo", nickname="Mina", description="{{char}} guides food tours in Seoul. " * 30)
    wren = Card(name="Wren", description="{{char}} keeps a lighthouse for {{user}}.")
    lines = [Line("assistant", "Wren", "Welcome in."), Line("assistant", "Mina", "Hi all!"),
             Line("user", "Alice", "Mina, what is good to eat?")]
    sp = build_scene_prompt(mina, [wren], lines, "Alice", "[Write the next reply only as {{char}}.]", 300)
    assert sp.history == [{"role": "user", "content": "Wren: Welcome in."},
                          {"role": "assistant", "content": "Mina: Hi all!"}]
    assert sp.text == "Alice: Mina, what is good to eat?\n\n" + NUDGE_MINA
    assert "- Wren: Wren keeps a lighthouse for Alice." in sp.context
    assert set(sp.stop) == {"Wren:", "Alice:"}
    short = build_scene_prompt(wren, [mina], lines, "Alice", "[{{char}}]", 120).context
    assert "Mina: Mina guides food tours in Seoul." in short and len(short) < 250


# --- the engine, with a scripted model where the test needs control over time -----------------------

def scripted(engine, text: str = "The tide is turning, friends.", delay: float = 0.0, *, characters=None,
             settings: SceneSettings | None = None) -> tuple[Engine, Scripted]:
    backend = Scripted(text, delay, chunk=8)
    model = Engine.make_model("chat", engine.models["chat"].cfg, backend)
    eng = Engine(models={"chat": model, "roleplay": model}, store=engine.store, limits=engine.limits,
                 cards_cfg=engine.cards_cfg, characters=characters or engine.registry,
                 scenes_cfg=settings or SceneSettings(seed=3))
    return eng, backend


async def run_chain(chain) -> list[tuple[str, str, str]]:
    """(character, text, status) of each speech, reading each to its end as a surface does."""
    out = []
    async for speech in chain:
        try:
            async for _ in speech:
                pass
        except Exception:  # noqa: BLE001 - a stopped speech raises after its text; its status tells
            pass
        out.append((speech.character, speech.text, speech.status))
    return out


async def test_a_scene_on_the_real_model_answers_the_named_character_first(engine, speaker_id):
    where = scope()
    scene, greetings = await engine.scenes.start(where, ["Wren", "Mina"], human(speaker_id))
    assert scene.characters == ["Wren", "Mina"]
    wren, mina = engine.characters().get("Wren"), engine.characters().get("Mina")
    assert [g.speaker for g in greetings] == ["Wren", "Mina"]
    assert greetings[0].content == wren.group_only_greetings[0]          # V3 group greetings open a scene
    chain = engine.scene_turn(Turn(speaker=human(speaker_id), scope=where, text="Mina, what should we eat?"))
    speeches = []
    async for speech in chain:
        async for _ in speech:
            pass
        speeches.append(speech)
    assert [s.character for s in speeches] == ["Mina"]
    prompt = speeches[0].reply.prompt
    assert NUDGE_MINA in prompt and "Alice: Mina, what should we eat?" in prompt
    assert "- Wren: Wren (41) is the last keeper of the Skerry Light" in prompt    # the other character, described
    stored = await engine.history(scene.conversation_id)
    assert [(m["role"], m["speaker"]) for m in stored] == [("assistant", "Wren"), ("assistant", "Mina"),
                                                           ("user", "Alice"), ("assistant", "Mina")]
    assert stored[-1]["content"] == speeches[0].text and speeches[0].text.strip()

    # after a restart (a new engine part reading the same store) the scene goes on where it was
    again = await Scenes(engine, SceneSettings()).get(where)
    assert again.characters == ["Wren", "Mina"] and again.last_speaker == "Mina"
    assert again.conversation_id == scene.conversation_id

    # /reset ends it
    await engine.reset(speaker_id, where)
    assert await engine.scenes.get(where) is None
    assert await Scenes(engine, SceneSettings()).get(where) is None
    with pytest.raises(NoScene):
        await run_chain(engine.scene_turn(Turn(speaker=human(speaker_id), scope=where, text="hello?")))


async def test_auto_turns_run_exactly_n_with_different_speakers_and_the_prompt_has_the_others(engine, speaker_id):
    eng, backend = scripted(engine)
    where = scope()
    await eng.scenes.start(where, ["Wren", "Mina", "하늘"], human(speaker_id))
    await eng.scenes.set_auto(where, 3)
    out = await run_chain(eng.scene_turn(Turn(speaker=human(speaker_id), scope=where, text="Tell me a story.")))
    assert len(out) == 3 and all(status == "done" for _, _, status in out)
    names = [who for who, _, _ in out]
    assert all(a != b for a, b in zip(names, names[1:]))
    for who, prompt in zip(names, backend.prompts):
        assert f"[Write the next reply only as {who}.]" in prompt
        for other in {"Wren", "Mina", "하늘"} - {who}:
            assert f"- {other}: " in prompt
    await eng.scenes.set_auto(where, 2)
    out = await run_chain(eng.scene_turn(Turn(speaker=human(speaker_id), scope=where, text="And then?")))
    assert len(out) == 2 and out[0][0] != out[1][0]


async def test_a_human_message_stops_the_auto_turns_at_once(engine, speaker_id):
    eng, backend = scripted(engine, "word " * 60, delay=0.02)
    where = scope()
    await eng.scenes.start(where, ["Wren", "Mina"], human(speaker_id))
    await eng.scenes.set_auto(where, 3)
    first = eng.scene_turn(Turn(speaker=human(speaker_id), scope=where, text="Go on, you two."))
    task = asyncio.create_task(run_chain(first))
    for _ in range(400):                    # wait until the second (auto) turn is being written
        if len(first.speeches) == 2 and first.speeches[1].text:
            break
        await asyncio.sleep(0.02)
    assert len(first.speeches) == 2
    other = Speaker("test:bob", "Bob", "en")
    second = await run_chain(eng.scene_turn(Turn(speaker=other, scope=where, text="Wren, wait!")))
    interrupted = await asyncio.wait_for(task, 30)
    assert [s for _, _, s in interrupted] == ["done", "cancelled"]       # no third turn
    assert second[0][0] == "Wren" and len(second) == 3
    conv = (await eng.scenes.get(where)).conversation_id
    stored = await eng.history(conv, 50)
    assert [m["speaker"] for m in stored if m["role"] == "user"] == ["Alice", "Bob"]
    assert [m["status"] for m in stored if m["role"] == "assistant"][2:] == ["done", "cancelled", "done", "done",
                                                                            "done"]


async def test_scene_limits_unknown_and_channel_restricted_characters(engine, speaker_id):
    registry = CharacterRegistry(engine.cards_cfg, [
        CharacterEntry(card="cards/wren.png"),
        CharacterEntry(card="cards/mina.png", channels=("discord:channel:1",))], ROOT, discover=False)
    eng, _ = scripted(engine, characters=registry, settings=SceneSettings(max_characters=1))
    with pytest.raises(SceneFull) as full:
        await eng.scenes.start("discord:channel:1", ["Wren", "Mina"], human(speaker_id))
    assert full.value.info["limit"] == 1
    with pytest.raises(CharacterNotHere):
        await eng.scenes.start("discord:channel:2", ["Mina"], human(speaker_id))
    with pytest.raises(UnknownCharacter):
        await eng.scenes.start("discord:channel:2", ["Nobody"], human(speaker_id))
    scene, _ = await eng.scenes.start(f"discord:channel:1:{uuid.uuid4().hex[:6]}", ["Mina"], human(speaker_id),
                                      scopes=("discord:channel:1",))
    assert scene.characters == ["Mina"]
    with pytest.raises(SceneFull):
        await eng.scenes.add(scene.scope, "Wren", human(speaker_id))
    await eng.scenes.end(scene.scope)
