"""Inputs that stay on disk: ``.npy`` paths, memory maps and lists of ``.npy`` shards.

Nothing here reads the data: opening a source reads only the ``.npy`` headers
and maps the files. Rows are read when a batch (or an upload chunk) asks for
them, in ascending file order.

A memory map trusts the file to stay as it was opened: a file truncated under
it kills the process with SIGBUS at the next read past the new end, and a file
rewritten in place is read through the old header's shape and dtype. So every
file is remembered when it is opened (device, inode, size, modification time)
and :func:`check_unchanged` compares it, one ``os.stat`` per file a batch
touches, before the batch is read. A file deleted or replaced by a rename is
not a change: the map holds the inode it opened, whose data stays readable.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PathLike = (str, os.PathLike)


class SourceChangedError(RuntimeError):
    """A file under an on-disk input changed after the loader opened it; the message names it."""


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

    def shards_of(self, rows: slice | np.ndarray | None) -> list[int]:
        """The shards that ``rows`` (a slice, row indices, or None for all) read from."""
        if rows is None:
            return list(range(len(self.maps)))
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            if start >= stop:
                return []
            first, last = np.searchsorted(self.offsets, [start, stop - 1], side="right") - 1
            return list(range(int(first), int(last) + 1))
        return np.unique(np.searchsorted(self.offsets, rows, side="right") - 1).tolist()

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


#: The maps advised random access (read-ahead off); only their batches ask for their pages up front.
_RANDOM_ACCESS: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()


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
    _madvise(mapping, mmap.MADV_RANDOM)
    _RANDOM_ACCESS.add(mapping)
    return True


def _madvise(mapping: mmap.mmap, advice: int, start: int = 0, length: int | None = None) -> None:
    """``mapping.madvise``: every piece of advice the loader gives goes through here (tests record it)."""
    if length is None:
        mapping.madvise(advice)
    else:
        mapping.madvise(advice, start, length)


def is_disk_leaf(leaf: Any) -> bool:
    """Whether a leaf is read from disk batch by batch (a memory map, shards, or a subset of them)."""
    return isinstance(leaf, (np.memmap, ShardedArray, RowSubset))


@dataclass(frozen=True)
class _Opened:
    """A file as it was when its memory map was made."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    mapped_size: int  # the size of the file the map holds, read through the map's own descriptor
    mapping: Any
    #: False for maps the caller opened writable ('r+', 'w+'): writing through them updates the time.
    watch_mtime: bool


_OPENED = "_gpuloader_opened"


def remember_files(leaf: Any) -> Any:
    """Record the identity, size and modification time of the file(s) under an on-disk leaf; returns it.

    Maps already remembered keep their record (the state they were opened in).

    Raises:
        SourceChangedError: the file is already shorter than the map (reading would crash the process).
    """
    if isinstance(leaf, RowSubset):
        remember_files(leaf.base)
    elif isinstance(leaf, ShardedArray):
        for mapped in leaf.maps:
            remember_files(mapped)
    elif isinstance(leaf, np.memmap) and getattr(leaf, _OPENED, None) is None:
        mapping = getattr(leaf, "_mmap", None)
        if mapping is None or not leaf.filename:
            return leaf
        path = os.fspath(leaf.filename)
        stat = os.stat(path)
        try:
            mapped_size = mapping.size()
        except (OSError, ValueError):  # no descriptor kept with the map: the path's size stands in
            mapped_size = stat.st_size
        mapped_end = leaf.offset - leaf.offset % mmap.ALLOCATIONGRANULARITY + len(mapping)
        if mapped_size < mapped_end:
            raise SourceChangedError(
                f"{path!r} is {mapped_size} bytes, shorter than its memory map ({mapped_end} bytes): the file was "
                "truncated after it was mapped, and reading it would crash the process (SIGBUS). Map the file "
                "again (np.load(path, mmap_mode='r')) or pass its path."
            )
        opened = _Opened(
            path, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, mapped_size, mapping,
            watch_mtime=leaf.mode not in ("r+", "w+"),
        )
        object.__setattr__(leaf, _OPENED, opened)
    return leaf


def check_unchanged(leaf: Any, rows: slice | np.ndarray | None = None) -> None:
    """Raise :class:`SourceChangedError` if a file that ``rows`` of ``leaf`` are read from has changed.

    Changed means: the path still names the file that was opened (same device
    and inode) and its size or modification time differs; or the path names
    another file (or none) and the opened file's own size differs. A file
    deleted or replaced by a rename is not a change: the map keeps the opened
    inode, so its data is still served.

    Cost: one ``os.stat`` per file (per shard that ``rows`` touch), a few
    microseconds. A file changed between this check and the read is not caught.
    """
    if isinstance(leaf, RowSubset):
        check_unchanged(leaf.base, None if rows is None else leaf.rows[rows])
    elif isinstance(leaf, ShardedArray):
        for shard in leaf.shards_of(rows):
            _check_map(leaf.maps[shard])
    elif isinstance(leaf, np.memmap):
        _check_map(leaf)


