"""shared/threads.py: the same results, in the same order, with a pool or inline; errors kept for result()."""

from __future__ import annotations

import threading
import time

import pytest

from pointad.shared import threads


def test_one_thread_means_inline_and_more_means_a_pool_that_is_shut_down():
    with threads.worker_pool(1) as pool:
        assert pool is None
    with threads.worker_pool(3) as pool:
        assert pool is not None and pool._max_workers == 3
    with pytest.raises(RuntimeError):  # shut down on exit
        pool.submit(print)


@pytest.mark.slow
def test_run_each_keeps_item_order_even_when_later_items_finish_first():
    def slow_first(i):
        time.sleep(0.05 * (4 - i))
        return i, threading.get_ident()
    with threads.worker_pool(4) as pool:
        pooled = list(threads.run_each(pool, slow_first, range(4)))
    inline = list(threads.run_each(None, slow_first, range(4)))
    assert [i for i, _ in pooled] == [i for i, _ in inline] == [0, 1, 2, 3]
    assert {t for _, t in inline} == {threading.get_ident()}
    assert threading.get_ident() not in {t for _, t in pooled} and len({t for _, t in pooled}) > 1


def test_submit_inline_runs_now_and_raises_at_result_as_a_pool_does():
    calls = []
    future = threads.submit(None, calls.append, 1)
    assert calls == [1] and future.done()

    def fail():
        raise ValueError("bad class")
    for pool_threads in (1, 2):
        with threads.worker_pool(pool_threads) as pool:
            future = threads.submit(pool, fail)
        with pytest.raises(ValueError, match="bad class"):
            future.result()


def test_the_default_pool_follows_available(monkeypatch):
    monkeypatch.setattr(threads, "available", lambda: 1)
    with threads.worker_pool() as pool:
        assert pool is None
    monkeypatch.setattr(threads, "available", lambda: 2)
    with threads.worker_pool() as pool:
        assert pool is not None and pool._max_workers == 2
