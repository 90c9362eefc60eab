"""Beam search (num_beams, early_stopping) on the routes that return the whole reply; streaming routes refuse it."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from bot.config import ConfigError, parse_config
from conftest import API_KEY, ROOT
from engine.backends.base import Sampling
from engine.backends.beam import Beams, beam_text
from engine.scheduler import ModelQueue
from engine.types import GenParams, Speaker, Turn

KEY = {"X-API-Key": API_KEY}


class CountingBackend:
    """The real backend, counting calls of its own (sampling) generate; beam search must not use it."""

    def __init__(self, inner):
        self.inner, self.sampled = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, *args, **kwargs):
        self.sampled += 1
        return self.inner.generate(*args, **kwargs)


@contextmanager
def chat_with_beams(engine, num_beams: int = 2, early_stopping: bool = True):
    """The shared engine's chat model with num_beams set as bot.yaml would, and its backend counted.

    Replies are kept to 6 tokens: transformers' beam search costs several times a sampled reply on a CPU.
    """
    original = engine.models["chat"]
    counted = CountingBackend(original.backend)
    short = original.cfg.max_new_tokens.model_copy(update={"fixed": 6})
    cfg = original.cfg.model_copy(update={"num_beams": num_beams, "early_stopping": early_stopping,
                                          "max_new_tokens": short})
    queue = ModelQueue("chat", counted, cfg.concurrency, cfg.queue_limit, cfg.timeout_s)
    engine.models["chat"] = dataclasses.replace(original, cfg=cfg, backend=counted, queue=queue)
    try:
        yield counted
    finally:
        engine.models["chat"] = original
        queue.close()


def test_num_beams_is_a_transformers_setting_checked_at_load():
    text = (ROOT / "bot.yaml").read_text(encoding="utf-8")
    beams = text.replace("num_beams: 1 ", "num_beams: 4 ", 1).replace("early_stopping: false", "early_stopping: true")
    cfg = parse_config(beams, Path("bot.yaml"))
    assert (cfg.models.chat.num_beams, cfg.models.chat.early_stopping) == (4, True)
    assert parse_config(text, Path("bot.yaml")).models.chat.num_beams == 1          # off as shipped
    with pytest.raises(ConfigError, match="models.chat.num_beams"):
        parse_config(text.replace("num_beams: 1 ", "num_beams: 0 ", 1), Path("bot.yaml"))
    with pytest.raises(ConfigError, match="models.roleplay.num_beams.*unknown key"):
        parse_config(text.replace("    n_gpu_layers: 0", "    n_gpu_layers: 0\n    num_beams: 2", 1), Path("bot.yaml"))


def test_beam_text_is_transformers_beam_search(engine):
    import torch

    backend = engine.models["chat"].backend
    model, tok, device = backend.model, backend.tokenizer, backend.device
    prompt = backend.render([{"role": "user", "content": "Name three colours."}])
    sampling = Sampling(max_new_tokens=6, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1)
    text, tokens, prompt_tokens = beam_text(model, tok, device, prompt, Beams(2, early_stopping=True), sampling)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    with torch.inference_mode():
        ref = model.generate(**ids, max_new_tokens=6, num_beams=2, early_stopping=True, do_sample=False,
                             repetition_penalty=1.1, pad_token_id=tok.pad_token_id)
    assert text == tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip() and 0 < tokens <= 6 and prompt_tokens == ids["input_ids"].shape[1]


async def test_engine_uses_beams_only_for_whole_reply_turns(engine, speaker_id):
    with chat_with_beams(engine) as counted:
        turn = Turn(speaker=Speaker(id=speaker_id), scope="test:beam", text="Say hello.", remember=False,
                    params=GenParams(whole_reply=True))
        whole = engine.reply(turn)
        async for _ in whole:
            pass
        assert whole.stats.finish.extra == {"num_beams": 2} and whole.text.strip()
        assert counted.sampled == 0
        streamed = engine.reply(dataclasses.replace(turn, params=GenParams()))
        async for _ in streamed:
            pass
        assert counted.sampled == 1 and "num_beams" not in streamed.stats.finish.extra
        asked = engine.reply(dataclasses.replace(turn, params=GenParams(num_beams=3, max_new_tokens=3)))
        async for _ in asked:
            pass
        assert asked.stats.finish.extra == {"num_beams": 3}


async def test_non_streaming_routes_use_the_models_beams(engine, http_api):
    body = {"instruction": {"command": "Answer briefly."}, "input": "What is a river?"}
    with chat_with_beams(engine) as counted:
        async with aiohttp.ClientSession(headers=KEY) as s:
            first = await (await s.post(http_api + "/inferweb", json=body)).json()
            assert first["result"].strip()
            r = await s.post(http_api + "/chatweb", json={**body, "history": {"count": 0, "history": []}})
            assert r.status == 200 and (await r.json())["result"].strip()
            r = await s.post(http_api + "/v1/chat/completions", json={
                "model": "chat", "messages": [{"role": "user", "content": "What is a river?"}], "max_tokens": 6})
            assert r.status == 200 and (await r.json())["choices"][0]["message"]["content"].strip()
            assert counted.sampled == 0
            # A streaming route with the model's num_beams set still streams, by sampling.
            async with s.post(http_api + "/Llama_stream", json={"input_data": "Tell me about rivers."}) as r:
                chunks = [c async for c, _ in r.content.iter_chunks() if c.strip()]
            assert r.status == 200 and len(chunks) >= 2 and counted.sampled == 1


async def test_streaming_routes_refuse_a_beam_request(http_api):
    async with aiohttp.ClientSession(headers=KEY) as s:
        r = await s.post(http_api + "/v1/chat/completions", json={
            "model": "chat", "stream": True, "num_beams": 3, "messages": [{"role": "user", "content": "hi"}]})
        err = (await r.json())["error"]
        assert r.status == 400 and err["param"] == "num_beams" and "stream: false" in err["message"]
        for path, extra in (("/Llama_stream", {}), ("/Lumimaid_stream", {"character_name": "Aria"})):
            r = await s.post(http_api + path, json={"input_data": "hi", "num_beams": 2, **extra})
            data = await r.json()
            assert r.status == 422 and data["message"].startswith("num_beams: beam search cannot stream")
        # The llama.cpp model has no beam search: a clear refusal, not a crash.
        r = await s.post(http_api + "/v1/chat/completions", json={
            "model": "roleplay", "num_beams": 2, "messages": [{"role": "user", "content": "hi"}]})
        err = (await r.json())["error"]
        assert r.status == 422 and err["code"] == "beam_unavailable" and "beam search" in err["message"]
