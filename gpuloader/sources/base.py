"""The :class:`Source` interface: what the store, the gather and the placement know of an input.

A source is the rows of one input (one leaf of ``x``, ``y`` or
``sample_weight``): its length, dtype and sample shape, its size, a way to read
a sorted set of rows into a buffer the caller owns, and a way to tell that what
it reads has changed since it was opened. Everything above this module speaks
only this interface; see :mod:`gpuloader.sources` for the formats and how to add one.
"""

from __future__ import annotations

import abc
import threading
from typing import Any, ClassVar

import numpy as np


class SourceChangedError(RuntimeError):
    """A file under an on-disk input changed after the loader opened it; the message names it."""


class Source(abc.ABC):
    """The rows of one input, read on demand.

    A subclass sets ``shape`` (samples first) and ``dtype`` (a NumPy dtype, in
    any byte order) and implements :meth:`read_sorted`. Everything else has a
    default that is right for data that cannot change and has no file:

    - :meth:`read_range` (contiguous rows; defaults to :meth:`read_sorted`),
    - :meth:`check_unchanged` (raise :class:`SourceChangedError`; default: nothing to check),
    - :meth:`subset` (some rows, for a worker's shard; default: a lazy :class:`~gpuloader.sources.subset.RowSubset`),
    - :meth:`advise_random_access` (default: no advice),
    - :meth:`describe` (the input's name in messages, with its file(s)).

    ``on_disk`` says whether reading rows costs file reads: the placement
    counts such bytes against ``host_memory_limit`` and may leave them on disk,
    to be read batch by batch; the gather then lets at most two threads read at
    once. A source with ``on_disk = False`` is held in memory and is read into
    the store once (a view, where :meth:`read_range` can give one).

    Readers are called from several threads at once (``workers``): a source
    must not keep per-read state outside the buffer it is given.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    on_disk: ClassVar[bool] = True
    #: True where :meth:`read_sorted` takes rows in any order as fast (rows already in memory or mapped, e.g.
    #: Arrow, or ``.npy`` maps with the compiled gather): :func:`read_rows_sorted` then hands it the batch's
    #: rows as they are, with no sort and put-back.
    reads_in_any_order: ClassVar[bool] = False

    # ------------------------------------------------------------ derived
    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of all rows (as stored)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    # ------------------------------------------------------------ reading
    @abc.abstractmethod
    def read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy rows ``rows`` into ``out``: ``out[i] = self[rows[i]]``.

        ``rows`` is a 1-d int64 array of ascending row indices in ``[0, len)``
        (repeats allowed), ``out`` a C-contiguous array of shape
        ``(len(rows), *shape[1:])`` and dtype ``self.dtype``, owned by the caller.
        """

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``0 <= start``; clipped to ``len``) as a NumPy array of ``self.dtype``: a view
        where the rows are in memory (an array, a memory map), else a new array. The caller must not write into it."""
        start, stop = min(start, len(self)), min(stop, len(self))
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
        self.read_sorted(np.arange(start, stop, dtype=np.int64), out)
        return out

    # ------------------------------------------------------------ trust
    def check_unchanged(self, rows: slice | np.ndarray | None = None) -> None:
        """Raise :class:`SourceChangedError` if what ``rows`` (None: all) are read from has changed.

        Called before every batch (and every upload chunk) of a source on disk,
        so it must be cheap: a stat per file, not a read.
        """
        return  # the default: data that cannot change under the loader

    # ------------------------------------------------------------ structure
    def subset(self, rows: np.ndarray) -> Source:
        """The source of rows ``rows`` (ascending) only: one worker's shard. Default: read lazily from this one."""
        from gpuloader.sources.subset import RowSubset

        return RowSubset(self, rows)

    def advise_random_access(self) -> bool:
        """Tell the OS that rows will be read in random order; returns whether any advice was given."""
        return False

    def describe(self, name: str) -> str:
        """``name`` for messages, with the file(s) the rows come from."""
        return name

    def mapped_files(self) -> tuple[np.ndarray | None, list[tuple[int, np.ndarray]]]:
        """The memory maps the rows are read from, for page requests (:mod:`gpuloader.readahead`).

        ``(rows, [(first row, map), ...])``: row ``i`` of this source is row
        ``rows[i]`` (``i`` when ``rows`` is None) of the maps' rows concatenated,
        each map holding the rows from its first row on. Default: no maps.
        """
        return None, []


def read_rows_sorted(source: Source, rows: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` with ``source[rows]`` for rows in any order: read in ascending order, then put back.

    This is where a batch's rows of a source are read (the disk tier's path):
    reads go in file order (one pass forward over the pages, which the
    kernel's read-ahead rewards; memory maps copy runs of adjacent rows as one
    block), into a scratch buffer of this thread's, and the rows are then put
    back in the order the permutation asked for.

    Cost: one read of the batch's rows plus one in-memory copy of the batch; a source that
    ``reads_in_any_order`` is read straight into ``out``.
    """
    if source.reads_in_any_order:
        source.read_sorted(rows, out)
        return
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    staging = _thread_staging(out.shape, out.dtype)
    source.read_sorted(sorted_rows, staging)
    out[order] = staging


_staging = threading.local()


def _thread_staging(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A scratch array of this thread's, reused batch after batch (never handed out)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = getattr(_staging, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _staging.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def check_source_shape(source: Any) -> None:
    """Refuse a source whose ``shape`` or ``dtype`` are not what the interface promises (a new format's bug)."""
    shape = getattr(source, "shape", None)
    if not isinstance(shape, tuple) or not shape or not all(isinstance(size, int) and size >= 0 for size in shape):
        raise TypeError(
            f"{type(source).__name__}.shape must be a tuple of ints >= 0, samples first; it is {shape!r}."
        )
    if not isinstance(getattr(source, "dtype", None), np.dtype):
        raise TypeError(f"{type(source).__name__}.dtype must be a NumPy dtype; it is {source.dtype!r}.")
