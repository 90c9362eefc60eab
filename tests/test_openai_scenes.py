"""The OpenAI API's scene models: ``scene:Wren,Mina`` answers with each message named by its speaker."""
from __future__ import annotations

import json

import aiohttp
from openai import AsyncOpenAI

from bot.http.context import HttpContext
from bot.http.metrics import Metrics
from bot.http.server import HttpServer
from tests.conftest import API_KEY, make_config, secrets
from tests.test_scenes import scripted

LINE = "Kimchi stew, and the good bread."

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
HISTORY = [{"role": "assistant", "name": "Wren", "content": "Boots off, coats on the hooks."},
           {"role": "user", "name": "Ana", "content": "Mina, and then Wren: what is for dinner?"}]


async def test_a_scene_model_names_the_speaker_of_each_message(engine):
    eng, backend = scripted(engine, LINE)
    server = HttpServer(HttpContext(eng, make_config(), secrets(), Metrics()), "127.0.0.1", 0)
    await server.start()
    try:
        await _check(f"http://127.0.0.1:{server.port}", backend)
    finally:
        await server.stop()


async def _check(http_api: str, backend) -> None:
    async with AsyncOpenAI(base_url=http_api + "/v1", api_key=API_KEY, max_retries=0, timeout=120) as client:
        r = await client.chat.completions.create(model="scene:Wren,Mina", max_tokens=16, messages=HISTORY)
    assert [c.message.model_extra["name"] for c in r.choices] == ["Mina", "Wren"]     # in the order named
    assert [c.message.content for c in r.choices] == [LINE, LINE]
    assert all(c.message.role == "assistant" for c in r.choices)
    # the client's history is the scene: labelled lines, the nudge for the speaker, nothing stored
    assert "Wren: Boots off, coats on the hooks." in backend.prompts[0]
    assert "[Write the next reply only as Mina.]" in backend.prompts[0]
    assert f"Mina: {LINE}" in backend.prompts[1] and "[Write the next reply only as Wren.]" in backend.prompts[1]

    async with aiohttp.ClientSession(headers=HEADERS) as http:
        body = {"model": "scene:Wren, Mina", "max_tokens": 12, "stream": True,
                "messages": [{"role": "user", "content": "Mina, say hello."}]}
        async with http.post(http_api + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "name": "Mina", "content": ""}
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == LINE
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

        async with http.post(http_api + "/v1/chat/completions",
                             json={"model": "scene:Wren,Nobody", "messages": HISTORY}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"
