"""llama.cpp continuous batching: one context, many sequences (slots), one decode-loop thread, a prompt cache.

Each sequence has a KV stream of its own (``kv_unified`` off), ``n_ctx`` cells long. In one shared pool of
cells a sequence's cells end up interleaved with the others' and out of position order after evictions, and
attention then sums them in another order than alone: greedy replies drifted apart within 100 characters for
half of 8 prompts. In its own stream a sequence reads the same cells in the same order whoever else runs, and
attention reads only that stream (179 vs 136 tok/s aggregate for 8 replies on 2 cores).
"""
from __future__ import annotations

import codecs
import collections
import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.backends.base import BatchStats, Emit, Finish, Sampling
from engine.backends.llamacpp_backend import LlamaText, load_llama
from engine.settings import LlamaCppModel

log = logging.getLogger(__name__)

PENALTY_LAST_N = 64        # llama-cpp-python's default window for repeat_penalty (Llama.last_n_tokens_size)
MIN_P = 0.05               # llama-cpp-python's create_completion default, so sampling matches the one-at-a-time backend
CACHE_SPARE_SEQUENCES = 2  # without kv_budget_tokens: sequences beyond max_batch that keep cached prefixes
HELPER_CTX = 256           # the Llama object only tokenizes; its own context stays minimal


