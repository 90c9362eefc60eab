"""Torch work outside the batch loop runs in a thread of its own that ends with it (why: see in_own_thread)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


def in_own_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` in a new thread that exits when it returns; blocks until then.

    libgomp keeps a team of worker threads for every thread that ran a parallel region, for as long as that
    thread lives. Once more of them exist than CPUs, every team spins only ~100 times before it sleeps, so the
    batch loop's hundreds of small parallel regions per step each wait for a futex wake-up: after one matmul in
    a long-lived pool thread, 8 chat replies at once ran 25% slower for the rest of the process (56-63 vs
    73-76 tok/s on 2 cores). A thread that exits takes its team with it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-once") as pool:
        return pool.submit(fn, *args, **kwargs).result()
