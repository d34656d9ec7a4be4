"""Worker processes of the data stages: ordered results, bounded read-ahead, errors come through."""

from __future__ import annotations

import pytest

import gothic.parallel as parallel
from gothic.errors import GothicError


def square(x: int) -> int:
    if x < 0:
        raise GothicError(f"item {x}: negative")
    return x * x


@pytest.fixture
def two_workers(monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(parallel, "cpu_count", lambda: 2)


def test_results_come_in_input_order_and_read_ahead_is_bounded(two_workers):
    consumed = []

    def items():
        for i in range(50):
            consumed.append(i)
            yield i

    results = parallel.ordered_map(square, items(), total_bytes=1, window=3)
    assert next(results) == 0 and len(consumed) <= 3 * 2  # never the whole input queued
    assert [0, *results] == [i * i for i in range(50)]


def test_an_error_in_a_worker_reaches_the_caller_as_is(two_workers):
    with pytest.raises(GothicError, match="item -1: negative"):
        list(parallel.ordered_map(square, [1, 2, -1, 3], total_bytes=1))


def test_small_inputs_run_in_this_process():
    started = []
    assert list(parallel.ordered_map(square, [3, 4], total_bytes=10, initializer=started.append,
                                     initargs=("here",))) == [9, 16]
    assert started == ["here"]
