"""Continuous batching of the chat model (transformers) on the real SmolLM2: equality, cancel, cache, adapters."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from engine.backends.base import Sampling
from engine.finetune.options import chat_model_from_yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(1800)     # real generation on 2 shared cores
GREEDY = Sampling(max_new_tokens=40, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain photosynthesis in two sentences.",
    "List three uses for a paperclip.",
    "Why is the sky blue? Answer in detail, please, because I am curious about the physics behind it.",
    "Translate 'good morning' into Spanish and German.",
    "Give me a recipe idea with eggs.",
    "What does a compiler do?",
]


def chat_cfg(**update):
    cfg = chat_model_from_yaml(REPO / "bot.yaml")
    return cfg.model_copy(update={"adapter": None, "active_adapter": None, **update})


def load(**update):
    from engine.backends.transformers_backend import TransformersGenerator

    return TransformersGenerator(chat_cfg(**update), REPO, REPO / "ai_model")   # the shared dequantized copy


@pytest.fixture(scope="module")
def gen():
    g = load(max_batch=8, prompt_cache=True, prefill_chunk=64)
    yield g
    g.close()


def prompt(gen, question: str, history: list[dict] | None = None) -> str:
    return gen.render([{"role": "system", "content": "You are a helpful assistant."}, *(history or []),
                       {"role": "user", "content": question}])


class Job:
    """One generate() call in its own thread, as the engine's workers make them."""

    def __init__(self, gen, text: str, sampling: Sampling = GREEDY, on_piece=None, unbatched: bool = False):
        self.pieces: list[str] = []
        self.cancel = threading.Event()
        self.finish = None
        self.ended_at = None
        self.on_piece = on_piece
        call = gen.generate_unbatched if unbatched else gen.generate
        self.thread = threading.Thread(target=self._run, args=(call, text, sampling))

    def _emit(self, piece: str) -> None:
        self.pieces.append(piece)
        if self.on_piece:
            self.on_piece(self)

    def _run(self, call, text, sampling) -> None:
        self.finish = call(text, sampling, self.cancel, self._emit)
        self.ended_at = time.perf_counter()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def run_all(jobs: list[Job], timeout: float = 900) -> list[Job]:
    for j in jobs:
        j.thread.start()
    for j in jobs:
        j.thread.join(timeout)
        assert not j.thread.is_alive(), "a generation did not end"
    return jobs


def run_one(gen, text: str, sampling: Sampling = GREEDY, unbatched: bool = False) -> Job:
    return run_all([Job(gen, text, sampling, unbatched=unbatched)])[0]


def first_tokens(gen, text: str, n: int) -> str:
    return gen.tokenizer.decode(gen.tokenizer(text, add_special_tokens=False)["input_ids"][:n])


def test_greedy_text_is_the_same_alone_and_in_a_batch_of_8(gen):
    prompts = [prompt(gen, q) for q in QUESTIONS]
    alone = [run_one(gen, p, unbatched=True).text for p in prompts]     # transformers' own generate()
    seen = []
    jobs = run_all([Job(gen, p, on_piece=lambda _j: seen.append(gen.batch_stats().running)) for p in prompts])
    assert max(seen) == 8, "the 8 requests never ran as one batch"
    differ = [i for i, j in enumerate(jobs) if j.text != alone[i]]
    assert len(differ) <= 1, [(alone[i], jobs[i].text) for i in differ]
    for i in differ:     # batched products may round differently, but not within the first 32 tokens
        assert jobs[i].text.startswith(first_tokens(gen, alone[i], 32)), (alone[i], jobs[i].text)
    assert all(j.finish.tokens > 0 and j.finish.reason in ("stop", "length") for j in jobs)


def test_cancel_mid_batch_stops_within_one_step_and_the_others_finish(gen):
    long = Sampling(max_new_tokens=40, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.3)
    at_cancel = {}

    def cancel_after_5(job: Job) -> None:
        if len(job.pieces) == 5:
            at_cancel["pieces"] = 5
            job.cancel.set()

    victim = Job(gen, prompt(gen, "Tell me a very long story about a lighthouse keeper."), long, cancel_after_5)
    others = [Job(gen, prompt(gen, q), long) for q in QUESTIONS[:4]]
    run_all([victim, *others])
    assert victim.finish.reason == "cancelled"
    assert len(victim.pieces) == at_cancel["pieces"], "text came after the cancel"
    assert victim.finish.tokens <= 6
    for j in others:
        assert j.finish.reason in ("stop", "length") and j.finish.tokens > 6
    assert victim.ended_at < max(j.ended_at for j in others)
    assert gen.batch_stats().running == 0


