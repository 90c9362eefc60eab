"""The llama.cpp slot backend on the real SmolLM2 GGUF: batched = alone, cancel, prompt cache, KV pressure, ModelQueue."""
from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from engine.backends.base import Finish, Sampling
from engine.backends.llamacpp_slots import LlamaCppSlots, Reuse, reuse
from engine.errors import EngineBusy, GenerationTimeout
from engine.scheduler import ModelQueue, Stats
from engine.settings import resolve_model_path
from tests.conftest import ROOT, make_config

GREEDY = Sampling(max_new_tokens=40, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.1)
TOPICS = ["a dragon who bakes bread", "the history of the bicycle", "why the sky is blue", "a robot learning to paint",
          "how bees make honey", "a lighthouse keeper's night", "the rules of chess", "a trip to the moon"]
CARD = ("You are Mira, a ship's navigator on the airship Kestrel. " +
        "The Kestrel sails the cloud sea between floating islands; its crew trades spices, maps and rumours. " * 12)


def slots(**over) -> LlamaCppSlots:
    cfg = make_config().models.roleplay
    cfg = cfg.model_copy(update={"max_batch": 8, "prompt_cache": True, "kv_budget_tokens": None,
                                 "prefill_chunk": 256, "n_threads": 1, **over})
    return LlamaCppSlots(cfg, resolve_model_path(cfg.model_path, ROOT))


@pytest.fixture(scope="module")
def gen():
    g = slots()
    yield g
    g.close()


@dataclass
class Run:
    pieces: list[str] = field(default_factory=list)
    finish: Finish | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def prompt(g, user: str, system: str = "You are a helpful storyteller.", history: tuple = ()) -> str:
    msgs = [{"role": "system", "content": system}, *history, {"role": "user", "content": user}]
    return g.render(msgs)


def run_one(g, text: str, sampling: Sampling = GREEDY, run: Run | None = None, cancel_after: int | None = None) -> Run:
    run = run or Run()

    def emit(piece: str) -> None:
        run.pieces.append(piece)
        if cancel_after is not None and len(run.pieces) >= cancel_after:
            run.cancel.set()

    run.finish = g.generate(text, sampling, run.cancel, emit)
    return run


def run_together(g, texts: list[str], sampling: Sampling = GREEDY, **kw) -> list[Run]:
    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(lambda t: run_one(g, t, sampling, **kw), texts))


def wait_idle(g, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while g.batch_stats().running and time.monotonic() - t0 < timeout:
        time.sleep(0.01)


def test_greedy_text_is_the_same_alone_and_in_a_batch_of_8(gen):
    texts = [prompt(gen, f"Tell me a story about {t}.") for t in TOPICS]
    alone = [run_one(gen, t) for t in texts]
    together = run_together(gen, texts)
    drifted = 0
    for a, b in zip(alone, together):
        assert a.finish.tokens > 0 and b.finish.tokens > 0
        assert "".join(a.pieces[:32]) == "".join(b.pieces[:32]), (a.text, b.text)
        drifted += a.text != b.text
    assert drifted <= 1


def test_replies_left_running_after_early_finishers_are_moved_together_and_read_the_same():
    # llama.cpp splits a decode step at a gap in the running sequences' ids, reading the weights once more per
    # part; the backend closes gaps by moving a reply to another sequence, which must not change its text.
    g = slots()
    steps: list[list[int]] = []
    decode = g._decode

    def watched(entries, n_decode):
        steps.append(sorted({s.seq for s, _, _ in entries}))
        decode(entries, n_decode)

    g._decode = watched
    try:
        lengths = [2, 40, 5, 40, 3, 40, 9, 40]
        texts = [prompt(g, f"Tell me a story about {t}.") for t in TOPICS]
        alone = [run_one(g, t, Sampling(n, 0.0, 1.0, 0, 1.1)) for t, n in zip(texts, lengths)]
        steps.clear()
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda tn: run_one(g, tn[0], Sampling(tn[1], 0.0, 1.0, 0, 1.1)),
                                     zip(texts, lengths)))
        assert g._moves > 0                        # the early finishers left gaps
        assert all(seqs == list(range(seqs[0], seqs[0] + len(seqs))) for seqs in steps), steps
        assert [r.text for r in together] == [r.text for r in alone]
    finally:
        g.close()


