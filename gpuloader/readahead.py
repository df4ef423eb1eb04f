"""Which file pages to ask the kernel for, and when: the disk tier's read-ahead in the epoch's order.

A memory map learns what is needed one page fault at a time; the loader knows
the whole pass's order before its first batch. So while a pass over on-disk
leaves runs, one background thread per pass asks the kernel
(``madvise(MADV_WILLNEED)``) for:

- **the window**: the pages of the next ``window`` batches after the last one a
  worker started, each batch's row ranges coalesced and page-aligned, batch by
  batch in the pass's order. Many reads are then in flight together instead of
  one synchronous fault at a time, and only the pages the rows span are read.
  It stops once the sweep has asked for every page the pass reads.
- **the sweep**, where the pages the pass will read fit in the page cache (at
  most :data:`SWEEP_SHARE` of the available memory): those pages requested in
  file order, in requests of about :data:`SWEEP_CHUNK_BYTES`, between window
  requests. A pass over every row of its files (a whole epoch) reads every
  file front to back in large requests, which the disk does fastest. A pass
  over some of the rows (the rest of an epoch resumed inside it, a worker's
  shard) requests only the pages its remaining batches' rows span, ascending
  and coalesced: no page the pass will never touch. The pages stay cached
  until their rows come up. During such a pass the maps' read-around is off
  (``MADV_RANDOM``, back to ``MADV_NORMAL`` when the pass closes), since a
  fault would otherwise read 8 MB around a row, mostly pages the pass skips.

**Request size.** Linux reads at most a device's limit of one request (8 MB on
the machine measured, as little as 128 KB on many disks) and silently drops the
rest, so :func:`request` checks a long request with ``mincore``, asks again for
what was not read, and cuts later requests to what the kernel read.

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
from gpuloader.sources.npy import page_runs, reads_at_random

WINDOW_BATCHES = 8
"""At most this many batches past the last one started have their pages requested."""

WINDOW_BYTES = 64 * 1024 * 1024
"""... and at most this many bytes of their rows (the window shrinks for large batches, never below one)."""

SWEEP_SHARE = 0.5
"""A pass sweeps only when the bytes it will read are at most this share of the available memory."""

SWEEP_CHUNK_BYTES = 8 * 1024 * 1024
"""Bytes per sweep job: one request of a file read front to back, or a group of a partial pass's page runs."""

IDLE_S = 1.0
"""Seconds the thread waits for the next batch to be started before it ends."""

UNCHECKED_BYTES = 128 * 1024
"""Requests of at most this many bytes are taken as read whole (Linux's default read-ahead; see ``request``)."""

SETTLE_S = 0.1
"""Seconds :func:`request` waits at most for the pages of a checked request to appear in the page cache."""

SETTLE_POLL_S = 0.005
"""... reading what is cached every this many seconds until it stops growing."""

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
    random: bool = False  # the layout advised the map random access for good (files larger than memory)
    swept: int = 0  # the sweep has requested every byte before this offset (read and written by the thread)
    honoured: int = 0  # the longest request the kernel was seen to read whole (see ``request``)
    limit: int = 0  # the kernel read only this much of a longer request: the file's request size (0: none seen)


Runs = list[tuple[MappedFile, np.ndarray, np.ndarray]]
"""Page runs per file: ``(file, first bytes, end bytes)``, ascending."""


@dataclass
class Sweep:
    """What a pass sweeps: ``runs()`` -> the page runs to read in file order, per file (called on the thread),
    and the files whose read-around is off (``MADV_RANDOM``) while the pass runs."""

    runs: Callable[[], Runs]
    quiet: list[MappedFile]


def willneed(file: MappedFile, start: int, length: int) -> None:
    """``madvise(MADV_WILLNEED)`` on ``length`` bytes at ``start`` of ``file``'s mapping (page-aligned).

    Every request of this module goes through here (tests record them), by way of
    :func:`request`. The GIL is released for the call; errors (a range past a file
    that shrank) are ignored: the gather's own check reports a changed file.
    """
    _LIBC.madvise(file.base + start, length, mmap.MADV_WILLNEED)


