"""A fixed-shape numeric Arrow column as a :class:`~gpuloader.sources.base.Source`, read where Arrow holds it.

The rows of a ``pyarrow`` column live in its record batches' values buffers:
for a dataset saved with ``save_to_disk``, memory maps of its ``.arrow`` files,
about a thousand rows per record batch. Reading a shuffled batch record batch
by record batch costs a NumPy call per record batch touched (most of them).
Here a row is instead found by its address: at construction each record
batch's first-row address is noted (``O(record batches)`` memory), and each
mapped memory region the rows lie in (``/proc/self/maps`` on Linux: runs of
address-contiguous mappings; elsewhere one region per record batch) becomes a
view in which "row at byte ``b``" is the ``row_bytes`` bytes from ``b``
(``as_strided``, a one-byte stride over items of ``row_bytes`` bytes). A batch is then one fancy index per
region its rows lie in: usually one, whatever the number of record batches.

An index mapping (``rows`` of a ``datasets.Dataset`` after ``select``,
``shuffle``, ``filter``) is honoured exactly: row ``i`` is row ``indices[i]`` of
the column. Nothing is copied at construction but a multi-chunk index mapping
(8 bytes per row); the views hold the Arrow buffers, so the memory stays mapped.

Change detection: the files under the column are opened once more (a
descriptor each, nothing mapped) and ``fstat``-ed before every batch: a file
rewritten or truncated in place (which would crash a memory map with SIGBUS)
raises :class:`~gpuloader.sources.base.SourceChangedError`. A file replaced by a
rename is not a change: the maps hold the data that was opened.

The disk tier's read-ahead (:mod:`gpuloader.readahead`) asks the kernel for
the pages of the batches ahead through :meth:`ArrowSource.mapped_files`: each
file's map, in which each row is found by its byte offset.
"""

from __future__ import annotations

import bisect
import os
import weakref
from typing import Any, ClassVar

import numpy as np

from gpuloader.sources.base import Source, SourceChangedError

try:  # the compiled gather (setup.py builds it where a C compiler is found); else NumPy's fancy index
    from gpuloader.sources import _rows
    _ROWS_ERROR = ""
except ImportError as _error:  # pragma: no cover - depends on the build
    _rows = None
    _ROWS_ERROR = str(_error)


def compiled_gather_missing() -> str | None:
    """Why the compiled row gather (``_rows``) is not in use, with the fix; None when it is."""
    if _rows is not None and not hasattr(_rows, "take"):
        return ("the C extension gpuloader.sources._rows was built from an older source (it has no take()); Arrow "
                "columns are gathered by its older, slower path. Fix: rebuild it (pip install -e . or python setup.py "
                "build_ext --inplace).")
    if _rows is not None:
        return None
    return (f"the C extension gpuloader.sources._rows is not built ({_ROWS_ERROR or 'not imported'}); Arrow columns "
            "(Hugging Face datasets) are gathered by NumPy's fancy index, and .npy files on the disk tier read in "
            "sorted order then put back (same rows, the batch's bytes copied twice). "
            "Fix: install a C compiler and reinstall gpuloader.")