def _check_map(mapped: np.memmap) -> None:
    opened = getattr(mapped, _OPENED, None)
    if opened is None:
        remember_files(mapped)
        return
    try:
        stat = os.stat(opened.path)
    except FileNotFoundError:
        stat = None
    if stat is not None and (stat.st_dev, stat.st_ino) == (opened.device, opened.inode):
        changes = []
        if stat.st_size != opened.size:
            changes.append(f"size {opened.size} -> {stat.st_size} bytes")
        if opened.watch_mtime and stat.st_mtime_ns != opened.mtime_ns:
            changes.append(f"modified: mtime_ns {opened.mtime_ns} -> {stat.st_mtime_ns}")
        if changes:
            _raise_changed(opened, f"it was rewritten in place ({'; '.join(changes)})")
        return
    try:  # deleted or renamed over: the map holds the opened inode; only its own size matters
        size = opened.mapping.size()
    except (OSError, ValueError):
        return
    if size != opened.mapped_size:
        where = "deleted" if stat is None else "replaced at that path"
        _raise_changed(opened, f"the opened file, since {where}, changed size: {opened.mapped_size} -> {size} bytes")


def _raise_changed(opened: _Opened, what: str) -> None:
    raise SourceChangedError(
        f"{opened.path!r} changed on disk after the loader opened it: {what}. The loader reads it batch by batch "
        "through a memory map of the file as it was opened, so a shorter file would crash the process (SIGBUS) "
        "and new contents would be read through the old header's shape and dtype. Build a new Loader over the "
        "new file. To update data under a running loader, write a new file and rename it over the old path "
        "(os.replace): the loader keeps serving the data it opened."
    )


def open_source(value: Any, name: str) -> Any:
    """A memory map or :class:`ShardedArray` for a disk input; None for anything else.

    Every file opened is remembered (see :func:`check_unchanged`).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a readable ``.npy`` (truncated, another
            format, object dtype), shards whose trailing shape or dtype differ,
            or an empty list.
        TypeError: a list of strings that are not file names (e.g. string labels).
        SourceChangedError: a memory map whose file is already shorter than the map.
    """
    if isinstance(value, np.memmap):
        return remember_files(value.view())  # a view of the caller's map, so the caller's object is not marked
    if isinstance(value, PathLike):
        return _open_npy(value, name)
    if isinstance(value, list) and all(isinstance(item, PathLike) for item in value):
        if not value:
            raise ValueError(
                f"{name} is an empty list; give the data: an array, a list of numbers, or a non-empty list "
                "of .npy paths (shards)."
            )
        if not any(_names_a_file(item) for item in value):
            example = ", ".join(repr(os.fspath(item)) for item in value[:3])
            raise TypeError(
                f"{name} is a list of {len(value)} strings ({example}{', ...' if len(value) > 3 else ''}) "
                "that are neither numeric data nor .npy files (none ends in .npy or exists). Strings "
                "cannot be batched: encode them as integer ids, e.g. names, ids = np.unique(labels, "
                f"return_inverse=True), and pass ids; or, if these are files, pass their paths."
            )
        maps = [_open_npy(path, f"{name} shard {i}") for i, path in enumerate(value)]
        _check_shards(maps, value, name)
        return ShardedArray(maps, value)
    return None


def _names_a_file(item: Any) -> bool:
    """Whether a list item is meant as a file: a path object, a name ending in .npy, or an existing file."""
    if not isinstance(item, str):
        return True
    return item.lower().endswith(".npy") or os.path.exists(item)


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
    return remember_files(mapped)


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

    Only on maps advised random access (:func:`advise_random_access`): with
    read-ahead off, faulting the rows one by one would wait for one 4 KB read
    at a time; this puts all of the batch's reads in flight together, and
    reads only the pages the rows touch.
    Returns how many ranges were requested (0 where the advice is unavailable).
    """
    mapping = getattr(mapped, "_mmap", None)
    if mapping is None or mapping not in _RANDOM_ACCESS or not hasattr(mmap, "MADV_WILLNEED") or not len(sorted_rows):
        return 0  # read-ahead on: the kernel's read-around already brings the pages in
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
        _madvise(mapping, mmap.MADV_WILLNEED, first * page, (last - first + 1) * page)
    return len(heads)


_staging = threading.local()


def _thread_staging(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A scratch array of this thread's, reused batch after batch (never handed out)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = getattr(_staging, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _staging.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def mapped_files(leaf: Any) -> tuple[np.ndarray | None, list[tuple[int, np.ndarray]]]:
    """The memory maps under an on-disk leaf: ``(rows, [(first row, map), ...])``, for page requests.

    Row ``i`` of the leaf is row ``rows[i]`` (``i`` when ``rows`` is None) of
    the maps' rows concatenated; each map holds the rows from its first row on.
    """
    if isinstance(leaf, RowSubset):
        rows, maps = mapped_files(leaf.base)
        return (leaf.rows if rows is None else rows[leaf.rows]), maps
    if isinstance(leaf, ShardedArray):
        return None, [(int(first), mapped) for first, mapped in zip(leaf.offsets[:-1].tolist(), leaf.maps)]
    if isinstance(leaf, np.memmap):
        return None, [(0, leaf)]
    return None, []
