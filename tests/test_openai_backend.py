"""backend: openai against llama-cpp-python's own server (not this project), and its failure handling."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from engine.backends.openai_backend import OpenAIGenerator, chat_url
from engine.engine import Engine
from engine.errors import GenerationCancelled, ModelError
from engine.loading import load_backend
from engine.settings import Cards, Limits, OpenAIModel
from engine.types import GenParams, Speaker, Turn
from sidecar_app import API_KEY, GGUF_SPEC, REPO, LlamaServer, config, free_port, llamacpp_model, running_app

SYSTEM = "You are a helpful assistant."


def openai_model(base_url: str, **over) -> dict:
    cfg = {"backend": "openai", "base_url": base_url, "model": "smollm2", "tokenizer": GGUF_SPEC,
           "max_new_tokens": {"policy": "fixed", "fixed": 60}, "temperature": 0.0, "stop": ["<|im_end|>"],
           "system_prompt": SYSTEM, "retries": 2, "backoff_s": 0.1, "concurrency": 2}
    cfg.update(over)
    return cfg


def bare_engine(cfg: dict, env: dict | None = None) -> tuple[Engine, OpenAIGenerator]:
    """An engine with only this model and no store: enough for turns that are not remembered."""
    model_cfg = OpenAIModel.model_validate(cfg)
    gen = load_backend("chat", model_cfg, REPO, REPO / "ai_model", env=env or {})
    engine = Engine(models={"chat": Engine.make_model("chat", model_cfg, gen)}, store=None, limits=Limits(),
                    cards_cfg=Cards())
    return engine, gen


def close_bare(engine: Engine) -> None:
    for m in engine.models.values():
        m.queue.close()
        m.backend.close()


def turn(text: str, who: str = "t:1", **params) -> Turn:
    return Turn(speaker=Speaker(id=who), scope="test", text=text, remember=False, params=GenParams(**params))


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    s = LlamaServer(tmp_path_factory.mktemp("llama-server") / "server.log")
    await s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
async def sidecar(server, tmp_path_factory):
    cfg = config(chat=openai_model(server.base_url), roleplay=llamacpp_model())
    async with running_app(tmp_path_factory.mktemp("openai-backend"), cfg) as (app, url):
        yield app, url


async def direct(server: LlamaServer, messages: list[dict], **body) -> dict:
    async with aiohttp.ClientSession() as s, s.post(server.base_url + "/chat/completions", json={
            "model": "smollm2", "messages": messages, **body}) as r:
        assert r.status == 200
        return await r.json()


def test_chat_url_accepts_usual_base_urls():
    assert chat_url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:11434/") == "http://h:11434/v1/chat/completions"
    assert chat_url("https://api.example.com/openai/v1/") == "https://api.example.com/openai/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        chat_url("localhost:8000")


async def test_llama_stream_streams_that_servers_reply(sidecar, server):
    app, url = sidecar
    assert app.engine.models["chat"].backend.info()["backend"] == "openai"
    chunks = []
    async with aiohttp.ClientSession() as s, s.post(url + "/Llama_stream", json={"input_data": "Name three fruits."},
                                                    headers={"X-API-Key": API_KEY}) as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            chunks.append(chunk)
    text = b"".join(chunks).decode()
    assert len(chunks) > 1, "the reply came in one piece, not streamed"
    # Greedy decoding: the same request made straight to the server gives the same words.
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name three fruits."}]
    same = await direct(server, messages, temperature=0.0, max_tokens=60, stop=["<|im_end|>"])
    assert text.strip() == same["choices"][0]["message"]["content"].strip()


async def test_token_counts_are_the_servers(sidecar, server):
    backend = sidecar[0].engine.models["chat"].backend
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "안녕하세요! How are you today?"}]
    answer = await direct(server, messages, max_tokens=1)
    assert backend.count_tokens(backend.render(messages)) == answer["usage"]["prompt_tokens"]


async def test_remembered_conversation_through_the_server(sidecar):
    engine = sidecar[0].engine
    who = Speaker(id="test:memory")
    first = engine.reply(Turn(speaker=who, scope="test", text="My cat is called Mittens."))
    async for _ in first:
        pass
    second = engine.reply(Turn(speaker=who, scope="test", text="What is my cat called?"))
    async for _ in second:
        pass
    assert first.conversation_id == second.conversation_id
    assert second.stats.finish.prompt_tokens > first.stats.finish.prompt_tokens
    stored = await engine.history(second.conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]


async def test_stop_closes_the_stream_at_once(sidecar, server):
    engine = sidecar[0].engine
    reply = engine.reply(turn("Write a very long story about a dragon.", who="test:stop", max_new_tokens=1500,
                              temperature=0.9))
    pieces = 0
    with pytest.raises(GenerationCancelled):
        async for _ in reply:
            pieces += 1
            if pieces == 3:
                t0 = time.monotonic()
                assert await engine.stop_replies_of("test:stop") == 1
    assert time.monotonic() - t0 < 1.5
    deadline = time.monotonic() + 10
    while "Disconnected from client" not in server.log_path.read_text() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "Disconnected from client" in server.log_path.read_text(), "the server never saw the stream close"
    assert engine.models["chat"].queue.depth == 0


async def test_server_killed_mid_stream_is_a_clear_error_not_a_hang(tmp_path):
    doomed = LlamaServer(tmp_path / "doomed.log")
    await doomed.start()
    engine, _ = bare_engine(openai_model(doomed.base_url, max_new_tokens={"policy": "fixed", "fixed": 1500},
                                         temperature=0.9))
    try:
        pieces, t0 = 0, None
        with pytest.raises(ModelError) as e:
            async for _ in engine.reply(turn("Write a very long story about a castle.")):
                pieces += 1
                if pieces == 3:
                    doomed.kill()
                    t0 = time.monotonic()
        assert t0 is not None and time.monotonic() - t0 < 10
        assert "closed the stream" in e.value.detail or "cannot connect" in e.value.detail
    finally:
        doomed.kill()
        close_bare(engine)


class Fake:
    """A scripted stand-in for a server misbehaving in ways a real one cannot be made to on demand."""

    def __init__(self, script: list[str]):
        self.script = script
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"auth": request.headers.get("Authorization"), "body": await request.json()})
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if step == "503":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if step == "401":
            return web.json_response({"error": {"message": "Invalid API key"}}, status=401)
        if step == "silent":
            await asyncio.sleep(5)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in ("Hello", " there", "!"):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
        await resp.write(b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def fake():
    runners = []

    async def start(script: list[str]) -> tuple[Fake, str]:
        f = Fake(script)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", f.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f, f"http://127.0.0.1:{port}/v1"

    yield start
    for r in runners:
        await r.cleanup()


async def collect(engine: Engine, t: Turn) -> str:
    reply = engine.reply(t)
    async for _ in reply:
        pass
    return reply


async def test_retries_with_back_off_before_the_first_token(fake):
    f, url = await fake(["503", "503", "ok"])
    engine, _ = bare_engine(openai_model(url, tokenizer=None, backoff_s=0.2))
    try:
        t0 = time.monotonic()
        reply = await collect(engine, turn("hi"))
        assert reply.text == "Hello there!"
        assert len(f.requests) == 3
        assert time.monotonic() - t0 >= 0.2 + 0.4          # waited 0.2 s, then 0.4 s
        assert reply.stats.finish.tokens == 3 and reply.stats.finish.prompt_tokens == 7   # the server's usage
        body = f.requests[0]["body"]
        assert body["stream"] is True and body["model"] == "smollm2" and body["max_tokens"] == 60
    finally:
        close_bare(engine)


async def test_wrong_key_fails_at_once_and_says_so(fake):
    f, url = await fake(["401"])
    engine, _ = bare_engine(openai_model(url, tokenizer=None, api_key_env="LLM_KEY"), env={"LLM_KEY": "nope"})
    try:
        with pytest.raises(ModelError, match="HTTP 401.*API key"):
            await collect(engine, turn("hi"))
        assert len(f.requests) == 1, "a wrong key must not be retried"
    finally:
        close_bare(engine)


async def test_api_key_comes_from_the_named_environment_variable(fake):
    f, url = await fake(["ok"])
    engine, _ = bare_engine(openai_model(url, tokenizer=None, api_key_env="LLM_KEY"), env={"LLM_KEY": "sk-secret"})
    try:
        await collect(engine, turn("hi"))
        assert f.requests[0]["auth"] == "Bearer sk-secret"
    finally:
        close_bare(engine)


async def test_silent_server_times_out_instead_of_hanging(fake):
    f, url = await fake(["silent"])
    engine, _ = bare_engine(openai_model(url, tokenizer=None, read_timeout_s=1.0, retries=0))
    try:
        t0 = time.monotonic()
        with pytest.raises(ModelError, match="read_timeout_s"):
            await collect(engine, turn("hi"))
        assert time.monotonic() - t0 < 5
    finally:
        close_bare(engine)


async def test_unreachable_server_is_a_clear_error():
    engine, _ = bare_engine(openai_model(f"http://127.0.0.1:{free_port()}/v1", tokenizer=None, backoff_s=0.05))
    try:
        t0 = time.monotonic()
        with pytest.raises(ModelError, match="cannot connect"):
            await collect(engine, turn("hi"))
        assert time.monotonic() - t0 < 5
    finally:
        close_bare(engine)
