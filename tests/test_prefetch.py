"""Background preparation keeps index order, bounds what is in flight, and stops cleanly."""

from __future__ import annotations

import random
import threading
import time

import pytest

from gpuloader.prefetch import in_order


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_results_come_back_in_index_order(workers):
    def slow_square(i):
        time.sleep(random.random() / 500)
        return i * i

    assert list(in_order(slow_square, range(50), workers=workers, max_queue_size=5)) == [
        i * i for i in range(50)
    ]


def test_in_flight_work_is_bounded_by_the_queue_size():
    started = []
    release = threading.Event()

    def produce(i):
        started.append(i)
        release.wait(5)
        return i

    iterator = in_order(produce, range(100), workers=3, max_queue_size=4)
    waiter = threading.Timer(0.2, release.set)
    waiter.start()
    assert next(iterator) == 0
    assert len(started) <= 5  # 4 queued, plus the one submitted after the first result
    iterator.close()
    waiter.cancel()


def test_closing_early_stops_the_threads():
    before = threading.active_count()
    iterator = in_order(lambda i: i, range(1000), workers=3, max_queue_size=8)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()
    assert threading.active_count() == before
    # The one shared thread that computes next epochs' orders (prefetch.in_background) may live on.
    assert not [t for t in threading.enumerate() if t.name.startswith("gpuloader_")]


def test_errors_in_a_worker_reach_the_consumer():
    def produce(i):
        if i == 3:
            raise RuntimeError("batch 3 failed")
        return i

    iterator = in_order(produce, range(10), workers=2, max_queue_size=4)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="batch 3 failed"):
        next(iterator)
