"""An array in memory as a :class:`~gpuloader.sources.base.Source` (NumPy, or anything ``np.asarray`` takes)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gpuloader.sources.base import Source


class ArraySource(Source):
    """The rows of a NumPy array in memory; nothing is copied until the store asks.

    The store keeps a read-only view of the array (``read_range(0, n)``), so on
    the host tier the caller's later writes into the array are what batches
    hold; on the GPU the array is copied once, at construction.
    """

    on_disk: ClassVar[bool] = False

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(int(size) for size in array.shape)
        self.dtype = array.dtype

    def read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        np.take(self.array, rows, axis=0, out=out, mode="clip")

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def subset(self, rows: np.ndarray) -> Source:
        """A copy of just ``rows``: a worker holds its own shard in RAM, not the whole array."""
        return ArraySource(np.take(self.array, rows, axis=0))


def open_array(value: Any, name: str) -> ArraySource:
    """``value`` as an array in memory, or a ValueError naming ``name`` when NumPy cannot read it as one."""
    try:
        array = np.asarray(value)
    except Exception as error:
        raise ValueError(
            f"{name} cannot be read as an array ({error}); pass a NumPy array (rows of equal length)."
        ) from error
    return ArraySource(array)