def test_second_turn_starts_from_the_prompt_cache(gen):
    from engine.backends.transformers_batching import BatchLoop
    from engine.backends.transformers_backend import eos_ids

    first_prompt = prompt(gen, "My dog is called Biscuit and she loves to swim in the lake near our house.")
    first = run_one(gen, first_prompt)
    assert first.finish.cached_tokens == 0 or first.finish.cached_tokens < first.finish.prompt_tokens
    hits = gen.batch_stats().cache_hit_tokens
    second_prompt = prompt(gen, "What is my dog called?", [
        {"role": "user", "content": "My dog is called Biscuit and she loves to swim in the lake near our house."},
        {"role": "assistant", "content": first.text}])
    second = run_one(gen, second_prompt)
    n_first = gen.count_tokens(first_prompt)
    assert second.finish.cached_tokens >= n_first, (second.finish.cached_tokens, n_first)
    assert gen.batch_stats().cache_hit_tokens - hits == second.finish.cached_tokens
    # The cached keys/values give the same reply as prefilling everything (32 tokens of greedy text).
    plain = BatchLoop(gen.model, gen.tokenizer, gen.device, max_batch=1, kv_budget=4096, prefill_chunk=256,
                      prompt_cache=False, eos_ids=eos_ids(gen.model, gen.tokenizer))
    try:
        pieces = []
        finish = plain.submit(gen.tokenizer(second_prompt, add_special_tokens=False)["input_ids"], GREEDY,
                              threading.Event(), pieces.append)
    finally:
        plain.close()
    assert finish.cached_tokens == 0
    assert second.text.startswith(first_tokens(gen, "".join(pieces), 32))


def test_eight_mixed_requests_all_finish_and_free_their_rows(gen):
    filler = "The quick brown fox jumps over the lazy dog. "
    jobs = []
    for i, q in enumerate(QUESTIONS):
        s = Sampling(max_new_tokens=4 + 6 * i, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.2)
        jobs.append(Job(gen, prompt(gen, filler * (i * 5) + q), s))   # prompts of ~30 to ~400 tokens
    peak = []
    for j in jobs:
        j.on_piece = lambda _j: peak.append(gen.batch_stats())
    run_all(jobs)
    for i, j in enumerate(jobs):
        assert 0 < j.finish.tokens <= 4 + 6 * i and j.finish.reason in ("stop", "length"), (i, j.finish)
        assert j.finish.prompt_tokens == gen.count_tokens(prompt(gen, filler * (i * 5) + QUESTIONS[i]))
    stats = gen.batch_stats()
    assert stats.running == 0
    assert stats.kv_used_tokens == gen.batch.prefix.tokens      # only cached prefixes hold memory now
    assert all(s.kv_used_tokens <= s.kv_capacity_tokens for s in peak)
    assert max(s.running for s in peak) >= 4


def test_per_request_seeds_give_reproducible_sampled_text(gen):
    def sampled(seed):
        return Sampling(max_new_tokens=24, temperature=0.9, top_p=0.95, top_k=50, repetition_penalty=1.1, seed=seed)

    text = prompt(gen, "Invent a name for a new planet and describe it.")
    alone = [run_one(gen, text, sampled(11)).text for _ in range(2)]
    assert alone[0] == alone[1]
    batches = [run_all([Job(gen, text, sampled(s)) for s in (11, 12, 13)]) for _ in range(2)]
    assert [j.text for j in batches[0]] == [j.text for j in batches[1]]
    assert len({j.text for j in batches[0]}) > 1, "different seeds drew the same text"


