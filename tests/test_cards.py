"""Card files: V1/V2/V3 read and write, a card made by another tool, malformed and hostile input, the CLI."""
from __future__ import annotations

import base64
import copy
import io
import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from engine.cards import Card, CardError, card_from_obj, card_to_dict, card_to_json, card_to_png, card_to_v2, card_to_v3
from engine.cards import load_card, load_card_file
from engine.cards.png import SIGNATURE, read_png, text_chunk
from engine.settings import CardLimits

REPO = Path(__file__).resolve().parents[1]
SERAPHINA = Path(__file__).resolve().parents[2] / "shared/testdata/cards/seraphina_v2.png"
LUMEN = REPO / "tests/data/cards/v3_lumen.json"
LIMITS = CardLimits()


def needs_seraphina():
    if not SERAPHINA.exists():
        pytest.skip(f"the card made by another tool is not here: {SERAPHINA}")
    return SERAPHINA.read_bytes()


def tiny_png(size=(8, 8), color=(200, 100, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_with(*chunks: bytes, base: bytes | None = None) -> bytes:
    base = base or tiny_png()
    return base[:-12] + b"".join(chunks) + base[-12:]


def b64(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def chunks_of(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def card_json_in(data: bytes, keyword: bytes) -> dict:
    for ctype, body in chunks_of(data):
        if ctype == b"tEXt" and body.split(b"\0", 1)[0] == keyword:
            return json.loads(base64.b64decode(body.split(b"\0", 1)[1]))
    raise AssertionError(f"no {keyword!r} chunk")


# ---- round trips -----------------------------------------------------------

V1 = {"name": "Old Timer", "description": "A V1 card.", "personality": "grumpy", "scenario": "A porch.",
      "first_mes": "Get off my lawn, {{user}}.", "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hmph."}


def test_v1_json_round_trips_through_png():
    card = load_card(json.dumps(V1).encode())
    assert card.spec == "chara_card_v1" and card.name == "Old Timer" and card.personality == "grumpy"
    again = load_card(card_to_png(card))
    for key, value in V1.items():
        assert getattr(again, key) == value
    assert again.spec == "chara_card_v3"        # written cards carry V3 (and V2)


def test_v1_old_field_names_are_understood():
    card = load_card(json.dumps({"char_name": "Pyg", "char_persona": "desc", "char_greeting": "hey",
                                 "world_scenario": "here", "example_dialogue": "<START>"}).encode())
    assert (card.name, card.description, card.first_mes, card.scenario) == ("Pyg", "desc", "hey", "here")


def test_v2_round_trip_keeps_unknown_extensions_and_data_keys():
    v2 = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        **V1, "creator_notes": "notes", "system_prompt": "{{original}} be nice", "post_history_instructions": "stay",
        "alternate_greetings": ["alt one", "alt two"], "tags": ["a", "b"], "creator": "me", "character_version": "7",
        "extensions": {"talkativeness": "0.5", "fav": False, "deep": {"x": [1, {"y": None}]}},
        "character_book": {"entries": [{"keys": ["porch"], "content": "A porch.", "extensions": {"k": 1},
                                        "enabled": True, "insertion_order": 3, "weird_tool_key": "stay"}],
                           "extensions": {}, "name": "book"},
        "some_other_tool_field": [1, 2, 3]}}
    card = card_from_obj(v2, LIMITS)
    assert card.spec == "chara_card_v2" and card.alternate_greetings == ["alt one", "alt two"]
    out = card_to_png(card)
    again = load_card(out)
    assert again.extensions == v2["data"]["extensions"]
    assert again.extra == {"some_other_tool_field": [1, 2, 3]}
    assert again.character_book["entries"][0]["weird_tool_key"] == "stay"
    assert again.character_book["entries"][0]["extensions"] == {"k": 1}
    chara = card_json_in(out, b"chara")
    assert chara["spec"] == "chara_card_v2" and chara["data"]["extensions"] == v2["data"]["extensions"]
    assert chara["name"] == "Old Timer"     # the V1 mirror for V1-only readers
    ccv3 = card_json_in(out, b"ccv3")
    assert ccv3["spec"] == "chara_card_v3" and ccv3["data"]["group_only_greetings"] == []
    assert ccv3["data"]["character_book"]["entries"][0]["use_regex"] is False
    expected = card_to_dict(card)
    # V3 requires use_regex in every entry; false is what a V2 entry meant
    expected["character_book"]["entries"] = [{**e, "use_regex": False} for e in expected["character_book"]["entries"]]
    skip = ("spec", "spec_version")
    assert {k: v for k, v in card_to_dict(again).items() if k not in skip} == {k: v for k, v in expected.items() if k not in skip}


def test_v3_round_trip_keeps_every_field():
    obj = json.loads(LUMEN.read_text())
    card = load_card(LUMEN.read_bytes())
    assert card.spec == "chara_card_v3" and card.nickname == "Lu" and card.display_name == "Lu"
    assert card.assets[1]["name"] == "happy" and card.group_only_greetings
    assert (card.creation_date, card.modification_date) == (1700000000, 1700003600)
    assert card.creator_notes_multilingual == {"ko": "llmbot 시험용 카드"}
    assert card.source == ["https://example.invalid/lumen"]
    assert card.character_book["entries"][0]["use_regex"] is True
    assert card.extra == {"unknown_data_key": {"kept": "verbatim"}}
    again = load_card(card_to_png(card))
    assert card_to_dict(again) == card_to_dict(card)
    assert card_to_v3(again)["data"] == {**obj["data"]}     # nothing lost, nothing added
    assert json.loads(card_to_json(again))["data"]["extensions"] == obj["data"]["extensions"]


def test_written_png_is_read_by_pillow_with_both_chunks_before_iend():
    out = card_to_png(load_card(LUMEN.read_bytes()), tiny_png((40, 60)))
    with Image.open(io.BytesIO(out)) as im:
        im.load()
        assert im.size == (40, 60)
        assert set(im.text) >= {"chara", "ccv3"}
        assert json.loads(base64.b64decode(im.text["ccv3"]))["data"]["name"] == "Lumen"
        assert json.loads(base64.b64decode(im.text["chara"]))["spec"] == "chara_card_v2"
    types = [t for t, _ in chunks_of(out)]
    assert types[-3:] == [b"tEXt", b"tEXt", b"IEND"]


def test_writing_again_replaces_the_card_chunks_instead_of_adding():
    card = load_card(LUMEN.read_bytes())
    once = card_to_png(card, tiny_png())
    card.description = "changed"
    twice = card_to_png(card, once)
    assert [t for t, _ in chunks_of(twice)].count(b"tEXt") == 2
    assert load_card(twice).description == "changed"


def test_ccv3_is_read_before_chara_and_a_broken_ccv3_falls_back():
    v2 = {"spec": "chara_card_v2", "data": {"name": "From chara"}}
    v3 = {"spec": "chara_card_v3", "data": {"name": "From ccv3"}}
    both = png_with(text_chunk("chara", b64(v2)), text_chunk("ccv3", b64(v3)))
    assert load_card(both).name == "From ccv3"
    broken = png_with(text_chunk("ccv3", "@@@"), text_chunk("chara", b64(v2)))
    assert load_card(broken).name == "From chara"


def test_ztxt_and_itxt_chunks_are_read():
    v2 = {"spec": "chara_card_v2", "data": {"name": "Zed", "description": "한국어 설명"}}
    z = chunk(b"zTXt", b"chara\0\0" + zlib.compress(b64(v2).encode()))
    assert load_card(png_with(z)).description == "한국어 설명"
    i = chunk(b"iTXt", b"ccv3\0\1\0ko\0\0" + zlib.compress(b64({**v2, "spec": "chara_card_v3"}).encode()))
    assert load_card(png_with(i)).name == "Zed"
    raw = chunk(b"iTXt", b"chara\0\0\0\0\0" + json.dumps(v2, ensure_ascii=False).encode())
    assert load_card(png_with(raw)).description == "한국어 설명"


def test_write_converts_a_jpeg_and_the_image_is_kept_without_card_chunks():
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 200, 10)).save(buf, format="JPEG")
    card = load_card(card_to_png(Card(name="J"), buf.getvalue()))
    assert card.image is not None and b"chara" not in card.image
    with Image.open(io.BytesIO(card.image)) as im:
        assert im.format == "PNG" and im.size == (30, 20)


