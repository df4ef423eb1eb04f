"""A ``.npy`` file or a memory map as a :class:`~gpuloader.sources.base.Source`, read through the map.

Opening reads only the header and maps the file. A memory map trusts the file
to stay as it was opened: a file truncated under it kills the process with
SIGBUS at the next read past the new end, and a file rewritten in place is read
through the old header's shape and dtype. So the file is remembered when it is
opened (device, inode, size, modification time) and
:meth:`NpySource.check_unchanged` compares it, one ``os.stat``, before rows are
read. A file deleted or replaced by a rename is not a change: the map holds the
inode it opened, whose data stays readable.

The rule holds for maps the caller opened writable (``'r+'``, ``'w+'``) too: a
file written after the loader opened it is a changed file, whoever wrote it.
Another writer's rewrite always moves the modification time; writes through a
map move it at the first write to each page after the page was last saved, so
most are caught, not all. Data that changes under a running loader is passed
as an array in memory (``np.asarray(mapped)``), which is not watched.
"""

from __future__ import annotations

import mmap
import os
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader.sources.base import Source, SourceChangedError

try:  # the compiled row gather (setup.py builds it where a C compiler is found); else sorted reads put back
    from gpuloader.sources import _rows
except ImportError:  # pragma: no cover - depends on the build
    _rows = None

PathLike = (str, os.PathLike)


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
    mode: str  # the map's mode: 'r', or 'r+'/'w+'/'c' for a map the caller opened