def test_an_adapter_still_applies_in_a_batch(gen, tmp_path):
    """A tiny random LoRA (nothing trained): batched output equals unbatched output with it, and differs without."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(gen.model), LoraConfig(r=4, lora_alpha=16, init_lora_weights=False,
                                                               target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "tiny-lora")
    del lora
    cfg_file = tmp_path / "tiny-lora" / "adapter_config.json"
    data = json.loads(cfg_file.read_text())
    data["base_model_name_or_path"] = chat_cfg().model
    cfg_file.write_text(json.dumps(data))

    adapted = load(max_batch=4, adapter=str(tmp_path / "tiny-lora"))
    try:
        assert adapted.info()["adapter"] == "tiny-lora"
        prompts = [prompt(gen, q) for q in QUESTIONS[:4]]
        unbatched = [run_one(adapted, p, unbatched=True).text for p in prompts]
        batched = [j.text for j in run_all([Job(adapted, p) for p in prompts])]
        # 8 tokens of the base model are enough to tell (a random LoRA changes the first words).
        short = Sampling(max_new_tokens=8, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
        base = [j.text for j in run_all([Job(gen, p, short) for p in prompts])]
    finally:
        adapted.close()
    assert sum(b != u for b, u in zip(batched, unbatched)) <= 1, (batched, unbatched)
    assert all(b.startswith(first_tokens(gen, u, 32)) for b, u in zip(batched, unbatched))
    assert all(not a.startswith(b) for b, a in zip(base, batched)), ("the adapter changed nothing", base, batched)


def test_an_unexpected_error_in_a_step_fails_its_request_and_the_loop_serves_on(gen, monkeypatch):
    """A fault outside the model's forward (here: making room in the prompt cache on admission) fails the
    requests in hand; the loop thread lives on for the next ones."""
    from concurrent.futures import ThreadPoolExecutor

    loop, calls = gen.batch, []
    real = loop.prefix.evict_to

    def evict_failing_once(tokens):
        calls.append(tokens)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real(tokens)

    monkeypatch.setattr(loop.prefix, "evict_to", evict_failing_once)
    short = Sampling(max_new_tokens=4, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
    text = prompt(gen, QUESTIONS[0])
    pieces: list[str] = []
    pool = ThreadPoolExecutor(1)
    try:     # bounded waits: a request whose loop died would wait forever
        failed = pool.submit(gen.generate, text, short, threading.Event(), pieces.append)
        with pytest.raises(RuntimeError, match="injected fault"):
            failed.result(timeout=60)
        ok = pool.submit(gen.generate, text, short, threading.Event(), pieces.append).result(timeout=120)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert ok.reason == "length" and "".join(pieces).strip() and len(calls) >= 2


def test_a_plain_forward_works_while_the_loop_is_alive(gen):
    """Beam search, the classifier and fine-tuning call the model directly; the loop must not break that."""
    import torch

    job = Job(gen, prompt(gen, QUESTIONS[1]), Sampling(40, 0.0, 1.0, 0, 1.0))
    job.thread.start()
    ids = gen.tokenizer(prompt(gen, QUESTIONS[0]), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = gen.model.generate(ids, max_new_tokens=8, do_sample=False)
    job.thread.join(120)
    assert out.shape[1] == ids.shape[1] + 8 or gen.tokenizer.eos_token_id in out[0, ids.shape[1]:].tolist()
    assert job.finish.tokens > 0


def test_torch_work_outside_the_loop_leaves_no_thread_team_behind(gen):
    """A long-lived worker thread that ran torch would keep an OpenMP team alive, and with more of them than CPUs
    every team stops spinning and the batch loop's steps slow down (README: Chat model batching)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import torch

    def tasks() -> int:
        """Threads of this process, once a finished thread's team has had 2 s to exit (it does so after it)."""
        deadline = time.monotonic() + 2.0
        while len(os.listdir("/proc/self/task")) != before and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(os.listdir("/proc/self/task"))

    def unbatched():
        return gen.generate_unbatched(prompt(gen, QUESTIONS[0]), Sampling(4, 0.0, 1.0, 0, 1.0), threading.Event(),
                                      lambda _piece: None)

    def raw_matmul():
        a, b = torch.randn(512, 576), torch.randn(576, 1536)
        for _ in range(20):
            a @ b

    with ThreadPoolExecutor(1) as pool:          # like the engine's generation workers
        pool.submit(unbatched).result()
        time.sleep(0.5)
        before = len(os.listdir("/proc/self/task"))
        assert pool.submit(unbatched).result().tokens > 0
        assert tasks() == before
        pool.submit(raw_matmul).result()          # what the engine must not do: the team stays
        assert tasks() > before


def test_on_the_cpu_the_weights_are_packed_for_a_full_batch_unless_turned_off(gen):
    from engine.backends.packed_linear import MklPackedLinear, OneDnnPackedLinear

    assert isinstance(gen.model.get_output_embeddings(), OneDnnPackedLinear)
    assert {m.rows for m in gen.model.modules() if isinstance(m, MklPackedLinear)} == {8}
    assert gen.info()["packed_weights_mib"] > 400         # about the weights' size again (SmolLM2 fp32: 540 MB)
    plain = load(max_batch=8, packed_weights=False)
    try:
        assert not any(isinstance(m, (MklPackedLinear, OneDnnPackedLinear)) for m in plain.model.modules())
        assert plain.info()["packed_weights_mib"] == 0
    finally:
        plain.close()