# ---- a card made by another tool --------------------------------------------

def test_seraphina_made_by_sillytavern_loads_with_its_lorebook():
    card = load_card(needs_seraphina())
    assert card.name == "Seraphina" and card.spec == "chara_card_v2"
    assert card.first_mes.startswith("*You wake with a start")
    assert card.creator == "OtisAlejandro"
    assert card.extensions == {"talkativeness": "0.5", "fav": False, "world": "Eldoria"}
    book = card.character_book
    assert book["name"] == "Eldoria" and len(book["entries"]) == 4
    assert "shadowfang" in book["entries"][1]["keys"]
    assert book["entries"][0]["extensions"] == {"position": 0, "probability": None, "useProbability": False}
    assert read_png(needs_seraphina(), LIMITS).width == 400


def test_rewritten_seraphina_keeps_its_extensions(tmp_path):
    card = load_card(needs_seraphina())
    out = tmp_path / "sera.png"
    out.write_bytes(card_to_png(card))
    again = load_card_file(out)
    assert again.extensions == card.extensions
    assert again.character_book["entries"] == [{**e, "use_regex": False} for e in card.character_book["entries"]]
    assert card_json_in(out.read_bytes(), b"chara")["data"]["extensions"]["world"] == "Eldoria"
    with Image.open(out) as im:     # the picture itself is untouched
        im.load()
        assert im.size == (400, 600)


