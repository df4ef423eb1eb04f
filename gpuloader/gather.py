"""Gather one batch: the rows a batch needs, copied into a buffer of its own.

Each batch is a C-contiguous buffer that nothing else holds. On the host it is
aligned to 64 bytes (TensorFlow aborts the process on a less aligned buffer, see
docs/design.md) and comes from a :class:`~gpuloader.blocks.BlockPool` (a block
of an earlier batch once nothing holds it, else a new one); CuPy's allocator
aligns to 256 bytes. A buffer no one holds is what makes the zero-copy hand-off
safe: a tensor a caller still holds is never overwritten by a later batch.

Cost: one copy of the batch's bytes (``batch_size x row bytes``) per leaf.

Disk: at most ``DISK_READERS`` (2) threads of the process gather from on-disk
leaves at a time, whatever ``workers`` is; the others wait their turn without
the GIL. One batch's page requests (``MADV_WILLNEED``, one per row range:
about 256 for 256 rows of 12 KB) are about what a device queue holds (256 on
the machine measured). Readers beyond two only add requests waiting for room,
and ``mmap.madvise`` waits for that room holding the GIL: with 4 readers single
calls took 15 to 40 ms (at most 4 ms with one), stalling every other Python
thread, the one handing batches to the model included. Two readers keep one
batch's reads in flight while the other's batch is copied.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import numpy as np

from gpuloader.blocks import BlockPool, aligned_in, array_bytes
from gpuloader.sources import Source, is_disk_leaf, read_rows_sorted

ALIGNMENT = 64

DISK_READERS = 2
"""At most this many threads of the process gather from on-disk leaves at once."""

_disk_readers = threading.BoundedSemaphore(DISK_READERS)


def aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = ALIGNMENT) -> np.ndarray:
    """An uninitialised C-contiguous NumPy array whose data starts on ``alignment`` bytes."""
    dtype = np.dtype(dtype)
    return aligned_in(np.empty(array_bytes(shape, dtype) + alignment, dtype=np.uint8), shape, dtype, alignment)


def is_aligned(array: np.ndarray, alignment: int = ALIGNMENT) -> bool:
    """Whether a NumPy array is C-contiguous and starts on ``alignment`` bytes."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % alignment == 0


def _count(rows: slice | Any, n: int) -> int:
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(n)
        return max(stop - start, 0)
    return int(rows.shape[0])


class HostGather:
    """The host gather of fixed leaves, with each batch size's block layout computed once.

    One block per batch holds all of the batch's arrays, each C-contiguous
    on a 64-byte boundary: one block per batch instead of one per array, from
    a pool that reuses a block once nothing holds any of its arrays
    (:mod:`gpuloader.blocks`), so its pages are not faulted in again. Leaves kept as
    :class:`~gpuloader.sources.Source`\\ s (on disk) are read through their
    interface, rows in ascending order (:func:`read_rows_sorted`).

    Args:
        leaves: NumPy arrays in RAM or sources read per batch, sharing their first dimension.
    """

    def __init__(self, leaves: list[Any]) -> None:
        self._leaves = leaves
        self._sources = [isinstance(leaf, Source) for leaf in leaves]
        self._reads_disk = any(is_disk_leaf(leaf) for leaf in leaves)
        self._n = int(leaves[0].shape[0])
        self._layouts: dict[int, tuple[int, list[tuple[tuple[int, ...], np.dtype, int]]]] = {}
        self._blocks = BlockPool()

    def _layout(self, count: int) -> tuple[int, list[tuple[tuple[int, ...], np.dtype, int]]]:
        layout = self._layouts.get(count)
        if layout is None:
            parts, offset = [], 0
            for leaf in self._leaves:
                shape, dtype = (count, *leaf.shape[1:]), np.dtype(leaf.dtype)
                parts.append((shape, dtype, offset))
                offset += -(-math.prod(shape) * dtype.itemsize // ALIGNMENT) * ALIGNMENT
            layout = self._layouts[count] = (offset + ALIGNMENT, parts)
        return layout

    accepts_make = True  # Store.take(rows, make) may hand it leaves a kernel of the caller writes

    def __call__(self, rows: slice | np.ndarray, make: dict[int, Any] | None = None) -> list[np.ndarray]:
        """Arrays that nothing else holds, with ``leaf[rows]`` of every leaf. Cost: the batch's bytes copied once.

        ``make``: ``{leaf index: write(out)}`` for leaves whose batch the caller's
        kernel writes into ``out`` (its place in the block) instead of a copy of
        ``leaf[rows]`` (the augmentation's kernel, which reads the stored rows itself).
        """
        block_bytes, parts = self._layout(_count(rows, self._n))
        block = self._blocks.take(block_bytes)
        start = -block.ctypes.data % ALIGNMENT
        outs = []
        with _disk_readers if self._reads_disk else contextlib.nullcontext():  # DISK_READERS at a time
            for leaf, is_source, (shape, dtype, offset) in zip(self._leaves, self._sources, parts):
                out = np.ndarray(shape, dtype, buffer=block, offset=start + offset)
                if make and len(outs) in make:
                    make[len(outs)](out)
                elif is_source and isinstance(rows, slice):
                    np.copyto(out, leaf.read_range(*rows.indices(self._n)[:2]))
                elif is_source:
                    read_rows_sorted(leaf, rows, out)
                elif isinstance(rows, slice):
                    np.copyto(out, leaf[rows, ...])
                else:
                    # mode="clip" skips the bounds-check buffer that mode="raise" needs;
                    # indices come from the permutation and are always in range.
                    leaf.take(rows, axis=0, out=out, mode="clip")
                outs.append(out)
        return outs
