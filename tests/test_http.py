"""The HTTP sidecar's older-server endpoints, errors, admin, health and metrics, over real HTTP."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from bot.i18n import section
from conftest import API_KEY

KEY = {"X-API-Key": API_KEY}
SERAPHINA = Path(__file__).resolve().parents[2] / "shared/testdata/cards/seraphina_v2.png"


async def stream_chunks(url: str, body: dict) -> tuple[list[tuple[float, bytes]], float]:
    """Chunks with their arrival times, and the time the stream ended."""
    chunks = []
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        async with s.post(url, json=body, headers=KEY) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/plain")
            async for data, _ in r.content.iter_chunks():
                chunks.append((time.perf_counter() - t0, data))
    return chunks, time.perf_counter() - t0


@pytest.mark.parametrize("path,body", [
    ("/Llama_stream", {"input_data": "Tell me about rivers.", "google_access": False}),
    ("/Lumimaid_stream", {"input_data": "Describe your home village in detail.", "character_name": "Aria",
                          "greeting": "Welcome, friend.",
                          "context": "Aria is a cheerful bard.", "image": "https://example.com/a.png",
                          "access_level": True}),
])
async def test_streams_arrive_in_several_chunks_before_the_end(http_api, path, body):
    chunks, total = await stream_chunks(http_api + path, body)
    texts = [c.decode() for _, c in chunks]
    assert len([t for t in texts if t.strip()]) >= 2, texts
    assert chunks[0][0] < total * 0.9          # the first chunk came well before generation ended
    assert "[error]" not in "".join(texts)


async def test_inferweb_and_chatweb_shapes(http_api):
    async with aiohttp.ClientSession(headers=KEY) as s:
        r = await s.post(http_api + "/inferweb", json={"instruction": {"command": "Answer briefly."}, "input": "Hi"})
        data = await r.json()
        assert r.status == 200 and isinstance(data["result"], str) and data["result"]
        assert data["history"]["history"] == [{"type": "### 사용자", "str": "Hi"}, {"type": "### AI", "str": data["result"]}]
        history = {"count": 1, "history": data["history"]["history"]}
        r = await s.post(http_api + "/chatweb", json={"instruction": {"command": "Be kind."}, "input": "And you?",
                                                      "history": history})
        grown = await r.json()
        assert r.status == 200 and grown["history"]["count"] == 2
        assert grown["history"]["history"][:2] == history["history"]
        assert grown["history"]["history"][2] == {"type": "### 사용자", "str": "And you?"}
        long = {"count": 30, "history": [{"type": t, "str": f"{t}{i}"} for i in range(30) for t in ("### 사용자", "### AI")]}
        r = await s.post(http_api + "/chatweb", json={"instruction": {"command": ""}, "input": "last", "history": long})
        capped = (await r.json())["history"]
        assert capped["count"] == 20 and len(capped["history"]) == 40 and capped["history"][-2]["str"] == "last"


@pytest.mark.parametrize("body,status,field", [
    ({"input_data": ""}, 422, "input_data"),
    ({"input_data": "x" * 501}, 422, "input_data"),
    ({"input_data": 5}, 422, "input_data"),
    ({}, 422, "input_data"),
    ({"input_data": "hi", "google_access": "yes"}, 422, "google_access"),
    ([1, 2], 422, "body"),
])
async def test_llama_stream_bad_input(http_api, body, status, field):
    async with aiohttp.ClientSession(headers=KEY) as s:
        r = await s.post(http_api + "/Llama_stream", json=body)
        data = await r.json()
    assert r.status == status and data["status"] == status and data["data"] is None
    assert field in data["message"]


async def test_lumimaid_bad_url_and_invalid_json(http_api):
    async with aiohttp.ClientSession(headers=KEY) as s:
        r = await s.post(http_api + "/Lumimaid_stream", json={"input_data": "hi", "character_name": "A",
                                                                "image": "ftp://x/y.png"})
        assert r.status == 422 and "image" in (await r.json())["message"]
        r = await s.post(http_api + "/Llama_stream", data=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status == 400 and (await r.json())["message"] == "request body is not valid JSON"
        r = await s.post(http_api + "/Llama_stream", data=b"x" * (2 * 1024 * 1024))
        assert r.status == 413 and (await r.json())["status"] == 413
        r = await s.get(http_api + "/nope")
        assert r.status == 404 and (await r.json())["message"] in section("http")["not_found"].values()
        r = await s.get(http_api + "/Llama_stream")
        assert r.status == 405 and (await r.json())["status"] == 405


async def test_api_key_required(http_api):
    async with aiohttp.ClientSession() as s:
        r = await s.get(http_api + "/mongo/db")
        assert r.status == 401 and "API key" in (await r.json())["message"]
        r = await s.get(http_api + "/mongo/db", headers={"X-API-Key": "wrong"})
        assert r.status == 401
        r = await s.post(http_api + "/Llama_stream", json={"input_data": "hi"})
        assert r.status == 401
        r = await s.get(http_api + "/health")
        assert r.status == 200


async def test_mongo_listing(http_api, engine):
    async with aiohttp.ClientSession(headers=KEY) as s:
        dbs = await (await s.get(http_api + "/mongo/db")).json()
        assert engine.store.db.name in dbs["Database"]
        cols = await (await s.get(http_api + f"/mongo/collections?db_name={engine.store.db.name}")).json()
        assert "messages" in cols["Collections"]
        r = await s.get(http_api + "/mongo/collections?db_name=does_not_exist")
        assert r.status == 404 and (await r.json())["status"] == 404


async def test_session_memory_over_http(http_api):
    async with aiohttp.ClientSession(headers=KEY) as s:
        for text in ("My name is Oriane.", "What is my name?"):
            r = await s.post(http_api + "/Llama_stream", json={"input_data": text, "session": "mem-1"})
            assert r.status == 200
            await r.read()
        conv = await (await s.get(http_api + "/conversations/mem-1")).json()
    assert [m["content"] for m in conv["messages"] if m["role"] == "user"] == ["My name is Oriane.", "What is my name?"]


async def test_second_concurrent_request_of_a_session_gets_429(http_api, engine):
    async with aiohttp.ClientSession(headers=KEY) as s:
        body = {"input_data": "Write a very long poem about the ocean.", "session": "busy-1"}
        async with s.post(http_api + "/Llama_stream", json=body) as first:
            await first.content.readany()
            second = await s.post(http_api + "/Llama_stream", json={"input_data": "hi", "session": "busy-1"})
            refused = await second.json()
            assert second.status == 429 and refused["status"] == 429
            # The user-facing message in the caller's language, never the log detail ("… in flight").
            assert refused["message"] in section("errors")["user_busy"].values()
            other = await s.post(http_api + "/Llama_stream", json={"input_data": "hi", "session": "busy-2"})
            assert other.status == 200
            assert (await other.text()).strip()


async def test_client_disconnect_cancels_generation(http_api, engine):
    model = engine.models["roleplay"]
    async with aiohttp.ClientSession(headers=KEY) as s:
        resp = await s.post(http_api + "/Lumimaid_stream", json={
            "input_data": "Tell me a very long tale.", "character_name": "Bo", "context": "A storyteller."})
        await resp.content.readany()
        assert model.queue.running == 1
        resp.close()                                   # the client goes away mid-stream
    t0 = time.perf_counter()
    while model.queue.running and time.perf_counter() - t0 < 5:
        await asyncio.sleep(0.02)
    assert model.queue.running == 0
    chunks, _ = await stream_chunks(http_api + "/Lumimaid_stream", {"input_data": "Hi!", "character_name": "Bo"})
    assert "".join(c.decode() for _, c in chunks).strip()


async def test_health_and_metrics(http_api):
    async with aiohttp.ClientSession() as s:
        health = await (await s.get(http_api + "/health")).json()
        assert health["status"] == "ok" and set(health["models"]) == {"chat", "roleplay"}
        text = await (await s.get(http_api + "/metrics")).text()
    for name in ("llmbot_http_requests_total", "llmbot_tokens_generated_total", "llmbot_queue_depth",
                 "llmbot_time_to_first_token_seconds_bucket", "llmbot_tokens_per_second", "llmbot_batch_running",
                 "llmbot_kv_cells_used", "llmbot_prompt_cache_hit_tokens"):
        assert name in text, name
    # Both default models batch: their KV budget is reported, and the cache has served earlier prompts' prefixes.
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith(("llmbot_kv_cells_capacity{", "llmbot_prompt_tokens{"))}
    for role in ("chat", "roleplay"):
        assert values[f'llmbot_kv_cells_capacity{{model="{role}"}}'] > 0
    assert values['llmbot_prompt_tokens{model="roleplay"}'] > 0


@pytest.mark.skipif(not SERAPHINA.exists(), reason="shared/testdata is not beside this checkout")
async def test_import_card_then_roleplay_with_it(http_api):
    async with aiohttp.ClientSession(headers=KEY) as s:
        form = aiohttp.FormData()
        form.add_field("card", SERAPHINA.read_bytes(), filename="seraphina.png", content_type="image/png")
        r = await s.post(http_api + "/characters", data=form)
        assert r.status == 201, await r.text()
        assert (await r.json())["name"] == "Seraphina"
        names = [c["name"] for c in (await (await s.get(http_api + "/characters")).json())["characters"]]
        assert "Seraphina" in names
        png = await (await s.get(http_api + "/characters/Seraphina?image=1")).read()
        assert png.startswith(b"\x89PNG")
        r = await s.post(http_api + "/characters", data=b"not a card at all")
        assert r.status == 422 and (await r.json())["status"] == 422
    chunks, _ = await stream_chunks(http_api + "/Lumimaid_stream", {"input_data": "Who are you?",
                                                                    "character_name": "Seraphina", "session": "sera"})
    assert "".join(c.decode() for _, c in chunks).strip()
    async with aiohttp.ClientSession(headers=KEY) as s:
        conv = await (await s.get(http_api + "/conversations/sera?kind=lumimaid")).json()
    assert conv["messages"][0]["role"] == "assistant" and "Seraphina" in conv["messages"][0]["content"] or \
        conv["messages"][0]["content"]    # the card's greeting opens the roleplay


async def _server_on(engine, config):
    from bot.http.context import HttpContext
    from bot.http.metrics import Metrics
    from bot.http.server import HttpServer
    from conftest import secrets

    server = HttpServer(HttpContext(engine, config, secrets(), Metrics()), "127.0.0.1", 0)
    await server.start()
    return server


async def test_ip_allow_list_refuses_other_addresses(engine):
    from conftest import make_config

    server = await _server_on(engine, make_config({"http": {"allow_ips": ["10.0.0.0/8"]}}))
    try:
        async with aiohttp.ClientSession(headers=KEY) as s:
            r = await s.get(f"http://127.0.0.1:{server.port}/mongo/db")
            assert r.status == 403 and (await r.json())["status"] == 403
    finally:
        await server.stop()


async def test_dead_database_gives_503_and_the_server_keeps_running(engine):
    from conftest import free_port, make_config
    from engine.engine import Engine
    from engine.store.repository import Store

    dead = Store(f"mongodb://127.0.0.1:{free_port()}/", "x", server_selection_timeout_ms=300)
    offline = Engine(models=engine.models, store=dead, limits=engine.limits, cards_cfg=engine.cards_cfg,
                     characters=engine.registry)
    server = await _server_on(offline, make_config())
    url = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession(headers=KEY) as s:
            r = await s.post(url + "/Llama_stream", json={"input_data": "hi", "session": "dead-db"})
            body = await r.json()
            assert r.status == 503 and body["status"] == 503 and body["data"] is None
            r = await s.get(url + "/health")
            assert r.status == 503 and (await r.json())["store"]["ok"] is False
            r = await s.get(url + "/mongo/db")
            assert r.status == 503
            r = await s.post(url + "/Llama_stream", json={"input_data": "Say hi."})   # stateless still works
            assert r.status == 200 and (await r.text()).strip()
    finally:
        await server.stop()
        await dead.client.close()
