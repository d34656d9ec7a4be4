"""Ordered work on every core, in bounded memory: the data stages' worker processes.

    for result in ordered_map(clean, jobs, total_bytes, window=4):
        ...

Results come back in the order of the inputs; at most `window` tasks per worker are in flight,
so reading a large input never runs ahead of the workers (Pool.imap would queue all of it).
Small inputs run in this process: workers cost more to start than they would save.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator

# Below this many bytes of input, worker processes cost more to start than they save.
PARALLEL_MIN_BYTES = 16 << 20


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's count, where known)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_map(fn: Callable, items: Iterable, total_bytes: int, initializer: Callable | None = None,
                initargs: tuple = (), window: int = 2, fork: bool = True) -> Iterator:
    """fn(item) for each item, in order, on every core when total_bytes makes that worth it.

    `initializer(*initargs)` runs once in each worker (or once here when running in-process).
    fork=False starts fresh interpreters: needed once this process has used the tokenizers
    library's thread pool, which a forked child must not inherit.
    """
    workers = cpu_count()
    if workers < 2 or total_bytes < PARALLEL_MIN_BYTES:
        if initializer:
            initializer(*initargs)
        yield from map(fn, items)
        return
    # fork where available: the workers need only what is already imported, and start in milliseconds
    method = "fork" if fork and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, initializer, initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= window * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
