"""The sidecar's OpenAI-compatible API, driven by the official openai client and by raw HTTP."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from sidecar_app import API_KEY, config, running_app



@pytest.fixture(scope="module")
async def sidecar(tmp_path_factory):
    async with running_app(tmp_path_factory.mktemp("openai-api"), config()) as (app, url):
        yield app, url


@pytest.fixture
async def client(sidecar):
    async with AsyncOpenAI(base_url=sidecar[1] + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


async def test_models_lists_both_models_and_every_character(client, sidecar):
    ids = [m.id async for m in client.models.list()]
    assert ids[:2] == ["chat", "roleplay"]
    names = sidecar[0].engine.characters().names()
    assert names, "the repo's cards/ should offer characters"
    assert ids[2:] == [f"character:{n}" for n in names]
    one = await client.models.retrieve(ids[2])
    assert one.id == ids[2]


async def test_non_streaming_completion_has_text_and_token_usage(client):
    r = await client.chat.completions.create(
        model="chat", max_tokens=20, temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 20
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_streaming_completion_arrives_in_pieces_and_ends_with_usage(client):
    stream = await client.chat.completions.create(
        model="chat", max_tokens=40, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Write two sentences about the sea."}])
    pieces, reasons, usage = [], [], None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert len(pieces) > 3
    assert reasons in (["stop"], ["length"])
    assert usage is not None and usage.completion_tokens > 0


async def test_stream_ends_with_done_line_in_openai_chunk_format(sidecar):
    body = {"model": "chat", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hi"}]}
    async with aiohttp.ClientSession() as s, s.post(
            sidecar[1] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["choices"][0]["delta"] == {}


async def test_max_tokens_and_greedy_stop_strings(client):
    messages = [{"role": "user", "content": "Describe a forest in three sentences."}]
    short = await client.chat.completions.create(model="chat", max_tokens=5, temperature=0, messages=messages)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens <= 5
    full = await client.chat.completions.create(model="chat", max_tokens=40, temperature=0, messages=messages)
    text = full.choices[0].message.content
    words = text.split()
    assert len(words) > 4
    stop_word = words[3]
    cut = await client.chat.completions.create(model="chat", max_tokens=40, temperature=0, messages=messages,
                                               stop=[stop_word])
    assert cut.choices[0].message.content.strip() == text[:text.index(stop_word)].strip()


async def test_history_and_system_message_reach_the_model(client):
    # Greedy decoding is deterministic: different history must give a different continuation.
    base = [{"role": "user", "content": "My name is Zorblax."},
            {"role": "assistant", "content": "Nice to meet you, Zorblax!"},
            {"role": "user", "content": "What is my name?"}]
    r1 = await client.chat.completions.create(model="chat", max_tokens=15, temperature=0, messages=base)
    r2 = await client.chat.completions.create(model="chat", max_tokens=15, temperature=0, messages=base[2:])
    assert r1.usage.prompt_tokens > r2.usage.prompt_tokens
    assert "Zorblax" in r1.choices[0].message.content


async def test_roleplay_and_character_models_answer(client):
    ids = [m.id async for m in client.models.list()]
    persona = await client.chat.completions.create(
        model="roleplay", max_tokens=20, messages=[{"role": "system", "content": "You are Captain Hook."},
                                                   {"role": "user", "content": "Who are you?"}])
    assert persona.choices[0].message.content.strip()
    character = await client.chat.completions.create(
        model=ids[2], max_tokens=20, messages=[{"role": "user", "content": "Hello!"}])
    assert character.choices[0].message.content.strip()


async def test_a_clients_own_history_opens_with_the_greeting_its_first_turn_had(sidecar):
    """A client that sends the history itself (as the OpenAI API wants) gets the same greeting in front of it
    every turn, so the second turn's prompt starts with the first's (and reads the cells it left)."""
    from engine.cards import Card
    from engine.types import GenParams, Speaker, Turn

    engine = sidecar[0].engine
    greetings = ["*Opens the door.* Welcome in.", "*Looks up.* Oh, hello.", "*Waves.* Over here!"]
    engine.characters().add_imported(Card(name="Greeter", description="Greeter keeps a small inn by the sea.",
                                          first_mes=greetings[0], alternate_greetings=greetings[1:]))

    async def turn(who: str, text: str, history: list[dict]):
        reply = engine.reply(Turn(speaker=Speaker(who, "Tess", "en"), scope="openai", text=text, mode="roleplay",
                                  character="Greeter", remember=False, history=history,
                                  params=GenParams(max_new_tokens=6, temperature=0.0)))
        return reply, "".join([piece async for piece in reply])

    try:
        for who in ("openai:a", "openai:b", "openai:c", "openai:d"):
            first, said = await turn(who, "Hello there!", [])
            opening = first.prompt[:first.prompt.index("Hello there!")]
            assert sum(g in opening for g in greetings) == 1
            asked = [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": said}]
            second, _ = await turn(who, "Tell me more.", asked)
            assert second.prompt.startswith(opening), (opening[-200:], second.prompt[:len(opening)][-200:])
        # A history that starts with a reply brings its own opening.
        own, _ = await turn("openai:a", "And now?", [{"role": "assistant", "content": "Ahoy."}, *asked])
        assert not any(g in own.prompt for g in greetings)
    finally:
        engine.characters().remove_imported("Greeter")


async def test_errors_have_openai_shape_and_the_client_raises_the_right_kind(client, sidecar):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="chat", n=2, messages=msgs)
    assert e.value.body["param"] == "n" and "n=1" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as e:
        await client.chat.completions.create(model="gpt-4o", messages=msgs)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat", messages=msgs, temperature=7)
    async with AsyncOpenAI(base_url=sidecar[1] + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
    async with aiohttp.ClientSession() as s:
        async with s.get(sidecar[1] + "/v1/models") as r:
            body = await r.json()
            assert r.status == 401
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["code"] == "invalid_api_key"
        async with s.post(sidecar[1] + "/v1/chat/completions", data=b"{not json",
                          headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with s.get(sidecar[1] + "/v1/nothing-here", headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            assert r.status == 404 and "error" in await r.json()


async def test_client_disconnect_cancels_generation(sidecar):
    app, url = sidecar
    queue = app.engine.models["chat"].queue
    body = {"model": "chat", "stream": True, "max_tokens": 1500, "temperature": 0.9,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
    async with aiohttp.ClientSession() as s:
        r = await s.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        got = b""
        while got.count(b"data: ") < 4:
            got += await r.content.readany()
        assert queue.depth == 1
        r.close()                            # the client goes away mid-stream
    t0 = time.monotonic()
    while queue.depth and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.05)
    assert queue.depth == 0, "the model kept generating for a client that left"
    assert time.monotonic() - t0 < 2
