"""Background preparation keeps index order, bounds what is ahead exactly, and leaves no thread behind."""

from __future__ import annotations

import gc
import random
import threading
import time

import numpy as np
import pytest

from gpuloader import prefetch
from gpuloader.prefetch import in_order


def batch_threads(besides: set[threading.Thread] = frozenset()) -> list[threading.Thread]:
    """Threads gpuloader started to prepare batches (whatever their exact name), except ``besides``.

    The one shared thread that computes next epochs' orders (``prefetch.in_background``) may live on.
    """
    return [
        t for t in threading.enumerate()
        if t.name.startswith("gpuloader") and not t.name.startswith("gpuloader-ahead") and t not in besides
    ]


def wait_for_thread_count(count: int, limit_s: float = 5.0) -> float:
    """Seconds until at most ``count`` threads are alive (or ``limit_s``); never runs the garbage collector."""
    start = time.monotonic()
    while threading.active_count() > count and time.monotonic() - start < limit_s:
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def no_automatic_gc():
    """Objects in reference cycles stay alive for the whole test, as they may between two collections."""
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_results_come_back_in_index_order(workers):
    def slow_square(i):
        time.sleep(random.random() / 500)
        return i * i

    assert list(in_order(slow_square, range(50), workers=workers, max_queue_size=5)) == [
        i * i for i in range(50)
    ]


@pytest.mark.parametrize(
    ("workers", "max_queue_size"), [(2, 1), (8, 1), (8, 2), (3, 4), (2, 6), (4, 4)]
)
def test_at_most_max_queue_size_batches_are_ahead_of_the_consumer(workers, max_queue_size):
    """While the consumer holds or awaits batch i, only batches up to i + max_queue_size have started."""
    lock = threading.Lock()
    received = 0  # batches the consumer has been handed
    ahead_at_start = []  # for each produce(j): j - received, how far ahead of the awaited batch it is
    running = peak_running = 0
    threads = set()

    def produce(j):
        nonlocal running, peak_running
        with lock:
            ahead_at_start.append(j - received)
            running += 1
            peak_running = max(peak_running, running)
            threads.add(threading.current_thread().name)
        time.sleep(0.002)
        with lock:
            running -= 1
        return j

    ahead_when_held = []  # batches started but not yet handed over, seen at the end of each step
    for j in in_order(produce, range(24), workers=workers, max_queue_size=max_queue_size):
        with lock:
            received += 1
        time.sleep(0.02)  # a slow step: the threads fill every slot the bound allows
        with lock:
            ahead_when_held.append(len(ahead_at_start) - received)
        assert j == received - 1

    assert max(ahead_at_start) <= max_queue_size  # the bound, while the consumer waits or holds
    assert max(ahead_when_held) == max_queue_size  # and it is reached during a slow step
    assert peak_running <= min(workers, max_queue_size + 1)
    assert len(threads) <= min(workers, max_queue_size + 1)


def test_batches_are_prepared_ahead_in_other_threads():
    """While the consumer is busy with batch i, batch i + 1 is produced in another thread."""
    produced = {}  # index -> (thread, start, end)

    def produce(i):
        start = time.perf_counter()
        time.sleep(0.01)  # gathering: releases the GIL, as NumPy's take does
        produced[i] = (threading.get_ident(), start, time.perf_counter())
        return i

    requested = {}
    iterator = in_order(produce, range(8), workers=2, max_queue_size=2)
    for i in range(8):
        requested[i] = time.perf_counter()
        assert next(iterator) == i
        time.sleep(0.06)  # the training step
    assert next(iterator, None) is None

    consumer = threading.get_ident()
    for i in range(1, 8):
        thread, start, end = produced[i]
        assert thread != consumer, f"batch {i} was produced in the consumer's thread"
        assert start < requested[i - 1] + 0.06, f"batch {i} did not start during batch {i - 1}'s step"
        assert end <= requested[i], f"batch {i} was not ready when the consumer asked for it"


def test_closing_early_stops_the_threads():
    before = threading.active_count()
    iterator = in_order(lambda i: i, range(1000), workers=3, max_queue_size=8)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()
    assert threading.active_count() == before
    assert not batch_threads()


def test_dropping_the_iterator_stops_the_threads():
    before = threading.active_count()
    iterator = in_order(lambda i: i, range(1000), workers=3, max_queue_size=8)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    assert threading.active_count() > before
    del iterator  # not closed: its finaliser cancels and joins
    assert threading.active_count() == before