def test_cancel_mid_batch_stops_within_one_step_and_the_others_finish(gen):
    sampling = Sampling(max_new_tokens=64, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.1)
    texts = [prompt(gen, f"Write a very long essay about {t}.") for t in TOPICS]
    runs = [Run() for _ in texts]
    with ThreadPoolExecutor(len(texts)) as pool:
        futures = [pool.submit(run_one, gen, t, sampling, r, 6 if i == 3 else None)
                   for i, (t, r) in enumerate(zip(texts, runs))]
        for f in futures:
            f.result(timeout=120)
    cancelled = runs[3]
    assert cancelled.finish.reason == "cancelled"
    assert cancelled.finish.tokens == 6          # set during token 6's emit, seen before token 7
    others = [r for i, r in enumerate(runs) if i != 3]
    assert all(r.finish.reason in ("stop", "length") for r in others)
    assert max(r.finish.tokens for r in others) > 6
    wait_idle(gen)
    assert gen.batch_stats().running == 0


def test_second_turn_hits_the_prompt_cache_after_another_long_conversation(gen):
    first = prompt(gen, "Where are we sailing today?", system=CARD)
    turn1 = run_one(gen, first)
    other_card = "You are Tomas, a lighthouse keeper. " + "The sea is grey and the lamp must never go out. " * 30
    run_one(gen, prompt(gen, "Tell me about the storm last night.", system=other_card))
    before = gen.batch_stats().cache_hit_tokens
    history = ({"role": "user", "content": "Where are we sailing today?"},
               {"role": "assistant", "content": turn1.text})
    turn2 = run_one(gen, prompt(gen, "And what cargo do we carry?", system=CARD, history=history))
    assert turn1.finish.prompt_tokens > 250
    assert turn2.finish.cached_tokens >= turn1.finish.prompt_tokens
    assert turn2.finish.cached_tokens < turn2.finish.prompt_tokens
    assert gen.batch_stats().cache_hit_tokens - before == turn2.finish.cached_tokens


def test_reuse_keeps_the_prefix_then_runs_that_follow_a_removed_block():
    cached = [1, 2, 3, 50, 51, 52, 10, 11, 12, 13, 14, 60, 20, 21, 22, 23]
    assert reuse(cached, [1, 2, 3, 10, 11, 12, 13, 14, 20, 21, 22, 23, 99], 12, 3) == Reuse(12, ((6, 3, 5), (12, 8, 4)))
    assert reuse(cached, [1, 2, 3, 10, 11, 12, 13, 14, 20, 21, 22, 23, 99], 12, 0) == Reuse(3)       # off
    assert reuse(cached, [1, 2, 3, 10, 11, 12, 13, 14, 20, 21, 22, 23, 99], 12, 6) == Reuse(3)       # runs too short
    assert reuse(cached, [1, 2, 3, 10, 11, 12, 13, 14, 20, 21, 22, 23, 99], 9, 3) == Reuse(8, ((6, 3, 5),))  # limit
    # Text the cache never held (a block that came in) ends the reuse: the rest is prefilled.
    assert reuse(cached, [1, 2, 3, 70, 71, 72, 10, 11, 12, 13, 14, 99], 11, 3) == Reuse(3)
    assert reuse(cached, cached + [99], 16, 3) == Reuse(16)                                      # all of it


def test_after_a_lorebook_block_goes_the_cells_that_follow_are_shifted_into_place():
    """The next turn without a block the first had (a lorebook entry no longer triggered) reads the rest of
    the card from the cache; those cells then stand for exactly the new prompt."""
    lore = "Lore: the old lighthouse on the northern cape has been dark for ten years, since the storm. " * 4
    g = slots(cache_reuse=64)
    try:
        # As a card's system text is laid out: blocks joined by blank lines (engine/prompts.py).
        first = prompt(g, "Where are we?", system="\n\n".join(["You are a storyteller.", lore.strip(), CARD]))
        run_one(g, first)
        second = prompt(g, "And what now?", system="\n\n".join(["You are a storyteller.", CARD]))
        turn = run_one(g, second)
        assert turn.finish.cached_tokens > 200 and turn.text.strip()     # the card, not only the few shared tokens
        again = run_one(g, second)       # the shifted cells are the prompt they now stand for: read in full
        assert again.finish.cached_tokens == turn.finish.prompt_tokens - 1 and again.text == turn.text
    finally:
        g.close()
    plain = slots(cache_reuse=0)
    try:
        run_one(plain, first)
        assert run_one(plain, second).finish.cached_tokens < 20      # the first sentence
    finally:
        plain.close()