def request(file: MappedFile, start: int, end: int) -> None:
    """Have bytes ``start .. end`` of ``file`` read into the page cache: :func:`willneed` in requests the kernel
    reads whole.

    The kernel reads at most a device's limit of one request (Linux's
    ``force_page_cache_ra``: the larger of the device's read-ahead, ``read_ahead_kb``,
    and its largest transfer, ``max_sectors_kb``; 8 MB on the machine measured, 128 KB
    to a few MB on many disks) and drops the rest without an error. So a request
    longer than the longest seen read whole is checked: the bytes cached from
    ``start`` on (``mincore``, read until they stop growing, since the kernel adds
    the pages of a request for a few ms after the call returns) are what it read.
    The rest is asked for again from there, and that length becomes the file's
    request size (``limit``): later requests are cut to it and made unchecked.
    Requests of at most :data:`UNCHECKED_BYTES` (a batch's rows, mostly) are
    never checked.

    Cost: one ``madvise`` per request; until a file's request size is known, per
    request longer than any read whole, a few ``mincore`` (a byte per page) over
    at most :data:`SETTLE_S`, while the disk reads what was asked for.
    """
    while start < end:
        length = min(end - start, file.limit) if file.limit else end - start
        willneed(file, start, length)
        if not file.limit and length > max(file.honoured, UNCHECKED_BYTES):
            read = settled_prefix(file, start, length)
            if read == 0:
                return  # nothing read (memory pressure, a file that shrank): the faults read the rest
            if read < length:
                file.limit = read
            else:
                file.honoured = length
            length = read
        start += length


def settled_prefix(file: MappedFile, start: int, length: int) -> int:
    """:func:`cached_prefix` once it has stopped growing for :data:`SETTLE_POLL_S` (at most :data:`SETTLE_S`)."""
    deadline = time.monotonic() + SETTLE_S
    read = cached_prefix(file, start, length)
    while read < length and time.monotonic() < deadline:
        time.sleep(SETTLE_POLL_S)
        now = cached_prefix(file, start, length)
        if now == read:
            break
        read = now
    return read


def cached_prefix(file: MappedFile, start: int, length: int) -> int:
    """Bytes from ``start`` (page-aligned) of ``file``'s mapping, at most ``length``, that are in the page cache."""
    pages = -(-length // _PAGE)
    vector = np.zeros(pages, dtype=np.uint8)
    if _LIBC.mincore(file.base + start, length, vector.ctypes.data) != 0:
        return 0
    missing = np.flatnonzero((vector & 1) == 0)
    return length if not len(missing) else int(missing[0]) * _PAGE


def advise(file: MappedFile, advice: int) -> None:
    """``madvise(advice)`` on all of ``file``'s mapping: ``MADV_RANDOM`` while a partial pass sweeps, then back.

    Every change of the maps' read-around goes through here (tests record them).
    """
    _LIBC.madvise(file.base, file.length, advice)


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
        return [
            (file, a, b - a) for file, firsts, ends in self.runs(rows) for a, b in zip(firsts.tolist(), ends.tolist())
        ]

    def runs(self, rows: np.ndarray) -> Runs:
        """``(file, first bytes, end bytes)``: :meth:`ranges` as arrays per file (16 bytes a run)."""
        base_rows = np.sort(rows if self.rows is None else self.rows[rows])
        bounds = np.searchsorted(base_rows, np.append(self.firsts[1:], np.iinfo(np.int64).max))
        runs, low = [], 0
        for file, first, high in zip(self.files, self.firsts.tolist(), bounds.tolist()):
            if file is not None and low < high:
                starts = file.row0 + (base_rows[low:high] - first) * file.stride
                runs.append((file, *page_runs(starts, file.row_bytes)))
            low = high
        return runs

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
        int(mapped.strides[0]) if mapped.ndim else row_bytes, row_bytes, pin, random=reads_at_random(mapping),
    )


