"""Inputs that stay on disk: ``.npy`` paths, memory maps and lists of ``.npy`` shards.

Nothing here reads the data: opening a source reads only the ``.npy`` headers
and maps the files. Rows are read when a batch (or an upload chunk) asks for
them, in ascending file order.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

PathLike = (str, os.PathLike)


class ShardedArray:
    """The rows of several ``.npy`` files, concatenated in order, read lazily.

    Every shard has the same trailing shape and dtype. Indexing with a slice of
    rows returns a NumPy copy of just those rows; :meth:`take_sorted` gathers
    ascending row indices shard by shard.
    """

    def __init__(self, maps: Sequence[np.ndarray], paths: Sequence[str]) -> None:
        self.maps = list(maps)
        self.paths = [str(path) for path in paths]
        lengths = [int(m.shape[0]) for m in self.maps]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *self.maps[0].shape[1:])
        self.dtype = self.maps[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(int(m.nbytes) for m in self.maps)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) and len(key) == 2 and key[1] is Ellipsis else key
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("ShardedArray supports contiguous row slices only, e.g. a[10:20]")
        start, stop, _ = rows.indices(self.shape[0])
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
        self._copy_range(start, stop, out)
        return out

    def _copy_range(self, start: int, stop: int, out: np.ndarray) -> None:
        for shard, mapped in enumerate(self.maps):
            low, high = int(self.offsets[shard]), int(self.offsets[shard + 1])
            a, b = max(start, low), min(stop, high)
            if a < b:
                out[a - start : b - start] = mapped[a - low : b - low]

    def take_sorted(self, sorted_rows: np.ndarray, out: np.ndarray) -> None:
        """Copy ``self[sorted_rows]`` (ascending indices) into ``out``, shard by shard."""
        bounds = np.searchsorted(sorted_rows, self.offsets)
        for shard, mapped in enumerate(self.maps):
            a, b = int(bounds[shard]), int(bounds[shard + 1])
            if a < b:
                take_sorted_from_map(mapped, sorted_rows[a:b] - self.offsets[shard], out[a:b])


class RowSubset:
    """Some rows (ascending indices) of an on-disk array, read lazily: one worker's shard."""

    def __init__(self, base: Any, rows: np.ndarray) -> None:
        self.base = base
        self.rows = rows
        self.shape = (len(rows), *base.shape[1:])
        self.dtype = base.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) and len(key) == 2 and key[1] is Ellipsis else key
        if not isinstance(rows, slice):
            raise TypeError("RowSubset supports row slices only, e.g. a[10:20]")
        wanted = self.rows[rows]
        out = np.empty((len(wanted), *self.shape[1:]), self.dtype)
        read_rows_sorted(self.base, wanted, out)
        return out