def test_a_request_with_unusable_sampling_fails_alone_and_the_model_serves_on(gen):
    bad = Sampling(max_new_tokens=8, temperature=0.7, top_p=None, top_k=None, repetition_penalty=1.1)
    text = prompt(gen, "Say hello.")
    with pytest.raises((TypeError, ValueError, ctypes.ArgumentError)):
        run_one(gen, text, bad)
    ok = run_one(gen, text)
    assert ok.finish.reason in ("stop", "length") and ok.text.strip()


def test_an_unexpected_error_in_a_step_fails_its_reply_and_the_model_serves_on(gen, monkeypatch):
    """A fault outside llama_decode (here: placing a reply in a slot) must not end the model for the process."""
    text = prompt(gen, "Say hello.")
    real, calls = gen._assign, []

    def assign_failing_once(req):
        calls.append(req)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real(req)

    monkeypatch.setattr(gen, "_assign", assign_failing_once)
    pool = ThreadPoolExecutor(1)
    try:     # bounded waits: a request lost between the queue and a slot would wait forever
        failed = pool.submit(run_one, gen, text)
        with pytest.raises(RuntimeError, match="injected fault"):
            failed.result(timeout=60)
        ok = pool.submit(run_one, gen, text).result(timeout=120)
    finally:
        for req in calls:
            req.done.set()
        pool.shutdown(wait=False, cancel_futures=True)
    assert ok.finish.reason in ("stop", "length") and ok.text.strip() and len(calls) == 2


def test_two_users_share_a_cards_prefix(gen):
    card = "You are Oda, an innkeeper of the Green Lantern. " + "Travellers bring news from the mountain passes. " * 20
    a = run_one(gen, prompt(gen, "Good evening! A room, please.", system=card))
    b = run_one(gen, prompt(gen, "Any news from the passes?", system=card))
    assert a.finish.cached_tokens < 50
    assert b.finish.cached_tokens > 200     # the whole card, served from the first user's cells


def test_eight_mixed_lengths_all_finish_and_free_their_slots():
    g = slots(prompt_cache=False)
    try:
        lengths = [1, 3, 8, 16, 24, 40, 5, 12]
        texts = [prompt(g, f"Tell me about {t}. " + "Please be detailed. " * (i * 8)) for i, t in enumerate(TOPICS)]
        runs: list[Run] = []
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(run_one, g, t, Sampling(n, 0.8, 0.95, 40, 1.1, seed=i))
                       for i, (t, n) in enumerate(zip(texts, lengths))]
            runs = [f.result(timeout=120) for f in futures]
        for r, n in zip(runs, lengths):
            assert r.finish.reason in ("stop", "length") and 0 < r.finish.tokens <= n
            assert r.finish.reason == "stop" or r.finish.tokens == n
        stats = g.batch_stats()
        assert stats.running == 0 and stats.kv_used_tokens == 0    # without the cache every cell is freed
        assert stats.prompt_tokens == sum(r.finish.prompt_tokens for r in runs) and stats.cache_hit_tokens == 0
    finally:
        g.close()


def test_a_reply_stops_at_its_sequences_end_and_the_least_recent_prefix_makes_way():
    g = slots(n_ctx=256, max_batch=2)          # 2 running + 2 spare sequences of 256 cells
    try:
        long = run_one(g, prompt(g, "Go on and on. " * 40), Sampling(200, 0.0, 1.0, 0, 1.0))
        assert long.finish.reason == "length" and long.finish.prompt_tokens + long.finish.tokens <= 256
        with pytest.raises(ValueError, match="does not fit"):
            run_one(g, prompt(g, "x " * 300))
        cards = [f"You are guide {i}. " + f"Guide {i} knows the valley paths and the river fords well. " * 8
                 for i in range(5)]
        firsts = [run_one(g, prompt(g, "Hello!", system=c), Sampling(4, 0.0, 1.0, 0, 1.0)) for c in cards]
        assert all(f.finish.cached_tokens < 40 for f in firsts)
        latest = run_one(g, prompt(g, "Hello again!", system=cards[4]), Sampling(4, 0.0, 1.0, 0, 1.0))
        oldest = run_one(g, prompt(g, "Hello again!", system=cards[0]), Sampling(4, 0.0, 1.0, 0, 1.0))
        assert latest.finish.cached_tokens > 60          # its card is still held
        assert oldest.finish.cached_tokens < 40          # four sequences, five cards: the first went
        assert g.batch_stats().kv_used_tokens <= g.kv_capacity
    finally:
        g.close()