class ArrowSource(Source):
    """Rows of a fixed-shape numeric Arrow column (its chunks' values), optionally through an index mapping.

    Args:
        views: one NumPy view per chunk (``(rows, *shape)``, C-contiguous rows), over the Arrow buffers.
        indices: row ``i`` is column row ``indices[i]`` (None: the column's rows in order).
        files: the files the chunks are memory maps of (watched for changes; none: data in memory).
    """

    reads_in_any_order: ClassVar[bool] = True  # rows are in memory (mapped): sorting them buys nothing

    def __init__(self, views: list[np.ndarray], indices: np.ndarray | None = None,
                 files: list[str] | tuple[str, ...] = ()) -> None:
        views = [view for view in views if len(view)]
        if not views:
            raise ValueError("an Arrow column with no rows cannot be served.")
        first = views[0]
        self.dtype = first.dtype
        self._views = views  # they hold the Arrow buffers, so the regions below stay mapped
        lengths = [len(view) for view in views]
        self._firsts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # column row of each chunk
        self._column_rows = int(self._firsts[-1])
        self._indices = None if indices is None else _as_int64(indices)
        if self._indices is not None and len(self._indices) and not (
                0 <= self._indices.min() and self._indices.max() < self._column_rows):
            raise ValueError(f"an index mapping must hold column rows 0 to {self._column_rows - 1}; this one holds "
                             f"{int(self._indices.min())} to {int(self._indices.max())}. Fix: "
                             "dataset = dataset.flatten_indices().")
        rows = self._column_rows if indices is None else len(indices)
        self.shape = (rows, *(int(size) for size in first.shape[1:]))
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._bytes, self._region_of, self._starts = _regions(views, self.row_bytes)
        self._one_region = len(self._bytes) == 1
        self._files = _Watched(files)
        self.on_disk = bool(files)  # type: ignore[misc]  # mapped files: counted against host_memory_limit
        self._maps: tuple[np.ndarray | None, list[tuple[int, np.ndarray]]] | None = None  # mapped_files()

    @property
    def files(self) -> list[str]:
        return self._files.paths

    def describe(self, name: str) -> str:
        files = self._files.paths
        if not files:
            return name
        more = f" and {len(files) - 1} more" if len(files) > 1 else ""
        return f"{name} (Arrow column in {files[0]!r}{more})"

    def mapped_files(self) -> tuple[np.ndarray | None, list[tuple[int, np.ndarray]]]:
        """The rows as places in their files' maps, for the disk tier's page requests (:mod:`gpuloader.readahead`).

        Record batches lie in a file with headers between them, so rows are not
        evenly spaced in it. Each file's map (the dataset's own, found in
        ``/proc/self/maps``, so the pages requested, the read-around advice and
        the ``mincore`` check all concern the mapping the rows are copied from)
        is therefore given as a read-only ``np.memmap`` of overlapping
        ``row_bytes``-byte items one byte apart: item ``b`` starts at byte ``b``.
        The returned rows are each source row's item: its byte offset in its
        file's map, after the maps of the files before it. One map per file
        keeps the read-ahead's work per pass small (one entry per file, not per
        record batch).

        Cost: made on first use, an ``int64`` per row (the only memory it
        holds). The map's memory object holds this source's chunks, so the map
        stays mapped while the read-ahead holds it. ``(None, [])`` (no page
        requests) where a chunk is not in one of the watched files' maps.
        """
        if self._maps is None:
            self._maps = self._file_maps()
        return self._maps

    def _file_maps(self) -> tuple[np.ndarray | None, list[tuple[int, np.ndarray]]]:
        spans = _file_spans(self._views)
        if any(span is None or span[0] not in self._files.paths for span in spans):
            return None, []
        maps: dict[int, tuple[int, np.ndarray]] = {}  # map start address -> (its first item, its items)
        items = np.empty(self._column_rows, dtype=np.int64)
        total = 0
        for view, first, span in zip(self._views, self._firsts.tolist(), spans):
            path, start, end = span  # type: ignore[misc]
            address = view.ctypes.data
            if address + view.nbytes > end:
                return None, []
            if start not in maps:
                count = end - start - self.row_bytes + 1
                region = _mapped_region(start, end - start, self._views)
                rows = np.ndarray.__new__(np.memmap, (count,), np.dtype((np.void, self.row_bytes)), buffer=region,
                                          strides=(1,))
                rows.flags.writeable = False
                rows._mmap, rows.filename, rows.offset, rows.mode = region, path, 0, "r"
                maps[start] = (total, rows)
                total += count
            base = maps[start][0] + address - start
            items[first:first + len(view)] = np.arange(base, base + len(view) * self.row_bytes, self.row_bytes)
        rows_of = items if self._indices is None else items[self._indices]
        return rows_of, list(maps.values())

    # ------------------------------------------------------------ reading
    def column_rows(self, rows: np.ndarray) -> np.ndarray:
        """The column's rows (int64) that rows ``rows`` of this source are (the index mapping applied)."""
        if self._indices is None:
            return rows
        return self._indices[rows]

    def read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = self[rows[i]]``, rows in any order: each row copied from its byte offset in its region.

        Cost: where the chunks lie in one mapped region (the usual case), one call
        of the compiled ``_rows.take`` per batch: it applies the index mapping,
        finds each row's chunk (a binary search over the chunks' first rows) and
        byte offset, checks them all, then copies one ``memcpy`` per row, without
        the GIL, prefetching the pages of the row 4 rows ahead (a file map has
        4 KB pages, so nearly every row of a shuffled batch costs a page walk;
        overlapped with the copies, the epoch runs as fast as NumPy's ``take``
        from a RAM array on 2 MB pages). Otherwise a ``searchsorted`` in NumPy,
        then ``_rows.gather`` once per region touched. Without the compiled part,
        NumPy's fancy index (one call per region; ``np.take`` would first copy
        the whole strided view), which copies the batch's bytes twice: into a
        new array, then into ``out``.
        """
        if not len(rows):
            return
        rows = np.asarray(rows, dtype=np.int64)
        take = getattr(_rows, "take", None)  # None without the compiled part, or with one built before it had take
        if self._one_region and take is not None and out.flags.c_contiguous:
            take(self._bytes[0], self._firsts, self._starts, self._indices, np.ascontiguousarray(rows),
                       self.row_bytes, out)
            return
        column_rows = self.column_rows(rows)
        chunk = np.searchsorted(self._firsts, column_rows, side="right") - 1
        offsets = self._starts[chunk] + (column_rows - self._firsts[chunk]) * self.row_bytes
        flat = out.reshape(-1).view(np.uint8)  # the rows' bytes, in order
        if self._one_region:
            self._gather(0, offsets, flat)
            return
        region = self._region_of[chunk]
        rows_of = flat.reshape(len(rows), self.row_bytes)
        for index in np.unique(region).tolist():
            where = np.flatnonzero(region == index)
            part = np.empty(len(where) * self.row_bytes, np.uint8)
            self._gather(index, offsets[where], part)
            rows_of[where] = part.reshape(len(where), self.row_bytes)

    def _gather(self, region: int, offsets: np.ndarray, flat: np.ndarray) -> None:
        """``flat`` (uint8, C-contiguous) = the rows at byte ``offsets`` of region ``region``, one after another."""
        if _rows is not None:
            _rows.gather(self._bytes[region], offsets, self.row_bytes, flat)
        else:
            item = np.dtype((np.void, self.row_bytes))
            flat.view(item)[...] = _byte_rows(self._bytes[region], self.row_bytes)[offsets]

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``: a view of one chunk where they all lie in it (no index mapping), else a copy."""
        start, stop = min(start, len(self)), min(stop, len(self))
        if self._indices is None and start < stop:
            chunk = int(np.searchsorted(self._firsts, start, side="right")) - 1
            if stop <= self._firsts[chunk + 1]:
                base = int(self._firsts[chunk])
                return self._views[chunk][start - base : stop - base]
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
        self.read_sorted(np.arange(start, stop, dtype=np.int64), out)
        return out

    # ------------------------------------------------------------ trust
    def check_unchanged(self, rows: slice | np.ndarray | None = None) -> None:
        """Raise :class:`SourceChangedError` if a file under the column changed size or mtime in place.

        Cost: one ``os.fstat`` per file (a dataset has few), a few microseconds each.
        """
        self._files.check()