def advise_random_access(leaf: Any) -> bool:
    """Tell the kernel a leaf's file pages will be read in random order (``MADV_RANDOM``).

    A page fault on a memory map normally reads ahead well past the page asked
    for; for shuffled batches that read is mostly wasted, so the whole file
    gets read for a fraction of its rows. With the advice each fault reads only
    the pages the row spans. Returns whether any advice was given (not on every
    platform, and only for maps NumPy made).
    """
    if isinstance(leaf, RowSubset):
        return advise_random_access(leaf.base)
    if isinstance(leaf, ShardedArray):
        return all([advise_random_access(mapped) for mapped in leaf.maps])
    mapping = getattr(leaf, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_RANDOM"):
        return False
    mapping.madvise(mmap.MADV_RANDOM)
    return True


def is_disk_leaf(leaf: Any) -> bool:
    """Whether a leaf is read from disk batch by batch (a memory map, shards, or a subset of them)."""
    return isinstance(leaf, (np.memmap, ShardedArray, RowSubset))


def open_source(value: Any, name: str) -> Any:
    """A memory map or :class:`ShardedArray` for a disk input; None for anything else.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a readable ``.npy`` (truncated, another
            format, object dtype), or shards whose trailing shape or dtype differ.
    """
    if isinstance(value, np.memmap):
        return value
    if isinstance(value, PathLike):
        return _open_npy(value, name)
    if isinstance(value, list) and value and all(isinstance(item, PathLike) for item in value):
        maps = [_open_npy(path, f"{name} shard {i}") for i, path in enumerate(value)]
        _check_shards(maps, value, name)
        return ShardedArray(maps, value)
    return None


def _open_npy(path: Any, name: str) -> np.ndarray:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: the file {path!r} does not exist; check the path.")
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:
        size = os.path.getsize(path)
        raise ValueError(
            f"{name}: {path!r} ({size} bytes) is not a readable .npy file ({error}). Save arrays with "
            "np.save; a truncated file must be written again."
        ) from error
    if not isinstance(mapped, np.ndarray):  # np.load of an .npz gives an NpzFile
        raise ValueError(f"{name}: {path!r} is not a single .npy array; save each array with np.save.")
    if mapped.ndim == 0:
        raise ValueError(f"{name}: {path!r} holds a 0-d array; every input needs a first dimension of samples.")
    return mapped


def _check_shards(maps: list[np.ndarray], paths: Sequence[Any], name: str) -> None:
    first = maps[0]
    for path, mapped in zip(paths[1:], maps[1:]):
        if mapped.shape[1:] != first.shape[1:] or mapped.dtype != first.dtype:
            raise ValueError(
                f"{name}: shards must share trailing shape and dtype; {os.fspath(paths[0])!r} has rows of "
                f"shape {first.shape[1:]} and dtype {first.dtype}, {os.fspath(path)!r} has {mapped.shape[1:]} "
                f"and {mapped.dtype}. Re-save the shards with matching rows."
            )


def read_rows_sorted(leaf: Any, rows: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` with ``leaf[rows]``, reading the file in ascending row order.

    Reads go in file order (one pass forward over the pages, which the kernel's
    read-ahead rewards), runs of adjacent rows are copied as one block, and the
    rows are then put back in the order the permutation asked for.

    Cost: one read of the batch's rows plus one in-memory copy of the batch.
    """
    if isinstance(leaf, RowSubset):  # its rows are ascending, so the mapping keeps the order
        read_rows_sorted(leaf.base, leaf.rows[rows], out)
        return
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    staging = _thread_staging(out.shape, out.dtype)
    if isinstance(leaf, ShardedArray):
        leaf.take_sorted(sorted_rows, staging)
    else:
        take_sorted_from_map(leaf, sorted_rows, staging)
    out[order] = staging


def take_sorted_from_map(mapped: np.ndarray, sorted_rows: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = mapped[sorted_rows]`` for one memory map, its pages requested up front."""
    prefetch_rows(mapped, sorted_rows)
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    if len(breaks) + 1 <= len(sorted_rows) // 4:  # long runs: block copies
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(sorted_rows)]])
        for a, b in zip(starts.tolist(), ends.tolist()):
            first = int(sorted_rows[a])
            out[a:b] = mapped[first : first + (b - a)]
    else:
        np.take(mapped, sorted_rows, axis=0, out=out, mode="clip")


def prefetch_rows(mapped: np.ndarray, sorted_rows: np.ndarray) -> int:
    """Ask the kernel for every page the rows span at once (``MADV_WILLNEED``), coalesced.

    With read-ahead off (:func:`advise_random_access`), faulting the rows one
    by one would wait for one 4 KB read at a time; this puts all of the batch's
    reads in flight together, and reads only the pages the rows touch.
    Returns how many ranges were requested (0 where the advice is unavailable).
    """
    mapping = getattr(mapped, "_mmap", None)
    if mapping is None or not hasattr(mmap, "MADV_WILLNEED") or len(sorted_rows) == 0:
        return 0
    page = mmap.PAGESIZE
    base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    row_bytes = int(mapped.strides[0])
    starts = (mapped.ctypes.data - base) + sorted_rows * row_bytes
    first_page = starts // page
    last_page = (starts + row_bytes - 1) // page
    opens = np.ones(len(first_page), dtype=bool)
    opens[1:] = first_page[1:] > last_page[:-1] + 1
    heads = np.flatnonzero(opens)
    tails = np.append(heads[1:] - 1, len(first_page) - 1)
    for first, last in zip(first_page[heads].tolist(), last_page[tails].tolist()):
        mapping.madvise(mmap.MADV_WILLNEED, first * page, (last - first + 1) * page)
    return len(heads)


_staging = threading.local()


def _thread_staging(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A scratch array of this thread's, reused batch after batch (never handed out)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = getattr(_staging, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _staging.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)