# ---- malformed and hostile input ----------------------------------------------

def code_of(data: bytes, limits: CardLimits = LIMITS) -> str:
    with pytest.raises(CardError) as e:
        load_card(data, limits)
    assert e.value.message and str(e.value)
    return e.value.code


def test_not_a_png_and_random_bytes():
    rng = random.Random(1)
    assert code_of(bytes(rng.randrange(256) for _ in range(5000))) == "not_png"
    assert code_of(b"") == "not_png"
    assert code_of(b"GIF89a....") == "not_png"


def test_truncated_png():
    data = card_to_png(load_card(LUMEN.read_bytes()))
    for cut in (9, 20, 33, len(data) // 2, len(data) - 13, len(data) - 1):
        assert code_of(data[:cut]) == "bad_png", cut


def test_crc_mismatch_is_bad_png():
    data = bytearray(card_to_png(load_card(LUMEN.read_bytes())))
    data[-20] ^= 0xFF       # inside the last card chunk
    assert code_of(bytes(data)) == "bad_png"


def test_png_without_card_chunk():
    assert code_of(tiny_png()) == "no_card_chunk"


def test_bad_base64():
    assert code_of(png_with(text_chunk("chara", "this is not base64 !!!"))) == "bad_base64"
    assert code_of(png_with(text_chunk("chara", "QUJD\x80\x81"))) == "bad_base64"


def test_bad_json():
    assert code_of(png_with(text_chunk("chara", base64.b64encode(b"{not json").decode()))) == "bad_json"
    assert code_of(b"{\"name\": ") == "bad_json"
    assert code_of(b"{\"name\": \"\xff\xfe\"}") == "bad_json"


def test_missing_name_and_wrong_types():
    assert code_of(b'{"spec": "chara_card_v2", "data": {"name": "  "}}') == "missing_name"
    assert code_of(b'{"description": "no name"}') == "missing_name"
    assert code_of(b'{"name": "x", "alternate_greetings": "ok", "tags": 5}') == "bad_card"
    assert code_of(b'{"name": ["x"]}') == "bad_card"
    assert code_of(b'{"spec": "something_else", "data": {"name": "x"}}') == "bad_card"
    assert code_of(b'{"name": "x", "character_book": {"entries": [{"keys": "k", "content": {"a": 3}}]}}') == "bad_card"
    assert code_of(b'{"name": "x", "extensions": []}') == "bad_card"


def test_json_bombs():
    deep = b'{"name": "x", "extensions": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001
    assert code_of(deep) == "bad_json"
    medium = b'{"name": "x", "extensions": ' + b'{"a": ' * 80 + b"1" + b"}" * 81
    assert code_of(medium) == "bad_json"
    wide = b'{"name": "x", "extensions": {"a": [' + b"[]," * 200_000 + b"[]]}}"
    assert code_of(wide) == "too_large"
    strings = b'{"name": "x", "tags": [' + b'"",' * 1_100_000 + b'""]}'
    assert code_of(strings) == "too_large"


def test_zlib_bomb_in_a_compressed_chunk():
    bomb = zlib.compress(b"A" * (LIMITS.max_file_bytes + 1024), 9)
    assert len(bomb) < 100_000
    assert code_of(png_with(chunk(b"zTXt", b"chara\0\0" + bomb))) == "too_large"


def test_fifty_megabyte_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.write(SIGNATURE)
        f.truncate(50 * 1024 * 1024)        # sparse: costs no disk, would cost 50 MB to read
    with pytest.raises(CardError) as e:
        load_card_file(big)
    assert e.value.code == "too_large" and "big.png" in str(e.value)
    assert code_of(SIGNATURE + bytes(50 * 1024 * 1024)) == "too_large"


def test_field_and_image_limits():
    small = CardLimits(max_field_chars=100)
    assert code_of(json.dumps({"name": "x", "description": "d" * 101}).encode(), small) == "field_too_long"
    assert code_of(json.dumps({"name": "x", "alternate_greetings": ["ok", "g" * 101]}).encode(), small) == "field_too_long"
    data = card_to_png(Card(name="Wide"), tiny_png((64, 64)))
    assert code_of(data, CardLimits(max_image_pixels=64 * 64 - 1)) == "image_too_large"
    with pytest.raises(CardError) as e:
        card_to_png(Card(name="x"), tiny_png((64, 64)), CardLimits(max_image_pixels=1000))
    assert e.value.code == "image_too_large"
    with pytest.raises(CardError) as e:
        card_to_png(Card(name="x", description="d" * 101), tiny_png(), small)
    assert e.value.code == "field_too_long"


def test_huge_dimensions_in_the_header_are_refused_without_decoding():
    data = bytearray(card_to_png(Card(name="x"), tiny_png()))
    ihdr = bytearray(data[8 + 8:8 + 8 + 13])
    ihdr[0:8] = struct.pack(">II", 100_000, 100_000)
    data[8:8 + 25] = chunk(b"IHDR", bytes(ihdr))
    assert code_of(bytes(data)) == "image_too_large"


def test_unreadable_image_when_writing():
    with pytest.raises(CardError) as e:
        card_to_png(Card(name="x"), b"\x89PNG\r\n\x1a\n garbage")
    assert e.value.code == "bad_image"
    with pytest.raises(CardError) as e:
        card_to_png(Card(name="x"), b"plain text")
    assert e.value.code == "bad_image"


def test_missing_file_is_io_error(tmp_path):
    with pytest.raises(CardError) as e:
        load_card_file(tmp_path / "nope.png")
    assert e.value.code == "io_error" and "nope.png" in str(e.value)


# ---- fuzz -------------------------------------------------------------------

def _mutate_json(obj, rng: random.Random):
    """A copy of a card object with one value replaced by something of another type or size."""
    obj = copy.deepcopy(obj)
    targets = [(obj, k) for k in obj]
    node = obj
    for _ in range(rng.randrange(1, 5)):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            targets.append((node, key))
            node = node[key]
        elif isinstance(node, list) and node:
            key = rng.randrange(len(node))
            targets.append((node, key))
            node = node[key]
    parent, key = rng.choice(targets)
    parent[key] = rng.choice([None, 0, -1, 1.5, float("inf"), True, "", "x" * rng.randrange(1, 300), [], {},
                              [None], {"a": None}, [1, "a"], "{{char}}" * 5, "\u0000\ud7a3", 10 ** 30])
    return obj


def test_three_hundred_mutated_cards_raise_only_card_errors():
    base = card_to_png(load_card(LUMEN.read_bytes()), tiny_png((16, 16)))
    obj = json.loads(LUMEN.read_text())
    rng = random.Random(4)
    outcomes = {"ok": 0}
    for i in range(300):
        kind = i % 4
        if kind == 0:       # random bytes flipped anywhere
            data = bytearray(base)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        elif kind == 1:     # cut, spliced or duplicated pieces
            a, b = sorted(rng.randrange(len(base)) for _ in range(2))
            data = rng.choice([base[:a], base[:a] + base[b:], base[:b] + base[a:], base[a:]])
        elif kind == 2:     # the base64 text changed, CRC made right so the damage reaches the decoder
            body = bytearray(b64(obj).encode())
            for _ in range(rng.randrange(1, 6)):
                body[rng.randrange(len(body))] = rng.choice(b"AZaz09+/=!{} \x00\xff")
            data = png_with(chunk(b"tEXt", b"ccv3\0" + bytes(body)))
        else:               # valid base64 of a structurally mutated card
            mutated = obj
            for _ in range(rng.randrange(1, 4)):
                mutated = _mutate_json(mutated, rng)
            data = png_with(chunk(b"tEXt", b"ccv3\0" + b64(mutated).encode()))
        try:
            card = load_card(data)
            card_to_png(card)           # what loads must also write
            outcomes["ok"] += 1
        except CardError as e:
            outcomes[e.code] = outcomes.get(e.code, 0) + 1
    assert sum(outcomes.values()) == 300
    assert outcomes["ok"] > 10 and len(outcomes) >= 5, outcomes     # both paths were exercised


# ---- command line -----------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cards", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_cli_inspect_prints_the_normalized_card():
    r = cli("inspect", str(LUMEN))
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["spec"] == "chara_card_v3" and shown["name"] == "Lumen" and shown["nickname"] == "Lu"
    assert shown["extensions"]["some_future_tool"]["weights"] == [0.25, 0.75]
    assert shown["image"] is None


def test_cli_inspect_a_card_made_by_another_tool():
    needs_seraphina()
    r = cli("inspect", str(SERAPHINA))
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["name"] == "Seraphina" and shown["spec"] == "chara_card_v2"
    assert shown["image"] == {"format": "PNG", "width": 400, "height": 600, "bytes": shown["image"]["bytes"]}
    assert len(shown["character_book"]["entries"]) == 4


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(SIGNATURE + b"\x00\x00\x00\x0dIHDR" + b"\x00" * 5)
    for target in (bad, tmp_path / "missing.png"):
        r = cli("inspect", str(target))
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_cli_write_makes_a_card_that_keeps_extensions(tmp_path):
    image = tmp_path / "face.png"
    image.write_bytes(tiny_png((50, 70)))
    out = tmp_path / "lumen.png"
    r = cli("write", "--json", str(LUMEN), "--image", str(image), "--out", str(out))
    assert r.returncode == 0, r.stderr
    card = load_card_file(out)
    assert card.extensions == json.loads(LUMEN.read_text())["data"]["extensions"]
    assert read_png(out.read_bytes(), LIMITS).width == 50
    r = cli("write", "--json", str(LUMEN), "--image", str(tmp_path / "none.png"), "--out", str(out))
    assert r.returncode == 2 and "none.png" in r.stderr


# ---- shipped cards ----------------------------------------------------------

@pytest.mark.parametrize("name", ["haneul", "wren", "mina"])
def test_shipped_cards_load_and_are_small(name):
    path = REPO / "cards" / f"{name}.png"
    assert path.stat().st_size < 300 * 1024
    card = load_card_file(path)
    assert card.spec == "chara_card_v3" and card.alternate_greetings and "<START>" in card.mes_example
    assert 3 <= len(card.character_book["entries"]) <= 5
    assert card_to_v2(card)["data"]["name"] == card.name
    with Image.open(path) as im:
        assert im.size == (400, 600)
