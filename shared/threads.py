"""Thread pools for work that releases the GIL (numpy, scipy's filters, Blosc, torch, KD-tree queries).

`worker_pool()` is a pool of one thread per CPU for the length of a job, or None where there is one CPU:
callers then work inline, in their own thread. `run_each` and `submit` take either, so the code reads the
same both ways and its results do not depend on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from joblib import cpu_count


def available() -> int:
    """CPUs this process may use (joblib's count: affinity and cgroup quotas)."""
    return cpu_count()


@contextlib.contextmanager
def worker_pool(threads: int | None = None) -> Iterator[ThreadPoolExecutor | None]:
    """A ThreadPoolExecutor of `threads` threads (None: `available()`), shut down on exit; None for one."""
    threads = available() if threads is None else threads
    if threads <= 1:
        yield None
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield pool


def run_each(pool: ThreadPoolExecutor | None, function: Callable, items: Iterable) -> Iterator:
    """function(item) for each item, in item order: on the pool's threads, or inline without one."""
    return pool.map(function, items) if pool is not None else map(function, items)


def submit(pool: ThreadPoolExecutor | None, function: Callable, *args, **kwargs) -> Future:
    """A Future of function(*args, **kwargs): run on the pool, or now (its exception kept in the Future)."""
    if pool is not None:
        return pool.submit(function, *args, **kwargs)
    future = Future()
    try:
        future.set_result(function(*args, **kwargs))
    except BaseException as exc:  # as a pool would: raised by result()
        future.set_exception(exc)
    return future