def for_pass(
    leaves: list[Any], order: np.ndarray | None, batch_size: int, steps: int, first: int = 0
) -> PassReadahead | None:
    """The read-ahead of batches ``first .. steps - 1`` of ``leaves`` in ``order`` (None: the input order).

    None when no leaf is on disk, the platform has no ``madvise``, or every
    page of the files is cached already. The sweep is on when the bytes the
    pass reads take at most :data:`SWEEP_SHARE` of the available memory: the
    files' bytes for a pass over all their rows, else at most the pass's rows
    plus a page each.

    Cost: one ``mincore`` per file when the pass sweeps (a byte per page).
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
    n = int(disk[0].shape[0])
    start_row, stop_row = min(first * batch_size, n), min(steps * batch_size, n)
    # Every row of every file (a whole epoch): the files front to back. Else only the pages of the pass's rows.
    whole = start_row == 0 and stop_row == n and all(leaf.rows is None for leaf in disk_leaves)
    files_bytes = sum(file.length for file in files)
    pass_bytes = (stop_row - start_row) * sum(leaf.nbytes_per_row() + _PAGE for leaf in disk_leaves)
    sweep_bytes = files_bytes if whole else min(files_bytes, pass_bytes)
    sweep = sweep_bytes <= SWEEP_SHARE * placement_lib.available_host_memory()
    if sweep and all(all_cached(file) for file in files):
        return None
    batch_bytes = batch_size * sum(leaf.nbytes_per_row() for leaf in disk_leaves)
    window = max(1, min(WINDOW_BATCHES, WINDOW_BYTES // max(batch_bytes, 1)))

    def rows_of(start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop, dtype=np.int64) if order is None else np.asarray(order[start:stop])

    def batch_rows(position: int) -> np.ndarray:
        return rows_of(position * batch_size, min((position + 1) * batch_size, n))

    def sweep_runs() -> Runs:
        if whole:
            return [(file, np.zeros(1, np.int64), np.full(1, file.length, np.int64)) for file in files]
        rows = rows_of(start_row, stop_row)
        return [run for leaf in disk_leaves for run in leaf.runs(rows)]

    # A partial sweep brings in exactly the pages the pass needs; the kernel's read-around on a fault (8 MB
    # here) would read pages it never touches, so it is off for the pass (kept off where the layout chose so).
    plan = Sweep(sweep_runs, [] if whole else [file for file in files if not file.random]) if sweep else None
    return PassReadahead(disk_leaves, batch_rows, range(first, steps), window, plan)


def sweep_jobs(runs: Runs) -> Runs:
    """The sweep's jobs: ``(file, first bytes, end bytes)`` of about :data:`SWEEP_CHUNK_BYTES` each.

    Files smallest first (labels, weights: their few pages then need no
    per-row requests), each in file order; a run longer than a chunk is split
    at chunk boundaries, short runs are grouped until a job holds a chunk.
    """
    chunk = SWEEP_CHUNK_BYTES
    jobs = []
    for file, firsts, ends in sorted(runs, key=lambda run: run[0].length):
        lengths = ends - firsts
        pieces = np.maximum(1, -(-lengths // chunk))
        index = np.repeat(np.arange(len(firsts)), pieces)
        starts = firsts[index] + (np.arange(len(index)) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * chunk
        stops = np.minimum(starts + chunk, ends[index])
        sizes = stops - starts
        groups = (np.cumsum(sizes) - sizes) // chunk
        cuts = np.flatnonzero(np.diff(groups)) + 1
        jobs.extend((file, a, b) for a, b in zip(np.split(starts, cuts), np.split(stops, cuts)))
    return jobs


class PassReadahead:
    """The page requests of one pass: a window of batches ahead of the workers, and the sweep.

    Args:
        leaves: the pass's on-disk leaves.
        rows_of: ``rows_of(position)`` -> the leaf rows of batch ``position``.
        positions: the pass's batches, ``range(first, end)`` (a pass that resumes inside an epoch starts later).
        window: batches requested past the last one started.
        sweep: the pages to read in file order (planned on the thread, after the first window is requested)
            and the files whose read-around is off from now until :meth:`close` (then ``MADV_NORMAL``); None: no
            sweep.
    """

    def __init__(
        self, leaves: list[_Leaf], rows_of: Callable[[int], np.ndarray], positions: range, window: int,
        sweep: Sweep | None,
    ) -> None:
        first = positions.start
        self._leaves = leaves
        self._rows_of = rows_of
        self._first = first
        self._steps = positions.stop
        self.window = window
        self._plan = None if sweep is None else sweep.runs
        self._sweep: Runs | None = None if sweep else []
        self._swept = 0
        self._started = first - 1  # the furthest batch a worker started
        self._requested = first  # the next batch whose pages are to be requested
        self._last_advance = time.monotonic()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._quiet = [] if sweep is None else list(sweep.quiet)
        for file in self._quiet:
            advise(file, mmap.MADV_RANDOM)

    @property
    def sweeps(self) -> bool:
        """Whether this pass sweeps the pages it will read in file order."""
        return self._plan is not None

    def advance(self, position: int) -> None:
        """A worker starts batch ``position``: request up to ``position + window`` (starting the thread if idle and
        anything is left to ask for)."""
        with self._condition:
            if self._closed:
                return
            self._started = max(self._started, position)
            self._last_advance = time.monotonic()
            if self._thread is None and not self._all_requested():
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
        quiet, self._quiet = self._quiet, []
        for file in quiet:
            advise(file, mmap.MADV_NORMAL)

    def _sweep_left(self) -> bool:
        return self._sweep is None or self._swept < len(self._sweep)

    def _all_requested(self) -> bool:
        """Nothing is left to ask for: no thread is started again (one per batch would cost more than the batch)."""
        return (self._requested >= self._steps or self._swept_all()) and not self._sweep_left()

    def _swept_all(self) -> bool:
        """The sweep has asked for every page the pass reads: a window past it would ask for nothing."""
        return self._plan is not None and self._sweep is not None and self._swept >= len(self._sweep)

    def _next_job(self) -> tuple[str, Any] | None:
        """Under the lock: the next request to make, or None when there is nothing to do now.

        The pass's first ``window`` batches first (the first batch waits for
        them), then the sweep while batches are being started (its first job
        plans it), then the window ahead of the last batch started (pages the
        sweep asked for skipped), unless the sweep asked for every page: its
        batches would ask for nothing, at the cost of sorting their rows
        (about 0.1 s of CPU per epoch of 391 batches of 256 rows).
        """
        window_open = (
            self._requested < self._steps and self._requested <= self._started + self.window and not self._swept_all()
        )
        sweeping = self._sweep_left() and time.monotonic() - self._last_advance < IDLE_S
        if window_open and (self._requested < self._first + self.window or not sweeping):
            self._requested += 1
            return "batch", self._requested - 1
        if sweeping:
            if self._sweep is None:
                return "plan", None
            self._swept += 1
            return "sweep", self._sweep[self._swept - 1]
        return None

    def _run(self) -> None:
        while True:
            with self._condition:
                job = None if self._closed else self._next_job()
                while job is None and not self._closed:
                    if self._all_requested():
                        break
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
                            request(file, max(start, file.swept), end)
            elif kind == "plan":
                assert self._plan is not None
                jobs = sweep_jobs(self._plan())  # outside the lock: a sort of the pass's rows
                with self._condition:
                    self._sweep = jobs
            else:
                file, starts, ends = what
                for start, end in zip(starts.tolist(), ends.tolist()):
                    request(file, start, min(end, file.length))
                file.swept = int(ends[-1])
