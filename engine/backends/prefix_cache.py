"""The prompt cache: keys/values of finished sequences, looked up by longest common token prefix, evicted LRU."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import count


@dataclass
class CachedPrefix:
    ids: list[int]          # the tokens whose keys/values are held
    layers: list[tuple]     # per layer (keys, values), each [1, heads, len(ids), head_dim]


class PrefixCache:
    """Entries keyed by a counter; the OrderedDict's order is the recency order (oldest first)."""

    def __init__(self, torch, min_match: int = 16):
        self.torch = torch
        self.min_match = min_match          # shorter shared prefixes are not worth a copy
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()
        self._keys = count()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _common(self, a: list[int], b: list[int]) -> int:
        n = min(len(a), len(b))
        if n == 0:
            return 0
        ta, tb = self.torch.tensor(a[:n]), self.torch.tensor(b[:n])
        differ = (ta != tb).nonzero()
        return int(differ[0]) if differ.numel() else n

    def lookup(self, ids: list[int]) -> tuple[int, list[tuple] | None]:
        """(n, per-layer keys/values of ids[:n]) for the longest cached prefix; (0, None) on a miss.

        At least one prompt token is left to prefill: its logits give the first new token.
        """
        best, best_key = 0, None
        for key, entry in self._entries.items():
            n = self._common(entry.ids, ids)
            if n > best:
                best, best_key = n, key
        best = min(best, len(ids) - 1)
        if best < self.min_match or best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        layers = [(k[:, :, :best], v[:, :, :best]) for k, v in self._entries[best_key].layers]
        return best, layers

    def put(self, ids: list[int], layers: list[tuple]) -> None:
        """Keep a finished sequence's keys/values; entries it extends are dropped (it serves them too)."""
        if len(ids) < self.min_match:
            return
        for key in [k for k, e in self._entries.items()
                    if len(e.ids) <= len(ids) and self._common(e.ids, ids) == len(e.ids)]:
            self.tokens -= len(self._entries.pop(key).ids)
        self._entries[next(self._keys)] = CachedPrefix(list(ids), layers)
        self.tokens += len(ids)

    def evict_to(self, max_tokens: int) -> None:
        """Drop the least recently used entries until at most ``max_tokens`` are held."""
        while self._entries and self.tokens > max_tokens:
            _, entry = self._entries.popitem(last=False)
            self.tokens -= len(entry.ids)

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0
