"""Gather one batch: the rows a batch needs, copied into a fresh buffer.

Each batch is a fresh, C-contiguous allocation. On the host it is aligned to 64
bytes (TensorFlow aborts the process on a less aligned buffer, see
docs/design.md); CuPy's allocator aligns to 256 bytes. A fresh buffer per batch
is what makes the zero-copy hand-off safe: a tensor a caller still holds is
never overwritten by a later batch.

Cost: one copy of the batch's bytes (``batch_size x row bytes``) per leaf.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gpuloader.sources import is_disk_leaf, read_rows_sorted

ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = ALIGNMENT) -> np.ndarray:
    """An uninitialised C-contiguous NumPy array whose data starts on ``alignment`` bytes."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray, alignment: int = ALIGNMENT) -> bool:
    """Whether a NumPy array is C-contiguous and starts on ``alignment`` bytes."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % alignment == 0


def gather(xp: Any, leaf: Any, rows: slice | Any) -> Any:
    """Copy ``leaf[rows]`` into a fresh array.

    Args:
        xp: the namespace of ``leaf``.
        leaf: a stored array, rows on the first axis.
        rows: a ``slice`` (contiguous rows, no shuffle) or a 1-d int64 index array.
    """
    if xp is np:
        out = aligned_empty((_count(rows, leaf.shape[0]), *leaf.shape[1:]), leaf.dtype)
        if is_disk_leaf(leaf) and not isinstance(rows, slice):
            read_rows_sorted(leaf, rows, out)
        elif isinstance(rows, slice):
            np.copyto(out, leaf[rows, ...])
        else:
            # mode="clip" skips the bounds-check buffer that mode="raise" needs;
            # indices come from the permutation and are always in range.
            np.take(leaf, rows, axis=0, out=out, mode="clip")
        return out
    if isinstance(rows, slice):
        return xp.asarray(leaf[rows, ...], copy=True)
    return xp.take(leaf, rows, axis=0)


def _count(rows: slice | Any, n: int) -> int:
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(n)
        return max(stop - start, 0)
    return int(rows.shape[0])