def test_threads_end_even_while_a_reference_cycle_keeps_the_iterator(no_automatic_gc):
    """Abandoned, not closed, not collected: the threads run out of work and end by themselves."""
    before = threading.active_count()
    keep = []
    for _ in range(5):
        iterator = in_order(lambda i: np.full(1000, i), range(1000), workers=4, max_queue_size=4)
        next(iterator)
        cycle = [iterator]
        cycle.append(cycle)  # only the collector could free it
        keep.append(cycle)  # and the test keeps it anyway
        del iterator, cycle
    assert threading.active_count() > before
    waited = wait_for_thread_count(before)
    assert threading.active_count() == before
    assert waited < prefetch.LINGER_S + 1.0


def test_a_batch_the_consumer_dropped_is_freed_while_the_threads_idle(no_automatic_gc):
    """No thread keeps the last batch it made: prepared-ahead batches are the only ones held."""
    import weakref

    class Batch:
        pass

    def produce(i):
        time.sleep(0.02)  # long enough for each of the two threads to take one of the first two batches
        return Batch()

    iterator = in_order(produce, range(100), workers=2, max_queue_size=1)
    first = weakref.ref(next(iterator))  # the consumer drops batch 0 at once; batch 1 is ahead
    start = time.monotonic()
    while first() is not None and time.monotonic() - start < prefetch.LINGER_S / 2:  # the threads still idle
        time.sleep(0.005)
    assert first() is None
    iterator.close()


def test_errors_in_a_worker_reach_the_consumer():
    def produce(i):
        if i == 3:
            raise RuntimeError("batch 3 failed")
        return i

    before = threading.active_count()
    iterator = in_order(produce, range(10), workers=2, max_queue_size=4)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="batch 3 failed"):
        next(iterator)
    assert threading.active_count() == before


def test_interrupted_fits_leave_no_thread_behind(no_automatic_gc):
    """Ctrl-C inside fit(Loader(workers=4)), 20 times: no batch thread is left, without a collection.

    Keras's epoch iterator sits in a reference cycle after the interrupt, so the
    batch generator is neither closed nor collected until the garbage collector
    runs (disabled here, as it may not run for a long time).
    """
    import keras

    from gpuloader import Loader

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 8)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.float32)
    loader = Loader(x, y, batch_size=32, seed=0, verbose=False, workers=4, max_queue_size=4)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")

    threads_at_interrupt = []

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                threads_at_interrupt.append(len(batch_threads(before)))
                raise KeyboardInterrupt

    model.fit(loader, epochs=1, steps_per_epoch=2, verbose=0)  # builds the model and starts shared threads
    time.sleep(1.0)  # its abandoned epoch's threads end (prefetch.LINGER_S)
    before = set(threading.enumerate())  # TensorFlow or Keras may start threads of their own later
    for _ in range(20):
        with pytest.raises(KeyboardInterrupt):
            model.fit(loader, epochs=1, verbose=0, callbacks=[Interrupt()])
    assert min(threads_at_interrupt) > 0  # each fit was interrupted while its threads were working
    start = time.monotonic()
    while batch_threads(before) and time.monotonic() - start < 5.0:
        time.sleep(0.01)
    left = batch_threads(before)
    assert not left, f"{len(left)} batch threads left ({threading.active_count()} threads alive)"


@pytest.mark.parametrize("workers", [2, 4, 8])
def test_at_most_disk_readers_threads_gather_from_disk_at_once(tmp_path, monkeypatch, workers):
    """More workers never mean more concurrent disk readers than gather.DISK_READERS."""
    from gpuloader import gather
    from gpuloader.sources import open_source

    x = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
    np.save(tmp_path / "x.npy", x)
    on_disk = open_source(tmp_path / "x.npy", "x")
    lock = threading.Lock()
    reading = peak = 0
    real_read = gather.read_rows_sorted

    def slow_read(leaf, rows, out):
        nonlocal reading, peak
        with lock:
            reading += 1
            peak = max(peak, reading)
        time.sleep(0.01)  # a batch's reads in flight
        real_read(leaf, rows, out)
        with lock:
            reading -= 1

    monkeypatch.setattr(gather, "read_rows_sorted", slow_read)
    host_gather = gather.HostGather([on_disk])
    order = np.random.default_rng(0).permutation(64)
    batches = in_order(
        lambda i: host_gather(order[i * 4 : (i + 1) * 4])[0], range(16), workers=workers, max_queue_size=8
    )
    for i, batch in enumerate(batches):
        np.testing.assert_array_equal(batch, x[order[i * 4 : (i + 1) * 4]])
    assert peak == min(workers, gather.DISK_READERS)


def test_an_iterator_left_half_read_at_exit_closes_without_a_traceback():
    from conftest import run_python

    script = (
        "import numpy as np, gpuloader\n"
        "loader = gpuloader.Loader(np.zeros((200, 4), np.float32), batch_size=8, workers=2, verbose=False)\n"
        "batches = iter(loader)\n"
        "next(batches)  # a look at the first batch, as tutorials do; the interpreter then exits\n"
    )
    result = run_python(["-c", script])
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
