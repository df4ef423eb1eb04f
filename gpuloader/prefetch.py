"""Prepare the next batches in background threads, in order, through a bounded queue.

With ``workers > 1`` the loader submits batch ``i + k`` while batch ``i`` trains,
so gathering (NumPy's ``take`` releases the GIL) overlaps the training step.
At most ``max_queue_size`` batches are in flight; results come back in index
order whatever order the threads finish in. Closing the iterator early (a
``break``, an exception in the training step) cancels what is queued and joins
the threads: nothing keeps running after the epoch.

:func:`in_background` runs one call on a single shared thread, started on first
use: the loader computes the next epoch's host permutation there while the
current epoch is served.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

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
    """Yield ``produce(i)`` for each ``i`` of ``indices``, computed ahead by ``workers`` threads."""
    if workers <= 1:
        for index in indices:
            yield produce(index)
        return
    pending: deque[Future[Any]] = deque()
    source = iter(indices)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpuloader")
    try:
        for index in source:
            pending.append(executor.submit(produce, index))
            if len(pending) >= max(max_queue_size, workers):
                break
        while pending:
            result = pending.popleft().result()
            next_index = next(source, None)
            if next_index is not None:
                pending.append(executor.submit(produce, next_index))
            yield result
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
