"""Continuous batching for a transformers causal LM: one decode-loop thread joins concurrent generate() calls.

Each ``submit`` call (one per engine worker thread) queues a request and
blocks until it ends. The loop thread owns the model: every step it prefills
up to ``prefill_chunk`` prompt tokens of newcomers (each with its own cache),
moves a newcomer whose prompt is done into the running batch, and decodes one
token for every running row. The batch is one left-padded ``DynamicCache``
with an attention mask and position ids that skip the padding; finished rows
leave at once (``batch_select_indices``), and their keys/values go to the
prompt cache when it is on.
"""
from __future__ import annotations

import logging
import threading
from collections import deque

from engine.backends.base import BatchStats, Emit, Finish, Sampling
from engine.backends.hf_text import IncrementalDecoder
from engine.backends.prefix_cache import PrefixCache
from engine.backends.torch_sampling import TokenPicker

log = logging.getLogger(__name__)


def batchable(model) -> str | None:
    """Why this model cannot use the padded-cache loop (None: it can).

    Sliding-window and other non-plain caches drop or place keys in ways a
    left-padded join does not follow.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    cache = DynamicCache(config=config)
    kinds = {type(layer) for layer in getattr(cache, "layers", [])}
    if any(k is not DynamicLayer for k in kinds):
        return f"its cache layers are {', '.join(sorted(k.__name__ for k in kinds))}, not plain DynamicLayer"
    return None


class _Request:
    """One generate() call as the loop sees it."""

    def __init__(self, ids: list[int], sampling: Sampling, cancel: threading.Event, emit: Emit, tokenizer,
                 picker: TokenPicker):
        self.ids, self.sampling, self.cancel = ids, sampling, cancel
        self.decoder = IncrementalDecoder(tokenizer, emit)
        self.picker = picker
        self.out: list[int] = []
        self.cache = None          # its own DynamicCache while the prompt is prefilled
        self.prefilled = 0         # prompt tokens whose keys/values exist
        self.cached = 0            # of those, how many came from the prompt cache
        self.next_token: int | None = None    # sampled, not yet fed to the model
        self.need = len(ids) + sampling.max_new_tokens     # KV cells it may grow to
        self.done = threading.Event()
        self.finish: Finish | None = None
        self.error: BaseException | None = None


class BatchLoop:
    """The decode loop of one model; see the module docstring."""

    def __init__(self, model, tokenizer, device, *, max_batch: int, kv_budget: int, prefill_chunk: int,
                 prompt_cache: bool, eos_ids: set[int]):
        import torch
        from transformers import DynamicCache

        self.torch, self.DynamicCache = torch, DynamicCache
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_batch, self.kv_budget, self.prefill_chunk = max_batch, kv_budget, prefill_chunk
        self.eos_ids = eos_ids
        self.prefix = PrefixCache(torch) if prompt_cache else None
        self._cv = threading.Condition()
        self._incoming: deque[_Request] = deque()
        self._prefilling: deque[_Request] = deque()
        self._rows: list[_Request] = []
        self._cache = None         # the running batch's DynamicCache, [rows, heads, length, dim] per layer
        self._mask = None          # [rows, length] 1 where a row has a real token
        self._thread: threading.Thread | None = None
        self._closed = False
        self.hit_tokens = 0
        self.prompt_tokens = 0

    # callers (engine worker threads) -------------------------------------------------------------

    def submit(self, ids: list[int], sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        """Queue a request and block until it ends (or is cancelled: seen within one step)."""
        if not ids:
            raise ValueError("empty prompt: nothing to continue from")
        req = _Request(ids, sampling, cancel, emit, self.tokenizer,
                       TokenPicker(self.torch, sampling, ids, self.device))
        with self._cv:
            if self._closed:
                raise RuntimeError("the model is closed")
            self._incoming.append(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batch-loop", daemon=True)
                self._thread.start()
            self._cv.notify()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.finish

    def stats(self) -> BatchStats:
        rows, mask, prefilling = self._rows, self._mask, list(self._prefilling)
        used = (mask.numel() if mask is not None and rows else 0) + sum(r.prefilled for r in prefilling)
        return BatchStats(running=len(rows) + len(prefilling),
                          kv_used_tokens=used + (self.prefix.tokens if self.prefix is not None else 0),
                          kv_capacity_tokens=self.kv_budget, cache_hit_tokens=self.hit_tokens,
                          prompt_tokens=self.prompt_tokens)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # the loop thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                with self._cv:
                    while not (self._incoming or self._prefilling or self._rows or self._closed):
                        self._cv.wait()
                    if self._closed:
                        break
                    self._admit()
                with self.torch.inference_mode():
                    self._prefill_step()
                    self._decode_step()
            except Exception as e:  # noqa: BLE001 - a failed step fails its requests, not the loop
                log.exception("batch step failed; failing %d running requests", len(self._rows) + len(self._prefilling))
                self._fail_running(e)
        with self._cv:
            pending = list(self._incoming) + list(self._prefilling) + self._rows
            self._incoming.clear()
        self._fail(pending, RuntimeError("the model was closed"))
        self._rows, self._cache, self._mask = [], None, None
        if self.prefix is not None:
            self.prefix.clear()

    def _reserved(self, extra: _Request | None = None) -> int:
        """KV cells the admitted requests may grow to, padded to the longest (the batch is left-padded)."""
        reqs = self._rows + list(self._prefilling) + ([extra] if extra else [])
        return len(reqs) * max((r.need for r in reqs), default=0)

    def _admit(self) -> None:
        """Move queued requests into prefill while the batch and the KV budget allow (first come, first served)."""
        while self._incoming:
            req = self._incoming[0]
            if req.cancel.is_set():
                self._incoming.popleft()
                self._end(req, "cancelled")
                continue
            running = len(self._rows) + len(self._prefilling)
            if running >= self.max_batch:
                return
            if running and self._reserved(req) > self.kv_budget:
                return
            self._incoming.popleft()
            self._prefilling.append(req)
            self.prompt_tokens += len(req.ids)
        if self.prefix is not None:
            self.prefix.evict_to(max(self.kv_budget - self._reserved(), 0))

    def _prefill_step(self) -> None:
        """Prefill up to ``prefill_chunk`` prompt tokens, oldest newcomer first."""
        budget = self.prefill_chunk
        while self._prefilling and budget > 0:
            req = self._prefilling[0]
            if req.cancel.is_set():
                self._prefilling.popleft()
                self._end(req, "cancelled")
                continue
            if req.cache is None:
                self._start_prefill(req)
            n = min(budget, len(req.ids) - req.prefilled)
            budget -= n
            logits = self._forward_one(req, n)
            if req.prefilled < len(req.ids):
                continue
            self._prefilling.popleft()
            reason = self._take(req, req.picker.pick(logits))
            if reason is None:
                self._join(req)
            else:
                self._keep_prefix(req, [(layer.keys, layer.values) for layer in req.cache.layers], len(req.ids))
                self._end(req, reason)

    def _start_prefill(self, req: _Request) -> None:
        req.cache = self.DynamicCache()
        if self.prefix is None:
            return
        n, layers = self.prefix.lookup(req.ids)
        if n:
            for i, (k, v) in enumerate(layers):
                req.cache.update(k, v, i)
            req.prefilled = req.cached = n
            self.hit_tokens += n

    def _forward_one(self, req: _Request, n: int):
        torch = self.torch
        start = req.prefilled
        ids = torch.tensor([req.ids[start:start + n]], device=self.device)
        pos = torch.arange(start, start + n, device=self.device).unsqueeze(0)
        out = self.model(input_ids=ids, position_ids=pos, past_key_values=req.cache, use_cache=True,
                         logits_to_keep=1)
        req.prefilled += n
        return out.logits[0, -1].float()

    def _join(self, req: _Request) -> None:
        """Add a prefilled request to the running batch: left-pad the shorter side, concatenate on the batch axis."""
        torch = self.torch
        F = torch.nn.functional
        length = req.cache.get_seq_length()
        row_mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        if not self._rows:
            self._cache, self._mask, self._rows = req.cache, row_mask, [req]
            req.cache = None
            return
        current = self._mask.shape[1]
        pad_new, pad_old = max(current - length, 0), max(length - current, 0)
        for old, new in zip(self._cache.layers, req.cache.layers):
            old.keys = torch.cat([F.pad(old.keys, (0, 0, pad_old, 0)), F.pad(new.keys, (0, 0, pad_new, 0))])
            old.values = torch.cat([F.pad(old.values, (0, 0, pad_old, 0)), F.pad(new.values, (0, 0, pad_new, 0))])
        self._mask = torch.cat([F.pad(self._mask, (pad_old, 0)), F.pad(row_mask, (pad_new, 0))])
        self._rows.append(req)
        req.cache = None

    def _decode_step(self) -> None:
        """One new token for every running row; rows that end leave the batch at once."""
        torch = self.torch
        self._leave({i: "cancelled" for i, r in enumerate(self._rows) if r.cancel.is_set()})
        if not self._rows:
            return
        ids = torch.tensor([[r.next_token] for r in self._rows], device=self.device)
        pos = self._mask.sum(dim=1, keepdim=True)
        self._mask = torch.cat([self._mask, torch.ones_like(pos)], dim=1)
        out = self.model(input_ids=ids, attention_mask=self._mask, position_ids=pos, past_key_values=self._cache,
                         use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        reasons = {i: self._take(r, r.picker.pick(logits[i])) for i, r in enumerate(self._rows)}
        self._leave({i: reason for i, reason in reasons.items() if reason})

    def _take(self, req: _Request, token: int) -> str | None:
        """Record a sampled token (emit its text); why the request ended, or None while it goes on."""
        if req.cancel.is_set():
            return "cancelled"
        req.out.append(token)
        req.next_token = token
        if token in self.eos_ids:
            return "stop"
        req.decoder.push(token)
        return "length" if len(req.out) >= req.sampling.max_new_tokens else None

    def _leave(self, ended: dict[int, str]) -> None:
        """Drop rows from the batch (keeping their keys/values in the prompt cache) and end their requests."""
        if not ended:
            return
        torch = self.torch
        length = self._mask.shape[1]
        for i, reason in ended.items():
            req = self._rows[i]
            real = int(self._mask[i].sum())
            pad = length - real
            self._keep_prefix(req, [(layer.keys[i:i + 1, :, pad:], layer.values[i:i + 1, :, pad:])
                                    for layer in self._cache.layers], real, copy=True)
            self._end(req, reason)
        keep = [i for i in range(len(self._rows)) if i not in ended]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        self._cache.batch_select_indices(torch.tensor(keep, device=self.device))
        self._mask = self._mask[keep]
        # Padding columns no remaining row uses are dropped, so the batch is only as long as its longest row.
        first = int(self._mask.any(dim=0).long().argmax())
        if first:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _keep_prefix(self, req: _Request, layers: list[tuple], n_kv: int, copy: bool = False) -> None:
        """Offer a finished sequence's keys/values (prompt and reply so far) to the prompt cache."""
        if self.prefix is None or n_kv <= 0:
            return
        if copy:   # a slice of the batch would keep the whole batch tensor alive
            layers = [(k.clone(), v.clone()) for k, v in layers]
        self.prefix.put((req.ids + req.out)[:n_kv], layers)
        self.prefix.evict_to(max(self.kv_budget - self._reserved(), 0))

    def _end(self, req: _Request, reason: str) -> None:
        req.finish = Finish(tokens=len(req.out), prompt_tokens=len(req.ids), reason=reason, cached_tokens=req.cached)
        req.cache = None
        req.done.set()

    def _fail(self, reqs, error: BaseException) -> None:
        for req in reqs:
            req.error, req.cache = error, None
            req.done.set()

    def _fail_running(self, error: BaseException) -> None:
        self._fail(list(self._prefilling) + self._rows, error)
        self._prefilling.clear()
        self._rows, self._cache, self._mask = [], None, None
        if self.prefix is not None:     # what the failed step left there is unknown (and an OOM wants it freed)
            self.prefix.clear()
