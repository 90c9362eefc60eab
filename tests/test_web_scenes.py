"""The web page's scenes in real headless Chromium: pick characters, each reply with its avatar and name, safe markup."""
from __future__ import annotations

import json

import aiohttp
import pytest

from engine.engine import Engine
from sidecar_app import config, running_app
from test_discord import Scripted
from test_web import READY, WRITING, Browser, type_and_send

HOSTILE = "*waves* **hi** <img src=x onerror=\"window.pwned=1\"> `x` <script>window.pwned=2</script>\n```\nrm -rf\n```"


@pytest.fixture(scope="module")
async def sidecar(tmp_path_factory):
    async with running_app(tmp_path_factory.mktemp("web-scenes"), config()) as (app, url):
        # The page is what is tested here: a scripted model writes the replies (the real one in test_scenes.py).
        model = Engine.make_model("roleplay", app.engine.models["roleplay"].cfg,
                                  Scripted("*smiles* Tteokbokki first, then **hotteok**.", delay=0.01, chunk=6))
        app.engine.models.update(chat=model, roleplay=model)
        yield app, url


async def test_pick_a_scene_each_reply_shows_its_avatar_and_name_and_markup_stays_text(sidecar, tmp_path):
    app, url = sidecar
    b = Browser(tmp_path / "profile")
    await b.start()
    try:
        await b.open(url + "/")
        await b.until(READY)
        await b.js("const s = document.getElementById('target'); s.value = 'scene'; "
                   "s.dispatchEvent(new Event('change')); true")
        await b.until("!document.getElementById('scene-pick').hidden && "
                      "document.querySelectorAll('#scene-choices input').length >= 3")
        await b.js("for (const c of document.querySelectorAll('#scene-choices input')) "
                   "c.checked = ['Wren', 'Mina'].includes(c.value); "
                   "document.getElementById('scene-pick').requestSubmit(); true")
        await b.until("document.querySelectorAll('#cast img').length === 2")
        names = "[...document.querySelectorAll('.msg.assistant .who span')].map(s => s.textContent)"
        assert await b.until(f"{names}.length === 2 && {names}") == ["Mina", "Wren"]      # the order of the list

        await type_and_send(b, "Mina, what should we eat?")
        await b.until(f"{names}.length === 3 && !{WRITING}", timeout_s=120)
        assert (await b.js(names))[2] == "Mina"
        src = await b.js("[...document.querySelectorAll('.msg.assistant .who img')].pop().src")
        assert src.endswith("/web/api/characters/Mina/image")
        reply = await b.js("[...document.querySelectorAll('.msg.assistant .body')].pop().textContent")
        session = await b.js("localStorage.getItem('llmbot.session')")
        scene = await app.engine.scenes.get(f"web:{session}:scene")
        stored = await app.engine.history(scene.conversation_id)
        assert (stored[-1]["speaker"], stored[-1]["content"]) == ("Mina", reply)

        # model or card text with markup: rendered as italics, bold and code, never as HTML
        await app.engine.store.add_message(scene.conversation_id, "assistant", HOSTILE, speaker="Wren")
        await b.reload()
        await b.until(READY)
        await b.until(f"{names}.length === 4")
        last = "[...document.querySelectorAll('.msg.assistant .body')].pop()"
        shown = await b.js(f"(() => {{ const m = {last}; return {{text: m.textContent, "
                           "em: m.querySelector('em') && m.querySelector('em').textContent, "
                           "strong: m.querySelector('strong') && m.querySelector('strong').textContent, "
                           "pre: m.querySelector('pre') && m.querySelector('pre').textContent, "
                           "tags: [...m.querySelectorAll('*')].map(e => e.tagName.toLowerCase()), "
                           "pwned: window.pwned || 0}; })()")
        assert shown["text"] == HOSTILE                      # exactly what was written, markers included
        assert shown["em"] == "*waves*" and shown["strong"] == "**hi**" and shown["pre"] == "```\nrm -rf\n```"
        assert set(shown["tags"]) <= {"em", "strong", "code", "pre", "span"}
        assert shown["pwned"] == 0

        # a new conversation ends the scene; the picker comes back
        await b.js("document.getElementById('reset').click(); true")
        await b.until("!document.getElementById('scene-pick').hidden")
        assert await app.engine.scenes.get(f"web:{session}:scene") is None
    finally:
        await b.close()

    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/web/api/scene", json={"session": "abcdefgh12", "characters": ["Nobody"]},
                          headers={"Accept-Language": "ko-KR"}) as r:
            assert r.status == 404 and "캐릭터" in (await r.json())["message"]
        async with s.post(url + "/web/api/scene/chat", json={"session": "abcdefgh99", "text": "hi"}) as r:
            assert r.status == 404 and "scene" in json.dumps(await r.json()).lower()