def _as_int64(indices: np.ndarray) -> np.ndarray:
    """An index mapping as C-contiguous int64, without a copy where it already is 8-byte integers.

    A ``uint64`` mapping (what ``datasets`` writes) is viewed as ``int64``: a value of 2**63 or more
    reads as negative, which every read refuses as outside the column, as it is.
    """
    indices = np.ascontiguousarray(indices)
    if indices.dtype == np.uint64:
        return indices.view(np.int64)
    return indices.astype(np.int64, copy=False)


def _regions(views: list[np.ndarray], row_bytes: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The mapped regions holding ``views``, as read-only uint8 arrays.

    Returns the regions, each chunk's region and each chunk's first-row byte offset in its region.
    A region is a run of address-contiguous mappings from ``/proc/self/maps``; where that cannot be
    read, or a chunk is not found in it, the chunk's own buffer is its region.
    """
    spans = _mapped_spans()
    regions: list[np.ndarray] = []
    by_start: dict[int, int] = {}
    region_of, starts = [], []
    for view in views:
        address = view.ctypes.data
        end = address + len(view) * row_bytes
        span = _span_of(spans, address, end)
        if span is None:  # the chunk's own buffer
            region_of.append(len(regions))
            starts.append(0)
            regions.append(view.reshape(-1).view(np.uint8))
            continue
        if span[0] not in by_start:
            by_start[span[0]] = len(regions)
            regions.append(_memory(span[0], span[1] - span[0]))
        region_of.append(by_start[span[0]])
        starts.append(address - span[0])
    return regions, np.array(region_of, dtype=np.int64), np.array(starts, dtype=np.int64)


def _byte_rows(buffer: np.ndarray, row_bytes: int) -> np.ndarray:
    """A read-only 1-d view of ``row_bytes``-byte items in which item ``b`` is bytes ``b .. b + row_bytes - 1``
    of ``buffer`` (items overlap: the stride is one byte). Only fancy indexing reads it (``np.take`` would
    first copy it whole to make it contiguous)."""
    item = np.dtype((np.void, row_bytes))
    return np.lib.stride_tricks.as_strided(
        buffer[:row_bytes].view(item), shape=(len(buffer) - row_bytes + 1,), strides=(1,), writeable=False
    )


def _memory(address: int, size: int) -> np.ndarray:
    """``size`` mapped bytes at ``address`` as a read-only uint8 array.

    It does not keep the memory mapped: the source holds the chunks' views (over
    the Arrow buffers, which hold their memory maps) as long as it holds this.
    """
    import ctypes

    raw = np.frombuffer((ctypes.c_uint8 * size).from_address(address), dtype=np.uint8)
    return np.lib.stride_tricks.as_strided(raw, writeable=False)


def _mapped_spans() -> list[tuple[int, int]]:
    """Runs of address-contiguous mappings of this process, sorted: ``[(start, end), ...]`` ([] if unknown)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    spans: list[tuple[int, int]] = []
    for line in lines:
        low, _, high = line.partition(" ")[0].partition("-")
        start, end = int(low, 16), int(high, 16)
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _span_of(spans: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """The span holding bytes ``start .. end - 1`` entirely, or None."""
    index = bisect.bisect_right(spans, (start, float("inf"))) - 1
    if index >= 0 and spans[index][0] <= start and end <= spans[index][1]:
        return spans[index]
    return None


class _Watched:
    """Files held open (a descriptor each) and compared by ``fstat`` with how they were at opening."""

    def __init__(self, paths: list[str] | tuple[str, ...]) -> None:
        self.paths = [os.fspath(path) for path in paths]
        self._fds = []
        for path in self.paths:
            try:
                self._fds.append(os.open(path, os.O_RDONLY))
            except OSError as error:
                _close_all(self._fds)
                raise SourceChangedError(
                    f"{path!r}, a file under this Arrow column, cannot be opened to be watched ({error}): it was "
                    "deleted or moved after the dataset was loaded. Load the dataset again (datasets.load_from_disk)."
                ) from error
        self._opened = [os.fstat(fd) for fd in self._fds]
        weakref.finalize(self, _close_all, list(self._fds))

    def check(self) -> None:
        for path, fd, opened in zip(self.paths, self._fds, self._opened):
            now = os.fstat(fd)
            if (now.st_size, now.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns):
                raise SourceChangedError(
                    f"{path!r} changed on disk after the loader opened it: it was rewritten in place (size "
                    f"{opened.st_size} -> {now.st_size} bytes, mtime_ns {opened.st_mtime_ns} -> {now.st_mtime_ns}). "
                    "The loader reads the Arrow column through the memory map the dataset opened, so a shorter file "
                    "would crash the process (SIGBUS) and new contents would be served as the old rows. Load the "
                    "dataset again (datasets.load_from_disk) and build a new Loader; to update a dataset under a "
                    "running loader, save it to a new folder."
                )


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def open_arrow(value: Any, name: str) -> ArrowSource | None:
    """An :class:`ArrowSource` for a ``pyarrow.Array``/``ChunkedArray`` of fixed-shape numbers; None otherwise.

    The files under it are the mapped files ``/proc/self/maps`` names for its buffers (watched for changes).

    Raises:
        TypeError, ValueError: a type that does not qualify, nulls, or lists of different lengths
            (:func:`arrow_view` says which and the fix).
    """
    module = type(value).__module__
    if not module.startswith("pyarrow"):
        return None
    import pyarrow as pa

    if isinstance(value, pa.ChunkedArray):
        chunks = value.chunks
    elif isinstance(value, pa.Array):
        chunks = [value]
    else:
        return None
    views = column_views(chunks, name)
    return ArrowSource(views, files=mapped_files_of(views))


def column_views(chunks: list[Any], name: str) -> list[np.ndarray]:
    """:func:`arrow_view` of every non-empty chunk, refusing chunks whose sample shapes differ."""
    views = [arrow_view(chunk, name) for chunk in chunks if len(chunk)]
    if not views:
        raise ValueError(f"column {name!r} is empty: it has no rows.")
    shapes = {view.shape[1:] for view in views}
    if len(shapes) > 1:
        raise ValueError(
            f"column {name!r} holds rows of shapes {sorted(shapes)} in different record batches; a batch needs one "
            "shape per sample. Pad or cut the lists to one length, or cast to a fixed shape (datasets.Array2D, "
            "List(length=...))."
        )
    return views


def _file_spans(views: list[np.ndarray]) -> list[tuple[str, int, int] | None]:
    """The file mapping holding each view's first byte, ``(file, start address, end address)``, from
    ``/proc/self/maps``; None where it is not in a mapped file."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return [None] * len(views)
    table = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            low, _, high = fields[0].partition("-")
            table.append((int(low, 16), int(high, 16), fields[5].removesuffix(" (deleted)")))
    spans: list[tuple[str, int, int] | None] = []
    for view in views:
        address = view.ctypes.data
        spans.append(next(((path, start, end) for start, end, path in table if start <= address < end), None))
    return spans


def _mapped_region(address: int, size: int, keep: list[np.ndarray]) -> Any:
    """``size`` mapped bytes at ``address`` as a hashable, weak-referenceable buffer (what the read-ahead's
    bookkeeping takes a map to be), which holds ``keep`` (views over the Arrow buffers that hold the map)."""
    import ctypes

    kind = type("MappedRegion", (ctypes.c_uint8 * size,), {"__hash__": object.__hash__})
    region = kind.from_address(address)
    region.keep = keep
    return region


def mapped_files_of(views: list[np.ndarray]) -> list[str]:
    """The files ``/proc/self/maps`` says the views' first rows lie in (in order, without repeats)."""
    files: list[str] = []
    for span in _file_spans(views):
        if span is not None and span[0] not in files:
            files.append(span[0])
    return [path for path in files if os.path.exists(path)]


def arrow_view(chunk: Any, column: str) -> np.ndarray:
    """A read-only NumPy view over one Arrow array's values, shaped ``(rows, *fixed shape)``; no copy.

    Qualifies: primitive integer or floating values, or fixed-shape lists of them
    (fixed-size lists, or lists whose rows all have one length), no nulls at any level.

    Raises:
        TypeError: the type does not qualify, with the fix.
        ValueError: nulls, or lists whose rows have different lengths.
    """
    import pyarrow as pa

    array = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
    rows, shape = len(array), []
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(
            array.type):
        _refuse_nulls(array, column)
        if pa.types.is_fixed_size_list(array.type):
            width = array.type.list_size
        else:
            offset_type = np.int64 if pa.types.is_large_list(array.type) else np.int32
            offsets = np.frombuffer(array.buffers()[1], offset_type)[array.offset:array.offset + len(array) + 1]
            lengths = np.diff(offsets)
            if len(lengths) and (lengths != lengths[0]).any():
                raise ValueError(
                    f"column {column!r} holds lists of different lengths ({int(lengths.min())} to "
                    f"{int(lengths.max())}); a batch needs one shape per sample. Pad or cut them to one length "
                    "(dataset.map), or cast the column to a fixed shape (datasets.Array2D / List(length=...))."
                )
            width = int(lengths[0]) if len(lengths) else 0
        shape.append(width)
        array = array.flatten()  # the values of these rows only, zero-copy
    _refuse_nulls(array, column)
    kind = array.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        if pa.types.is_boolean(kind):
            why = ("bool is bit-packed (one bit a value), so no row is a run of bytes. Fix: "
                   "dataset = dataset.cast_column(name, datasets.Value('int8')).")
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            why = ("text and bytes have no fixed size. Fix: encode them as integer ids (e.g. "
                   "dataset.class_encode_column(name)), or decode them in a dataset.map.")
        else:
            why = "Fix: cast it to a numeric type, e.g. dataset.cast_column(name, datasets.Value('float32'))."
        raise TypeError(
            f"column {column!r} has Arrow type {chunk.type}, whose values are {kind}: only integer and floating "
            f"values (fixed-shape lists of them included) are served from the Arrow buffers without a copy; {why}"
        )
    dtype = np.dtype(kind.to_pandas_dtype())
    if dtype.itemsize * 8 != kind.bit_width:
        raise TypeError(f"column {column!r}: Arrow type {kind} has no NumPy dtype of the same width.")
    values = np.frombuffer(array.buffers()[1], dtype, count=len(array), offset=array.offset * dtype.itemsize)
    return values.reshape(rows, *shape)


def _refuse_nulls(array: Any, column: str) -> None:
    if array.null_count:
        raise ValueError(f"column {column!r} has {array.null_count} null value(s); a batch cannot hold a missing "
                         "value. Fill or drop them (dataset.filter / dataset.map) first.")
