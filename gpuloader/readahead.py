"""Which file pages to ask the kernel for, and when: the disk tier's read-ahead in the epoch's order.

A memory map learns what is needed one page fault at a time; the loader knows
the whole pass's order before its first batch. So while a pass over on-disk
leaves runs, one background thread per pass asks the kernel
(``madvise(MADV_WILLNEED)``) for:

- **the window**: the pages of the next ``window`` batches after the last one a
  worker started, each batch's row ranges coalesced and page-aligned, batch by
  batch in the pass's order. Many reads are then in flight together instead of
  one synchronous fault at a time, and only the pages the rows span are read.
- **the sweep**, where the files fit in the page cache (at most
  :data:`SWEEP_SHARE` of the available memory): every file read front to back
  in :data:`SWEEP_CHUNK_BYTES` requests, between window requests. Over a full
  epoch every page is needed anyway, and large sequential reads are what the
  disk does fastest; the pages stay cached until their rows come up.

Nothing is requested for data in RAM or on a GPU, for files whose pages are all
cached already (checked with ``mincore`` when the pass starts), or where the
platform has no ``madvise``. The pages asked for are page cache, not anonymous
memory, so the RAM bound holds; the window is bounded by batches and bytes
(:data:`WINDOW_BATCHES`, :data:`WINDOW_BYTES`).

The advice is given through ``ctypes`` (which releases the GIL for the call),
not ``mmap.madvise`` (which holds it while a full device queue makes it wait).

**Lifetime.** The thread holds no reference to the iteration. It ends when the
pass is closed (the iterator closed or dropped), when everything is requested,
or :data:`IDLE_S` after the last batch a worker started (an abandoned iteration
kept alive by a reference cycle); a later batch of the same pass starts it
again. Closing waits for a request in progress (one call, at most one chunk).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader import placement as placement_lib
from gpuloader.sources import is_disk_leaf
from gpuloader.sources.npy import coalesced_pages

WINDOW_BATCHES = 8
"""At most this many batches past the last one started have their pages requested."""

WINDOW_BYTES = 64 * 1024 * 1024
"""... and at most this many bytes of their rows (the window shrinks for large batches, never below one)."""

SWEEP_SHARE = 0.5
"""Files sweep only when their bytes are at most this share of the available memory."""

SWEEP_CHUNK_BYTES = 8 * 1024 * 1024
"""Bytes per sweep request."""

IDLE_S = 1.0
"""Seconds the thread waits for the next batch to be started before it ends."""

JOIN_S = 2.0
"""Seconds closing a pass waits for a request in progress."""

_PAGE = mmap.PAGESIZE


def _libc() -> Any:
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_WILLNEED"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


_LIBC = _libc()


@dataclass
class MappedFile:
    """One memory-mapped file of a pass: where its rows are, and the map pinned while the pass runs."""

    path: str
    base: int  # address of the mapping's first byte
    length: int  # bytes of the mapping
    row0: int  # offset in the mapping of the file's first row
    stride: int  # bytes between rows
    row_bytes: int
    pin: np.ndarray  # a view of the mapping's bytes: the map cannot be closed under the requests
    swept: int = 0  # the sweep has requested every byte before this offset (read and written by the thread)


def willneed(file: MappedFile, start: int, length: int) -> None:
    """``madvise(MADV_WILLNEED)`` on ``length`` bytes at ``start`` of ``file``'s mapping (page-aligned).

    Every request of this module goes through here (tests record them). The
    GIL is released for the call; errors (a range past a file that shrank) are
    ignored: the gather's own check reports a changed file.
    """
    _LIBC.madvise(file.base + start, length, mmap.MADV_WILLNEED)


def all_cached(file: MappedFile) -> bool:
    """Whether every page of ``file``'s mapping is in the page cache (``mincore``)."""
    pages = -(-file.length // _PAGE)
    vector = np.zeros(pages, dtype=np.uint8)
    if _LIBC.mincore(file.base, file.length, vector.ctypes.data) != 0:
        return False
    return bool(np.all(vector & 1))


class _Leaf:
    """One on-disk leaf: its row map (or None) and its files, with the first leaf row of each."""

    def __init__(self, leaf: Any) -> None:
        self.rows, maps = leaf.mapped_files()
        self.firsts = np.array([first for first, _ in maps], dtype=np.int64)
        self.files = [_mapped_file(mapped) for _, mapped in maps]

    def ranges(self, rows: np.ndarray) -> list[tuple[MappedFile, int, int]]:
        """``(file, start, length)``: the pages ``rows`` (leaf rows) span, ascending and coalesced per file."""
        base_rows = np.sort(rows if self.rows is None else self.rows[rows])
        bounds = np.searchsorted(base_rows, np.append(self.firsts[1:], np.iinfo(np.int64).max))
        requests, low = [], 0
        for file, first, high in zip(self.files, self.firsts.tolist(), bounds.tolist()):
            if file is not None and low < high:
                starts = file.row0 + (base_rows[low:high] - first) * file.stride
                requests.extend((file, a, b - a) for a, b in coalesced_pages(starts, file.row_bytes))
            low = high
        return requests

    def nbytes_per_row(self) -> int:
        return max((file.row_bytes for file in self.files if file is not None), default=0)


def _mapped_file(mapped: np.ndarray) -> MappedFile | None:
    mapping = getattr(mapped, "_mmap", None)
    if mapping is None or not len(mapping):
        return None
    pin = np.frombuffer(mapping, dtype=np.uint8)
    base = pin.ctypes.data
    row_bytes = int(np.prod(mapped.shape[1:], dtype=np.int64)) * mapped.dtype.itemsize
    return MappedFile(
        str(getattr(mapped, "filename", "")), base, len(mapping), mapped.ctypes.data - base,
        int(mapped.strides[0]) if mapped.ndim else row_bytes, row_bytes, pin,
    )


def for_pass(
    leaves: list[Any], order: np.ndarray | None, batch_size: int, steps: int, first: int = 0
) -> PassReadahead | None:
    """The read-ahead of batches ``first .. steps - 1`` of ``leaves`` in ``order`` (None: the input order).

    None when not needed.

    None when no leaf is on disk, the platform has no ``madvise``, or every
    page of the files is cached already. The sweep is on when the files take
    at most :data:`SWEEP_SHARE` of the available memory and every leaf reads
    all rows of its files (not a worker's shard of them).

    Cost: one ``mincore`` per file when they fit in memory (a byte per page).
    """
    disk = [leaf for leaf in leaves if is_disk_leaf(leaf)]
    if _LIBC is None or not disk or steps <= 0:
        return None
    if order is not None and not isinstance(order, np.ndarray):
        return None  # an order on another device: its data is not on disk
    disk_leaves = [_Leaf(leaf) for leaf in disk]
    files = list({file.base: file for leaf in disk_leaves for file in leaf.files if file is not None}.values())
    if not files:
        return None
    # A leaf of some of its files' rows (a worker's shard) would read the rest too: no sweep there.
    whole = all(leaf.rows is None for leaf in disk_leaves)
    sweep = whole and sum(file.length for file in files) <= SWEEP_SHARE * placement_lib.available_host_memory()
    if sweep and all(all_cached(file) for file in files):
        return None
    batch_bytes = batch_size * sum(leaf.nbytes_per_row() for leaf in disk_leaves)
    window = max(1, min(WINDOW_BATCHES, WINDOW_BYTES // max(batch_bytes, 1)))
    n = int(disk[0].shape[0])

    def rows_of(position: int) -> np.ndarray:
        start, stop = position * batch_size, min((position + 1) * batch_size, n)
        return np.arange(start, stop, dtype=np.int64) if order is None else np.asarray(order[start:stop])

    return PassReadahead(disk_leaves, rows_of, range(first, steps), window, files if sweep else [])


class PassReadahead:
    """The page requests of one pass: a window of batches ahead of the workers, and the sweep.

    Args:
        leaves: the pass's on-disk leaves.
        rows_of: ``rows_of(position)`` -> the leaf rows of batch ``position``.
        positions: the pass's batches, ``range(first, end)`` (a pass that resumes inside an epoch starts later).
        window: batches requested past the last one started.
        sweep: the files to read front to back (empty: no sweep).
    """

    def __init__(
        self, leaves: list[_Leaf], rows_of: Callable[[int], np.ndarray], positions: range, window: int,
        sweep: list[MappedFile],
    ) -> None:
        first = positions.start
        self._leaves = leaves
        self._rows_of = rows_of
        self._steps = positions.stop
        self.window = window
        # Smallest files first (labels, weights): their few pages then need no per-row requests.
        ordered = sorted(sweep, key=lambda file: file.length)
        self._sweep = [(file, start) for file in ordered for start in range(0, file.length, SWEEP_CHUNK_BYTES)]
        self._swept = 0
        self._started = first - 1  # the furthest batch a worker started
        self._requested = first  # the next batch whose pages are to be requested
        self._last_advance = time.monotonic()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def sweeps(self) -> bool:
        return bool(self._sweep)

    def advance(self, position: int) -> None:
        """A worker starts batch ``position``: request up to ``position + window`` (starting the thread if idle)."""
        with self._condition:
            if self._closed:
                return
            self._started = max(self._started, position)
            self._last_advance = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gpuloader-readahead", daemon=True)
                self._thread.start()
            else:
                self._condition.notify()

    def close(self) -> None:
        """Stop requesting; wait (up to :data:`JOIN_S`) for a request in progress."""
        with self._condition:
            self._closed = True
            thread = self._thread
            self._condition.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_S)

    def _next_job(self) -> tuple[str, Any] | None:
        """Under the lock: the next request to make, or None when there is nothing to do now.

        The pass's first ``window`` batches first (the first batch waits for
        them), then the sweep while batches are being started, then the window
        ahead of the last batch started (pages the sweep asked for skipped).
        """
        window_open = self._requested < self._steps and self._requested <= self._started + self.window
        sweeping = self._swept < len(self._sweep) and time.monotonic() - self._last_advance < IDLE_S
        if window_open and (self._requested < self.window or not sweeping):
            self._requested += 1
            return "batch", self._requested - 1
        if sweeping:
            self._swept += 1
            return "sweep", self._sweep[self._swept - 1]
        return None

    def _run(self) -> None:
        while True:
            with self._condition:
                job = None if self._closed else self._next_job()
                while job is None and not self._closed:
                    if self._requested >= self._steps and self._swept >= len(self._sweep):
                        break  # everything requested
                    idle = IDLE_S - (time.monotonic() - self._last_advance)
                    if idle <= 0:
                        break
                    self._condition.wait(idle)
                    job = self._next_job()
                if job is None or self._closed:
                    self._thread = None  # the next advance starts another
                    return
            kind, what = job
            if kind == "batch":
                rows = self._rows_of(what)
                for leaf in self._leaves:
                    for file, start, length in leaf.ranges(rows):
                        end = start + length
                        if end > file.swept:  # pages the sweep asked for are not asked for again
                            start = max(start, file.swept)
                            willneed(file, start, end - start)
            else:
                file, start = what
                length = min(SWEEP_CHUNK_BYTES, file.length - start)
                willneed(file, start, length)
                file.swept = start + length