def test_utf8_pieces_split_across_tokens_arrive_whole(gen):
    run = run_one(gen, prompt(gen, "한국어로 짧게 인사해 주세요. 안녕하세요!"),
                  Sampling(24, 0.0, 1.0, 0, 1.0))
    assert run.finish.tokens > 0
    assert all("\ufffd" not in p for p in run.pieces)


async def _drain(queue: ModelQueue, text: str, sampling: Sampling, cancel: threading.Event | None = None) -> Stats:
    stats = Stats()
    async for _ in queue.stream(text, sampling, cancel or threading.Event(), stats):
        pass
    return stats


async def test_model_queue_runs_a_batch_refuses_beyond_the_queue_and_times_out(gen):
    queue = ModelQueue("roleplay", gen, concurrency=1, queue_limit=0, timeout_s=60)
    long = Sampling(120, 0.0, 1.0, 0, 1.1)
    try:
        tasks = [asyncio.create_task(_drain(queue, prompt(gen, f"Write a long essay about {t}."), long))
                 for t in TOPICS]
        t0 = time.monotonic()
        while queue.running < 8 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        assert queue.running == 8                 # the whole batch runs at once
        with pytest.raises(EngineBusy):
            await _drain(queue, prompt(gen, "hi"), GREEDY)
        done = await asyncio.gather(*tasks)
        assert all(s.finish.reason in ("stop", "length") for s in done)
    finally:
        queue.close()
    quick = ModelQueue("roleplay", gen, concurrency=1, queue_limit=4, timeout_s=0.3)
    try:
        with pytest.raises(GenerationTimeout):
            await _drain(quick, prompt(gen, "Write a very long essay about everything."), Sampling(2000, 0.0, 1.0, 0, 1.1))
        t0 = time.monotonic()
        while quick.running and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.01)
        assert quick.running == 0 and gen.batch_stats().running == 0
    finally:
        quick.close()


def test_greedy_picks_what_llama_cpps_penalties_and_greedy_chain_picks():
    """Greedy replies skip the sampler chain (_greedy reads the logits in place); on random logits with
    repeated, negative and tied values its token is the chain's, for every penalty and history length."""
    import llama_cpp as C
    import numpy as np

    from engine.backends.llamacpp_slots import PENALTY_LAST_N, _Request

    rng = np.random.default_rng(0)
    n_vocab = 5000
    picks = set()
    for trial in range(80):
        penalty = [1.0, 1.1, 1.21, 1.5, 0.8][trial % 5]
        history = rng.integers(0, 60, size=int(rng.integers(1, 150))).tolist()
        # The top token was picked once, as long ago as the 64-token window still reaches (or just beyond it).
        back = min(len(history), 64 + trial % 2)
        history[-back] = top = 100 + trial
        logits = rng.normal(0, 2, n_vocab).astype(np.float32)
        logits[top] = logits.max() + 0.1
        logits[rng.integers(0, 60, 5)] = logits[top]            # ties between penalized and other tokens
        if trial % 3 == 0:
            logits -= logits.max() + 1.0                        # all negative: the penalty multiplies

        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, penalty, 0.0, 0.0))
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        for tok in history:
            C.llama_sampler_accept(chain, tok)
        data = (C.llama_token_data * n_vocab)(*[C.llama_token_data(i, float(x), 0.0) for i, x in enumerate(logits)])
        cur = C.llama_token_data_array(data=data, size=n_vocab, selected=-1, sorted=False)
        C.llama_sampler_apply(chain, ctypes.byref(cur))
        expected = data[cur.selected].id
        C.llama_sampler_free(chain)

        req = _Request(tokens=[1], sampling=Sampling(8, 0.0, 1.0, 0, penalty), cancel=threading.Event(),
                       emit=lambda _t: None, finish=Finish())
        req.recent.extend(history)
        row = logits.copy()
        assert LlamaCppSlots._greedy(req, row) == expected, (trial, penalty, len(history))
        assert np.array_equal(row, logits)                      # the logits are left as they were
        picks.add(expected == top)
    assert picks == {True, False}                               # both outcomes were put to the test