class NpySource(Source):
    """The rows of one memory-mapped array (a ``.npy`` file opened by path, or the caller's ``np.memmap``).

    Raises:
        SourceChangedError: the file is already shorter than the map (reading would crash the process).
    """

    def __init__(self, mapped: np.ndarray) -> None:
        self.array = mapped
        self.shape = tuple(int(size) for size in mapped.shape)
        self.dtype = mapped.dtype
        self._opened = _remember(mapped)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * mapped.dtype.itemsize
        # The array's bytes, for the compiled gather (rows copied from the map in any order); None without it.
        usable = _rows is not None and mapped.flags.c_contiguous and self._row_bytes > 0 and mapped.size > 0
        self._bytes = mapped.reshape(-1).view(np.uint8) if usable else None

    @property
    def reads_in_any_order(self) -> bool:  # type: ignore[override]
        """True with the compiled gather: the batch's rows are copied from the map in the batch's order, so
        :func:`~gpuloader.sources.base.read_rows_sorted` needs no sort and no put-back copy."""
        return self._bytes is not None

    @property
    def path(self) -> str | None:
        return self._opened.path if self._opened is not None else None

    def describe(self, name: str) -> str:
        filename = getattr(self.array, "filename", None)
        return f"{name} ({filename!r})" if filename else name

    def mapped_files(self) -> tuple[np.ndarray | None, list[tuple[int, np.ndarray]]]:
        return None, [(0, self.array)]

    def read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = self.array[rows[i]]``: rows ascending, or in any order where :attr:`reads_in_any_order`.

        Cost: with the compiled gather, one call per batch (a ``memcpy`` per row without the GIL, the pages
        of the row 4 ahead prefetched); a map advised random access first asks for all of the batch's pages
        (:func:`prefetch_rows`). Without it, runs of adjacent rows as block copies, else ``np.take``.
        """
        if self._bytes is None:
            take_sorted_from_map(self.array, rows, out)
            return
        rows = np.asarray(rows, dtype=np.int64)
        mapping = getattr(self.array, "_mmap", None)
        if mapping is not None and reads_at_random(mapping):
            prefetch_rows(self.array, np.sort(rows))
        target = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
        _rows.gather(self._bytes, rows * self._row_bytes, self._row_bytes, target.reshape(-1).view(np.uint8))
        if target is not out:
            out[...] = target

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def check_unchanged(self, rows: slice | np.ndarray | None = None) -> None:
        """Raise :class:`SourceChangedError` if the file changed; see the module docstring.

        Changed means: the path still names the file that was opened (same
        device and inode) and its size or modification time differs; or the path
        names another file (or none) and the opened file's own size differs.

        Cost: one ``os.stat``, a few microseconds. A file changed between this
        check and the read is not caught.
        """
        opened = self._opened
        if opened is None:
            return
        try:
            stat = os.stat(opened.path)
        except FileNotFoundError:
            stat = None
        if stat is not None and (stat.st_dev, stat.st_ino) == (opened.device, opened.inode):
            changes = []
            if stat.st_size != opened.size:
                changes.append(f"size {opened.size} -> {stat.st_size} bytes")
            if stat.st_mtime_ns != opened.mtime_ns:  # writable maps too: the loader cannot tell who wrote
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
            _raise_changed(
                opened, f"the opened file, since {where}, changed size: {opened.mapped_size} -> {size} bytes"
            )

    def advise_random_access(self) -> bool:
        """Tell the kernel the file's pages will be read in random order (``MADV_RANDOM``).

        A page fault on a memory map normally reads ahead well past the page
        asked for; for shuffled batches that read is mostly wasted, so the whole
        file gets read for a fraction of its rows. With the advice each fault
        reads only the pages the row spans, and each read asks for its rows'
        pages up front (:func:`prefetch_rows`). Returns whether any advice was
        given (not on every platform, and only for maps NumPy made).
        """
        mapping = getattr(self.array, "_mmap", None)  # np.memmap keeps its mmap.mmap here
        if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_RANDOM"):
            return False
        _madvise(mapping, mmap.MADV_RANDOM)
        _RANDOM_ACCESS.add(mapping)
        return True


def _remember(mapped: np.ndarray) -> _Opened | None:
    """The identity, size and modification time of the file under a map (None for a map without a file)."""
    mapping = getattr(mapped, "_mmap", None)
    filename = getattr(mapped, "filename", None)
    if mapping is None or not filename:
        return None
    path = os.fspath(filename)
    stat = os.stat(path)
    try:
        mapped_size = mapping.size()
    except (OSError, ValueError):  # no descriptor kept with the map: the path's size stands in
        mapped_size = stat.st_size
    mapped_end = mapped.offset - mapped.offset % mmap.ALLOCATIONGRANULARITY + len(mapping)
    if mapped_size < mapped_end:
        raise SourceChangedError(
            f"{path!r} is {mapped_size} bytes, shorter than its memory map ({mapped_end} bytes): the file was "
            "truncated after it was mapped, and reading it would crash the process (SIGBUS). Map the file "
            "again (np.load(path, mmap_mode='r')) or pass its path."
        )
    return _Opened(path, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, mapped_size, mapping,
                   str(getattr(mapped, "mode", "r")))


def _raise_changed(opened: _Opened, what: str) -> None:
    writable = ""
    if opened.mode in ("r+", "w+"):
        writable = (
            f" The map was opened writable (mode {opened.mode!r}); writes made through it after the loader was "
            "built count too. For data you update in place while the loader reads it, pass it as an array in "
            "memory, np.asarray(mapped) (not watched: on the host each batch holds what the array holds then)."
        )
    raise SourceChangedError(
        f"{opened.path!r} changed on disk after the loader opened it: {what}. The loader reads it batch by batch "
        "through a memory map of the file as it was opened, so a shorter file would crash the process (SIGBUS) "
        "and new contents would be read through the old header's shape and dtype. Build a new Loader over the "
        "new file. To update data under a running loader, write a new file and rename it over the old path "
        "(os.replace): the loader keeps serving the data it opened." + writable
    )


def open_npy(value: Any, name: str) -> NpySource | None:
    """An :class:`NpySource` for a ``.npy`` path or an ``np.memmap``; None for anything else.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a readable ``.npy`` (truncated, another format, object dtype, 0-d).
        SourceChangedError: a memory map whose file is already shorter than the map.
    """
    if isinstance(value, np.memmap):
        return NpySource(value.view())  # a view: the caller's object stays as it was
    if isinstance(value, PathLike):
        return NpySource(load_npy(value, name))
    return None


def load_npy(path: Any, name: str) -> np.ndarray:
    """Map a ``.npy`` file read-only, or an error naming ``name``, the file and the fix."""
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


#: The maps advised random access (read-ahead off); only their reads ask for their pages up front.
_RANDOM_ACCESS: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()


def reads_at_random(mapping: mmap.mmap) -> bool:
    """Whether ``mapping`` was advised random access for good (:meth:`NpySource.advise_random_access`)."""
    return mapping in _RANDOM_ACCESS


def _madvise(mapping: mmap.mmap, advice: int, start: int = 0, length: int | None = None) -> None:
    """``mapping.madvise``: every piece of advice the loader gives goes through here (tests record it)."""
    if length is None:
        mapping.madvise(advice)
    else:
        mapping.madvise(advice, start, length)


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

    Only on maps advised random access (:meth:`NpySource.advise_random_access`):
    with read-ahead off, faulting the rows one by one would wait for one 4 KB
    read at a time; this puts all of the batch's reads in flight together, and
    reads only the pages the rows touch.
    Returns how many ranges were requested (0 where the advice is unavailable).
    """
    mapping = getattr(mapped, "_mmap", None)
    if mapping is None or mapping not in _RANDOM_ACCESS or not hasattr(mmap, "MADV_WILLNEED") or not len(sorted_rows):
        return 0  # read-ahead on: the kernel's read-around already brings the pages in
    base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    row_bytes = int(mapped.strides[0])
    ranges = coalesced_pages((mapped.ctypes.data - base) + sorted_rows * row_bytes, row_bytes)
    for start, end in ranges:
        _madvise(mapping, mmap.MADV_WILLNEED, start, end - start)
    return len(ranges)


def coalesced_pages(starts: np.ndarray, row_bytes: int) -> list[tuple[int, int]]:
    """``[(first byte, end byte)]`` of the pages that rows at ascending byte offsets ``starts`` span, merged."""
    firsts, ends = page_runs(starts, row_bytes)
    return list(zip(firsts.tolist(), ends.tolist()))


def page_runs(starts: np.ndarray, row_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`coalesced_pages` as two int64 arrays, ``(first bytes, end bytes)``: 16 bytes a run, no tuples."""
    if not len(starts) or row_bytes <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first_page = np.asarray(starts, dtype=np.int64) // mmap.PAGESIZE
    last_page = (np.asarray(starts, dtype=np.int64) + row_bytes - 1) // mmap.PAGESIZE
    opens = np.ones(len(first_page), dtype=bool)
    opens[1:] = first_page[1:] > last_page[:-1] + 1
    heads = np.flatnonzero(opens)
    tails = np.append(heads[1:] - 1, len(first_page) - 1)
    return first_page[heads] * mmap.PAGESIZE, (last_page[tails] + 1) * mmap.PAGESIZE
