"""Prepare the next batches in background threads, in order, with an exact bound.

With ``workers > 1`` the loader has batch ``i + k`` prepared while batch ``i``
trains, so gathering (NumPy's ``take`` releases the GIL) overlaps the training
step. Results come back in index order whatever order the threads finish in.

**The bound.** ``max_queue_size`` counts the batches prepared, or being
prepared, *ahead* of the one the consumer holds or is waiting for: while the
consumer holds batch ``i`` (or waits for it), only batches ``i + 1`` to
``i + max_queue_size`` may have been started, so at most ``max_queue_size + 1``
batches exist that the consumer has not finished with. Keras's ``PyDataset``
documents ``max_queue_size`` as the most batches kept in its queue; this is that
queue, not counting the batch already taken from it. ``workers`` caps the
threads; more than ``max_queue_size + 1`` of them could never all be busy, so
no more are started.

**Nothing outlives the consumer.** Work is pulled: a batch is started only when
the consumer's request makes room for it, so once the consumer stops asking, at
most ``max_queue_size + 1`` batches are finished and then no thread has anything
to do. An idle thread waits at most ``LINGER_S`` for more work and then ends. So
the threads end on their own after an abandoned iteration (a ``KeyboardInterrupt``
or other exception inside ``fit``) even while a reference cycle keeps the
iterator alive until the garbage collector runs, as Keras's epoch iterator
does. The threads hold no reference to the iterator; dropping or closing it
cancels the batches not yet started and joins the threads, waiting up to
``JOIN_S`` for batches already running (a running ``produce`` call cannot be
interrupted; its thread ends when it returns). What a cycle can still keep
alive until it is collected is the finished batches it holds: at most
``max_queue_size``.

:func:`in_background` runs one call on a single shared thread, started on first
use: the loader computes the next epoch's host permutation there while the
current epoch is served.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

LINGER_S = 0.25
"""Seconds an idle worker thread waits for another batch before it ends."""

JOIN_S = 2.0
"""Seconds closing an iterator waits, in all, for batches already running to finish."""

_background: ThreadPoolExecutor | None = None
_background_lock = threading.Lock()


def in_background(call: Callable[..., T], *args: Any) -> Future[T]:
    """``call(*args)`` on gpuloader's one background thread (created on first use)."""
    global _background
    with _background_lock:
        if _background is None:
            _background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuloader-ahead")
        return _background.submit(call, *args)


def in_order(
    produce: Callable[[int], T], indices: Iterable[int], *, workers: int, max_queue_size: int
) -> Iterator[T]:
    """Yield ``produce(i)`` for each ``i`` of ``indices``, computed ahead by ``workers`` threads.

    With ``workers <= 1``, ``produce(i)`` runs in the consumer's thread when
    batch ``i`` is requested: nothing is prepared ahead. Otherwise, while the
    consumer holds or waits for batch ``i``, at most batches ``i + 1`` to
    ``i + max_queue_size`` have been started, on at most
    ``min(workers, max_queue_size + 1)`` threads; nothing is started before the
    first request. Threads end ``LINGER_S`` after the consumer stops asking
    for batches, or when the iterator is closed or dropped (see the module's
    docstring). An exception raised by ``produce(i)`` reaches the consumer when
    it asks for batch ``i``.
    """
    if workers <= 1:
        for index in indices:
            yield produce(index)
        return
    pool = _Threads(produce, min(workers, max_queue_size + 1))
    source = iter(indices)
    ahead: deque[Future[T]] = deque()
    try:
        while True:
            # The batch about to be awaited plus max_queue_size after it.
            for index in itertools.islice(source, max_queue_size + 1 - len(ahead)):
                ahead.append(pool.submit(index))
            if not ahead:
                return
            # No local keeps the batch: once the consumer drops it, so has this frame.
            yield ahead.popleft().result()
    finally:
        pool.close()


class _Threads:
    """Threads that run ``produce`` on submitted indices, started on demand, ending when idle.

    Holds no reference to the consumer. A thread ends after ``LINGER_S``
    without work, or at :meth:`close`.
    """

    def __init__(self, produce: Callable[[int], Any], limit: int) -> None:
        self._produce = produce
        self._limit = limit
        # Re-entrant: the garbage collector may close an abandoned iterator from
        # inside one of its own threads, while that thread holds the lock.
        self._condition = threading.Condition(threading.RLock())
        self._tasks: deque[tuple[int, Future[Any]]] = deque()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._closed = False
        self._started = 0
        self._join_s = JOIN_S

    def submit(self, index: int) -> Future[Any]:
        """A future of ``produce(index)``, run by an idle thread or a new one (up to the limit)."""
        future: Future[Any] = Future()
        with self._condition:
            if self._closed:
                raise RuntimeError("gpuloader: batches requested from a closed prefetcher")
            self._tasks.append((index, future))
            if self._idle >= len(self._tasks):
                self._condition.notify()
            elif len(self._threads) < self._limit:
                thread = threading.Thread(
                    target=self._work, name=f"gpuloader-prefetch_{self._started}"
                )
                self._started += 1
                self._threads.add(thread)
                thread.start()
        return future

    def close(self, _current_thread: Callable[[], threading.Thread] = threading.current_thread,
              _monotonic: Callable[[], float] = time.monotonic) -> None:
        """Cancel the batches not yet started, let idle threads end, and wait for running ones.

        The module functions it calls are bound as defaults: an iterator left half-read is closed while the
        interpreter exits, when this module's globals are already None.
        """
        with self._condition:
            self._closed = True
            cancelled = [future for _, future in self._tasks]
            self._tasks.clear()
            threads = list(self._threads)
            self._condition.notify_all()
        for future in cancelled:
            future.cancel()
        current = _current_thread()
        if current in threads:
            return  # closed from its own thread (by the garbage collector): the others end by themselves
        # Bounded: a finaliser may run while this thread holds a lock that a running batch needs.
        deadline = _monotonic() + self._join_s
        for thread in threads:
            thread.join(max(deadline - _monotonic(), 0.0))

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._condition:
                while not self._tasks and not self._closed:
                    self._idle += 1
                    try:
                        woken = self._condition.wait(LINGER_S)
                    finally:
                        self._idle -= 1
                    if not woken and not self._tasks:
                        break
                if self._closed or not self._tasks:
                    self._threads.discard(me)
                    return
                index, future = self._tasks.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    result = self._produce(index)
                except BaseException as error:  # the consumer gets it, whatever it is
                    future.set_exception(error)
                else:
                    future.set_result(result)
                    del result
            del future  # an idle thread keeps no batch alive
