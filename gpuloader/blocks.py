"""Host batch blocks, reused once nothing holds them.

Every host batch is written into a block of its own (:class:`gpuloader.gather.HostGather`),
and the model's tensors view that block without a copy (DLPack), so a block must
never be written again while anything still holds one of its arrays. A block
freshly allocated per batch guarantees that, but costs its pages: freed blocks of
a few megabytes go back to the kernel, and the next batch's block faults its pages
in again, zeroed (with 4 workers on the disk tier, about a quarter of the epoch's
CPU time was those faults).

:class:`BlockPool` keeps the blocks it handed out and gives one out again only
when its reference count says that nothing but the pool holds it: every array of
a batch is a view whose ``base`` is its block, and every consumer (a TensorFlow,
torch or JAX tensor made through DLPack, a batch waiting in a queue, a user's
transform that kept its input) holds such a view or the block. A block that is
still held is never handed out; a new one is allocated instead.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

MAX_SPARE_BLOCKS = 24
"""At most this many blocks are kept for reuse (held or not)."""

MAX_SPARE_BYTES = 256 * 1024 * 1024
"""Blocks are kept for reuse only while those kept hold at most this many bytes in all."""


def array_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The bytes of a C-contiguous array of ``shape`` and ``dtype``."""
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def aligned_in(raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, alignment: int) -> np.ndarray:
    """A C-contiguous array of ``shape`` and ``dtype`` in uint8 ``raw`` (``alignment`` bytes longer than it needs),
    starting on ``alignment`` bytes; its ``base`` is ``raw``."""
    return np.ndarray(shape, dtype, buffer=raw, offset=-raw.ctypes.data % alignment)


def _baseline_refcount() -> int:
    """``sys.getrefcount`` of an array held only by one list, as this interpreter counts it."""
    kept = [np.empty(1, dtype=np.uint8)]
    return sys.getrefcount(kept[0])


class BlockPool:
    """Blocks of uint8 for host batches: a kept block nothing else holds, else a new one.

    Thread-safe (worker threads take blocks at once). Memory: at most
    :data:`MAX_SPARE_BLOCKS` blocks and :data:`MAX_SPARE_BYTES` bytes stay
    allocated for reuse beyond those in use.
    Cost: a scan of the kept blocks' reference counts per batch (under a microsecond each).
    """

    def __init__(self) -> None:
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._free_count = _baseline_refcount()  # the count of a kept block that nothing else holds
        # Without the GIL (free-threaded builds) reference counts are not read exactly: every block is new.
        self._reuse = getattr(sys, "_is_gil_enabled", lambda: True)()

    def take(self, nbytes: int) -> np.ndarray:
        """A block of ``nbytes`` that nothing else holds: a kept one, or a new one (kept when room allows)."""
        if not self._reuse:
            return np.empty(nbytes, dtype=np.uint8)
        with self._lock:
            kept = self._kept
            for index in range(len(kept)):
                if kept[index].nbytes == nbytes and sys.getrefcount(kept[index]) == self._free_count:
                    return kept[index]
            block = np.empty(nbytes, dtype=np.uint8)
            self._keep(block)
            return block

    def array(self, shape: tuple[int, ...], dtype: np.dtype | type | str, alignment: int = 64) -> np.ndarray:
        """An uninitialised C-contiguous array starting on ``alignment`` bytes, in a block of this pool."""
        dtype = np.dtype(dtype)
        return aligned_in(self.take(array_bytes(shape, dtype) + alignment), shape, dtype, alignment)

    def _keep(self, block: np.ndarray) -> None:
        """Keep ``block`` for reuse, first dropping kept blocks nothing holds when the pool is full."""
        kept = self._kept
        index = 0
        while index < len(kept) and (len(kept) >= MAX_SPARE_BLOCKS or
                                     sum(item.nbytes for item in kept) + block.nbytes > MAX_SPARE_BYTES):
            if sys.getrefcount(kept[index]) == self._free_count:
                del kept[index]
            else:
                index += 1
        if len(kept) < MAX_SPARE_BLOCKS and sum(item.nbytes for item in kept) + block.nbytes <= MAX_SPARE_BYTES:
            kept.append(block)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the blocks kept (held or free)."""
        with self._lock:
            return sum(block.nbytes for block in self._kept)