@dataclass(eq=False)
class _Request:
    """One ``generate`` call, from submission to its last token."""

    tokens: list[int]
    sampling: Sampling
    cancel: threading.Event
    emit: Emit
    finish: Finish
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None
    todo: list[int] = field(default_factory=list)    # prompt tokens not yet prefilled
    last: int | None = None                          # sampled token to decode next step
    sampler: object = None                           # llama.cpp's sampler chain; None: greedy, picked here
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=PENALTY_LAST_N))
    decoder: codecs.IncrementalDecoder = field(
        # as llama-cpp-python does, bytes that never complete a character are dropped
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore"))


@dataclass(eq=False)
class _Slot:
    """A llama.cpp sequence: ``tokens[i]`` is what its KV cell at position ``i`` holds."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    used_at: float = 0.0
    req: _Request | None = None


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Reuse:
    """What a slot's cells give a prompt: ``tokens`` from its start on, the common prefix and then ``runs``
    (cache start, prompt start, length) found further on, each to be shifted into place."""

    tokens: int
    runs: tuple[tuple[int, int, int], ...] = ()


def reuse(cached: list[int], prompt: list[int], limit: int, min_run: int) -> Reuse:
    """How much of ``prompt[:limit]`` the cells holding ``cached`` can give. As llama.cpp server's cache reuse:
    after the common prefix, cached tokens that are not next in the prompt are skipped (to be removed), and a
    run of at least ``min_run`` (0: none) that is next is kept, moved to the prompt's positions."""
    head = common_prefix(cached[:limit], prompt)
    c = p = head
    runs = []
    while min_run and c < len(cached) and p < limit:
        try:
            c = cached.index(prompt[p], c)      # the next cached place the prompt's next token could go on from
        except ValueError:
            break
        n = 0
        while c + n < len(cached) and p + n < limit and cached[c + n] == prompt[p + n]:
            n += 1
        if n >= min_run:
            runs.append((c, p, n))
            c, p = c + n, p + n
        else:
            c += 1
    return Reuse(p, tuple(runs))


def sequences(cfg: LlamaCppModel) -> int:
    """Sequences of ``n_ctx`` cells: ``max_batch`` for running replies, the rest keep cached prefixes."""
    if not cfg.prompt_cache:
        return cfg.max_batch
    if cfg.kv_budget_tokens is None:
        return cfg.max_batch + CACHE_SPARE_SEQUENCES
    return max(cfg.max_batch, cfg.kv_budget_tokens // cfg.n_ctx)


class LlamaCppSlots(LlamaText):
    """Up to ``max_batch`` replies decoded together; idle slots keep their prefix for the next turn.

    Every ``generate`` call waits while the loop thread, the only one that
    touches the llama context, prefills its prompt in chunks between decode
    steps of the others and streams its tokens back.
    """

    def __init__(self, cfg: LlamaCppModel, path: Path):
        import llama_cpp

        super().__init__(cfg, path, load_llama(cfg, path, n_ctx=HELPER_CTX))
        self.lib = llama_cpp         # the low-level C API; only the loop thread calls into the context
        self.max_concurrent = cfg.max_batch
        n_slots = min(sequences(cfg), llama_cpp.llama_max_parallel_sequences())
        self._step_tokens = cfg.prefill_chunk + cfg.max_batch
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_slots * cfg.n_ctx
        params.n_batch = self._step_tokens
        params.n_ubatch = self._step_tokens
        params.n_seq_max = n_slots
        params.kv_unified = False       # a stream per sequence: see the module docstring
        params.offload_kqv = cfg.offload_kqv
        params.no_perf = True
        threads = cfg.n_threads or self.llm.n_threads
        params.n_threads = threads
        params.n_threads_batch = cfg.n_threads or self.llm.n_threads_batch
        self._ctx = llama_cpp.llama_init_from_model(self.llm._model.model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create {n_slots} sequences of {cfg.n_ctx} cells")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.kv_capacity = llama_cpp.llama_n_ctx(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self._step_tokens, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        # Every call into the library gives up the GIL and must win it back; with the event loop busy that
        # wait is up to a switch interval (5 ms) per call. Token facts are fixed, so they are asked once.
        self._eog = {t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)}
        self._pieces: dict[int, bytes] = {}
        self._slots = [_Slot(seq) for seq in range(n_slots)]
        self._pending: collections.deque[_Request] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._hits = 0
        self._prompted = 0
        self._moves = 0             # replies moved to close a gap between running sequences (_compact)
        self._min_run = cfg.cache_reuse if llama_cpp.llama_memory_can_shift(self._mem) else 0
        self._thread = threading.Thread(target=self._loop, name=f"llamacpp-slots-{path.stem}", daemon=True)
        self._thread.start()

    # the calling threads -----------------------------------------------------------------------

    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if not tokens:
            raise ValueError("empty prompt")
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the context of {self.n_ctx}")
        req = _Request(tokens, sampling, cancel, emit, Finish(prompt_tokens=len(tokens)))
        with self._wake:
            if self._closed:
                raise RuntimeError("the model is closed")
            self._pending.append(req)
            self._wake.notify()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.finish

    def batch_stats(self) -> BatchStats:
        slots = list(self._slots)
        return BatchStats(running=sum(s.req is not None for s in slots),
                          kv_used_tokens=sum(len(s.tokens) for s in slots),
                          kv_capacity_tokens=self.kv_capacity,
                          cache_hit_tokens=self._hits, prompt_tokens=self._prompted)

    def info(self) -> dict:
        return {**super().info(), "slots": len(self._slots), "kv_budget_tokens": self.kv_capacity,
                "prompt_cache": self.cfg.prompt_cache, "cache_reuse": self._min_run}

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        C = self.lib
        C.llama_batch_free(self._batch)
        C.llama_free(self._ctx)
        self._ctx = None
        self.llm.close()

    # the loop thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._wait_for_work():
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 - the replies in hand fail; the model serves the next ones
                    log.exception("llama.cpp step failed")
                    self._fail_all(RuntimeError(f"decode step failed: {e}"))
                    for s in self._slots:       # what the failed step left in the cells is unknown
                        self._evict(s)
        except Exception as e:  # noqa: BLE001 - the context itself failed: fail every waiting call, not hang it
            log.exception("llama.cpp decode loop failed")
            with self._wake:
                self._closed = True
            self._fail_all(RuntimeError(f"decode loop failed: {e}"))
            return
        self._fail_all(RuntimeError("the model is closed"))

    def _wait_for_work(self) -> bool:
        with self._wake:
            while not self._closed and not self._pending and not self._running():
                self._wake.wait()
            return not self._closed

    def _running(self) -> list[_Slot]:
        return [s for s in self._slots if s.req is not None]

    def _step(self) -> None:
        self._admit()
        for s in self._running():
            if s.req.cancel.is_set():
                self._end(s, "cancelled")
        running = self._running()
        if not running:
            return
        self._compact(running)
        running = self._running()
        # Decode tokens of the running replies first, then prompt chunks in arrival order.
        decode: list[tuple[_Slot, int, bool]] = [(s, s.req.last, True) for s in running if not s.req.todo]
        prefill: list[tuple[_Slot, int, bool]] = []
        chunk = self.cfg.prefill_chunk
        for s in sorted((s for s in running if s.req.todo), key=lambda s: s.used_at):
            take = s.req.todo[:chunk]
            completes = len(take) == len(s.req.todo)
            prefill += [(s, t, completes and i == len(take) - 1) for i, t in enumerate(take)]
            chunk -= len(take)
            if chunk <= 0:
                break
        try:
            self._decode(decode + prefill, len(decode))
        except Exception as e:  # noqa: BLE001 - this batch's replies fail; the loop serves the next ones
            log.error("llama.cpp: %s", e)
            for s in self._running():
                self._end(s, "error", error=e)

    def _admit(self) -> None:
        with self._wake:
            for req in [r for r in self._pending if r.cancel.is_set()]:
                self._pending.remove(req)
                req.finish.reason = "cancelled"
                req.done.set()
            while self._pending and len(self._running()) < self.cfg.max_batch:
                req = self._pending[0]
                try:
                    req.sampler = self._sampler(req.sampling)
                except Exception as e:  # noqa: BLE001 - one request's bad sampling fails that request, not the model
                    self._pending.popleft()
                    req.error = e
                    req.done.set()
                    continue
                self._assign(req)       # should it fail, the request is still pending: _loop fails it
                self._pending.popleft()

    def _assign(self, req: _Request) -> None:
        """Give ``req`` a sequence that already holds as much of its prompt as any slot does."""
        C = self.lib
        idle = [s for s in self._slots if s.req is None]
        donor, got = None, Reuse(0)
        if self.cfg.prompt_cache:   # the last prompt token is always decoded: it gives the logits
            limit = len(req.tokens) - 1
            plans = {s: reuse(s.tokens, req.tokens, limit, self._min_run) for s in self._slots}
            donor = max(self._slots, key=lambda s: (plans[s].tokens, s.req is None, s.used_at))
            got = plans[donor]
        keep = got.tokens
        if keep and donor.req is None and 2 * keep >= len(donor.tokens):
            target = donor                    # the same conversation's next turn: continue in place
        else:   # next to the running ones (see _compact), then an empty slot, else the LRU prefix
            running = [s.seq for s in self._slots if s.req is not None]
            near = range(min(running) - 1, max(running) + 2) if running else range(len(self._slots))
            target = min(idle, key=lambda s: (s.seq not in near, bool(s.tokens), s.used_at))
        if target is not donor:
            self._evict(target)
            if keep:   # a shared prefix (the same card, another user): streams are copied whole, then cut
                C.llama_memory_seq_cp(self._mem, donor.seq, target.seq, -1, -1)
                target.tokens = list(donor.tokens)
        for c, p, n in got.runs:   # the cells between go; the run's cells take the prompt's positions
            C.llama_memory_seq_rm(self._mem, target.seq, p, c)
            C.llama_memory_seq_add(self._mem, target.seq, c, c + n, p - c)
        C.llama_memory_seq_rm(self._mem, target.seq, keep, -1)
        target.tokens = req.tokens[:keep]
        req.todo = req.tokens[keep:]
        req.finish.cached_tokens = keep
        self._hits += keep
        self._prompted += len(req.tokens)
        target.req = req
        target.used_at = time.monotonic()

    def _compact(self, running: list[_Slot]) -> None:
        """Keep the running sequences' ids consecutive: llama.cpp decodes the streams on either side of a gap
        as separate ubatches, each reading all the weights again (8 replies on 2 cores: 48-53 ms a step
        instead of 37). The highest running reply moves into the lowest gap; its old stream keeps a copy
        of the conversation as a cached prefix, and the gap's own cached prefix is given up."""
        seqs = sorted(s.seq for s in running)
        while seqs[-1] - seqs[0] + 1 != len(seqs):
            gap = next(q for q in range(seqs[0], seqs[-1]) if self._slots[q].req is None)
            src, dst = self._slots[seqs.pop()], self._slots[gap]
            self._evict(dst)
            self.lib.llama_memory_seq_cp(self._mem, src.seq, dst.seq, -1, -1)   # whole stream, across streams
            dst.tokens, dst.req, dst.used_at = list(src.tokens), src.req, src.used_at
            src.req = None
            if not self.cfg.prompt_cache:
                self._evict(src)
            self._moves += 1
            seqs = sorted(seqs + [gap])

    def _evict(self, slot: _Slot) -> None:
        self.lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.tokens = []

    def _decode(self, entries: list[tuple[_Slot, int, bool]], n_decode: int) -> None:
        """One ``llama_decode`` of ``entries`` (decode tokens first), then sample where logits were asked for.

        A sequence's stream cannot overflow: prompts are shorter than ``n_ctx`` and a reply ends one cell
        before it (``_sample``), so a failed decode is an error of this batch.
        """
        C, b = self.lib, self._batch
        for i, (s, tok, logits) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = len(s.tokens)
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = s.seq
            b.logits[i] = logits
            s.tokens.append(tok)      # positions advance as each token of a sequence is placed
        b.n_tokens = len(entries)
        rc = C.llama_decode(self._ctx, b)
        if rc != 0:
            for s, _, _ in reversed(entries):
                s.tokens.pop()
            raise RuntimeError(f"llama_decode returned {rc} for {len(entries)} tokens")
        for s, n in collections.Counter(s for s, _, logits in entries[n_decode:]).items():
            del s.req.todo[:n]
        asked = [(i, s) for i, (s, _, logits) in enumerate(entries) if logits]
        rows = None            # llama.cpp keeps the logits of the entries that asked, in batch order
        if any(s.req.sampler is None for _, s in asked):
            rows = np.ctypeslib.as_array(C.llama_get_logits(self._ctx), shape=(len(asked), self._n_vocab))
        for out, (i, s) in enumerate(asked):
            self._sample(s, i, rows[out] if s.req.sampler is None else None)

    def _sample(self, s: _Slot, index: int, row) -> None:
        C, req = self.lib, s.req
        tok = C.llama_sampler_sample(req.sampler, self._ctx, index) if row is None else self._greedy(req, row)
        if tok in self._eog:
            self._end(s, "stop")
            return
        req.finish.tokens += 1
        req.last = tok
        piece = self._pieces.get(tok)
        if piece is None:
            n = C.llama_token_to_piece(self._vocab, tok, self._piece, len(self._piece), 0, False)
            piece = self._pieces[tok] = self._piece.raw[:max(n, 0)]
        text = req.decoder.decode(piece)
        if text and not self._emit(req, text):
            self._end(s, "cancelled")
        elif req.finish.tokens >= req.sampling.max_new_tokens or len(s.tokens) + 1 >= self.n_ctx:
            self._end(s, "length")

    @staticmethod
    def _greedy(req: _Request, row) -> int:
        """The sampler chain's penalties-then-greedy on a row of logits, in numpy: the chain copies all
        49,152 candidates for every token and each call must win the GIL back (8 replies: 2.7 of a 35 ms
        step); this reads them in place. Same rule: a token among the last 64 picked has its
        logit multiplied by the penalty if <= 0, else divided; the first highest wins."""
        penalty = req.sampling.repetition_penalty
        if penalty == 1.0 or not req.recent:
            tok = int(row.argmax())
        else:
            seen = np.fromiter(set(req.recent), dtype=np.intp)
            kept = row[seen]
            row[seen] = np.where(kept <= 0, kept * penalty, kept / penalty)
            tok = int(row.argmax())
            row[seen] = kept
        req.recent.append(tok)
        return tok

    def _emit(self, req: _Request, text: str) -> bool:
        try:
            req.emit(text)
            return True
        except Exception:  # noqa: BLE001 - e.g. the caller's event loop is gone: nobody reads this reply any more
            req.cancel.set()
            return False

    def _end(self, s: _Slot, reason: str, error: Exception | None = None) -> None:
        req = s.req
        tail = req.decoder.decode(b"", final=True)
        if tail and reason in ("stop", "length"):
            self._emit(req, tail)
        req.finish.reason = reason
        req.error = error
        self._free_sampler(req)
        s.req = None
        s.used_at = time.monotonic()
        if error is not None or not self.cfg.prompt_cache:
            self._evict(s)
        req.done.set()

    def _free_sampler(self, req: _Request) -> None:
        if req.sampler is not None:
            self.lib.llama_sampler_free(req.sampler)
            req.sampler = None

    def _sampler(self, s: Sampling):
        """The chain for a sampled reply; None for a greedy one (``_greedy``)."""
        C = self.lib
        if s.temperature <= 0:
            if s.repetition_penalty <= 0:
                raise ValueError(f"repetition_penalty must be > 0, not {s.repetition_penalty}")
            return None
        params = C.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = C.llama_sampler_chain_init(params)
        try:   # each link joins the chain at once, so freeing the chain frees every link made so far
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_penalties(
                self._n_vocab, PENALTY_LAST_N, s.repetition_penalty, 0.0, 0.0))
            seed = s.seed if s.seed is not None else (self.cfg.seed if self.cfg.seed is not None else C.LLAMA_DEFAULT_SEED)
            for make in (lambda: C.llama_sampler_init_top_k(s.top_k), lambda: C.llama_sampler_init_top_p(s.top_p, 1),
                         lambda: C.llama_sampler_init_min_p(MIN_P, 1), lambda: C.llama_sampler_init_temp(s.temperature),
                         lambda: C.llama_sampler_init_dist(seed & 0xFFFFFFFF)):
                C.llama_sampler_chain_add(chain, make())
            return chain
        except Exception:
            C.llama_sampler_free(chain)
            raise

    def _fail_all(self, error: Exception) -> None:
        with self._wake:
            waiting = list(self._pending)
            self._pending.clear()
        for s in self._running():
            waiting.append(s.req)
            s.req = None
        for req in waiting:
            self._free_sampler(req)
            req.error = error
            req.done.set()
