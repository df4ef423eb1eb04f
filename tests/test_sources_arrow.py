"""ArrowSource: a fixed-shape numeric Arrow column read by byte offset where Arrow holds it (issue 19, item 3).

The same rows as the NumPy array it was made from, for every read of the
interface, whichever gather runs (the compiled one, NumPy's), however the
chunks lie in memory (one mapped region, or a region per chunk), and through an
index mapping; registered in ``sources.OPENERS`` for ``pyarrow`` values.
"""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from gpuloader import Loader
from gpuloader.sources import Source, SourceChangedError, arrow, open_source, read_rows_sorted

pa = pytest.importorskip("pyarrow")

ROWS = 103


@pytest.fixture
def data():
    return np.arange(ROWS * 6, dtype=np.int32).reshape(ROWS, 2, 3)


def chunked(data: np.ndarray, sizes=(40, 1, 0, 50, 12)) -> pa.ChunkedArray:
    """``data`` as a chunked Arrow column of fixed-size lists (an empty chunk included)."""
    chunks, start = [], 0
    for size in sizes:
        part = data[start:start + size]
        inner = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), data.shape[2])
        chunks.append(pa.FixedSizeListArray.from_arrays(inner, data.shape[1]))
        start += size
    assert start == len(data)
    return pa.chunked_array(chunks)


def check_reads(source: Source, want: np.ndarray) -> None:
    """Every read of the interface gives ``want``'s rows."""
    n = len(want)
    assert (source.shape, source.dtype) == (want.shape, want.dtype)
    for rows in (np.arange(n), np.array([0, 0, 2, 2, n - 1]), np.array([n - 1]), np.arange(1, n, 3),
                 np.random.default_rng(0).permutation(n)):
        out = np.empty((len(rows), *want.shape[1:]), want.dtype)
        source.read_sorted(rows.astype(np.int64), out)
        np.testing.assert_array_equal(out, want[rows])
        out[:] = 0
        read_rows_sorted(source, rows.astype(np.int64), out)
        np.testing.assert_array_equal(out, want[rows])
    for start, stop in ((0, n), (1, n - 1), (n - 2, n + 5), (3, 3), (0, 40), (41, 45)):
        np.testing.assert_array_equal(source.read_range(start, stop), want[start:stop])
    picked = np.array([0, n // 2, n - 1])
    np.testing.assert_array_equal(source.subset(picked).read_range(0, 3), want[picked])
    source.check_unchanged()


def test_an_arrow_column_is_opened_by_the_registry_and_reads_its_rows(data):
    source = open_source(chunked(data), "x")
    assert isinstance(source, arrow.ArrowSource)
    assert not source.on_disk  # built in memory: no file under it
    check_reads(source, data)


@pytest.mark.parametrize("gather", ["compiled", "numpy"])
@pytest.mark.parametrize("regions", ["mapped runs", "one per chunk"])
def test_every_gather_and_region_layout_reads_the_same_rows(data, monkeypatch, gather, regions):
    if gather == "compiled" and arrow._rows is None:
        pytest.skip("the compiled gather is not built (no C compiler)")
    if gather == "numpy":
        monkeypatch.setattr(arrow, "_rows", None)
    if regions == "one per chunk":
        monkeypatch.setattr(arrow, "_mapped_spans", lambda: [])
    source = open_source(chunked(data), "x")
    assert (len(source._bytes) == 4) == (regions == "one per chunk")  # 4 non-empty chunks
    check_reads(source, data)


def test_an_index_mapping_is_applied_row_for_row(data):
    indices = np.array([5, 5, 102, 0, 41, 40, 39, 90], dtype=np.uint64)
    column = chunked(data)
    source = arrow.ArrowSource(arrow.column_views(column.chunks, "x"), indices)
    check_reads(source, data[indices.astype(np.int64)])
    assert np.shares_memory(source._indices, indices)  # datasets' uint64 mapping is read as is, not copied


def test_the_loader_serves_an_arrow_column_as_it_serves_the_array(data):
    column = chunked(data)
    ours = Loader(column, np.arange(ROWS), batch_size=16, seed=3, verbose=False)
    reference = Loader(data, np.arange(ROWS), batch_size=16, seed=3, verbose=False)
    for i in range(len(reference)):
        for got, want in zip(ours[i], reference[i]):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_the_compiled_gather_refuses_an_offset_outside_its_region():
    if arrow._rows is None:
        pytest.skip("the compiled gather is not built (no C compiler)")
    region = np.arange(100, dtype=np.uint8)
    out = np.empty(20, np.uint8)
    arrow._rows.gather(region, np.array([0, 90], dtype=np.int64), 10, out)
    np.testing.assert_array_equal(out, np.r_[0:10, 90:100])
    with pytest.raises(IndexError, match="outside the 100-byte region"):
        arrow._rows.gather(region, np.array([0, 91], dtype=np.int64), 10, out)
    with pytest.raises(IndexError):
        arrow._rows.gather(region, np.array([-1, 0], dtype=np.int64), 10, out)
    with pytest.raises(ValueError, match="exactly len"):
        arrow._rows.gather(region, np.array([0], dtype=np.int64), 10, out)


def one_region_source(data: np.ndarray, indices=None) -> arrow.ArrowSource:
    """An ArrowSource whose chunks (40, 1, 50, 12 rows) lie in one region, a row of -1s before each (as record
    batches lie in an Arrow file, headers between them): a row found in the wrong chunk reads other bytes."""
    region = np.full((len(data) + 4) * 6, -1, data.dtype)
    views, start, place = [], 0, 0
    for size in (40, 1, 50, 12):
        place += 6
        region[place:place + size * 6] = data[start:start + size].reshape(-1)
        views.append(region[place:place + size * 6].reshape(size, 2, 3))
        start, place = start + size, place + size * 6
    source = arrow.ArrowSource(views, indices)
    assert len(source._bytes) == 1  # as /proc/self/maps found the buffer: one region
    return source


def test_one_region_is_read_by_one_compiled_call_per_batch(data, monkeypatch):
    if arrow._rows is None:
        pytest.skip("the compiled gather is not built (no C compiler)")
    calls, compiled = [], arrow._rows

    class Counting:
        gather = staticmethod(compiled.gather)

        @staticmethod
        def take(*args):
            calls.append(len(args[4]))
            return compiled.take(*args)

    monkeypatch.setattr(arrow, "_rows", Counting)
    source = one_region_source(data)
    rows = np.random.default_rng(1).permutation(ROWS)[:37]
    out = np.empty((37, 2, 3), np.int32)
    source.read_sorted(rows, out)
    np.testing.assert_array_equal(out, data[rows])
    assert calls == [37]  # the whole batch in one call: mapping, chunks and offsets worked out in C


def test_a_compiled_part_built_before_take_existed_still_reads_every_row_and_is_reported(data, monkeypatch):
    if arrow._rows is None:
        pytest.skip("the compiled gather is not built (no C compiler)")

    class Stale:  # what an in-place build from before this version holds
        gather = staticmethod(arrow._rows.gather)

    monkeypatch.setattr(arrow, "_rows", Stale)
    check_reads(one_region_source(data), data)
    assert "has no take()" in arrow.compiled_gather_missing()


@pytest.mark.parametrize("mapping", [None, "uint64", "int32"])
def test_the_compiled_take_finds_every_row_in_every_chunk(data, mapping):
    """Rows at each chunk's first and last place, in any order, with and without an index mapping."""
    if arrow._rows is None:
        pytest.skip("the compiled gather is not built (no C compiler)")
    indices = None if mapping is None else np.array([102, 0, 39, 40, 41, 90, 91, 5, 5], dtype=mapping)
    source = one_region_source(data, indices)
    want = data if indices is None else data[indices.astype(np.int64)]
    edges = np.array([0, 39, 40, 41, 90, 91, 102]) if indices is None else np.arange(len(indices))
    for rows in (edges, edges[::-1], np.repeat(edges, 2)):
        out = np.zeros((len(rows), 2, 3), np.int32)
        source.read_sorted(rows, out)
        np.testing.assert_array_equal(out, want[rows])


def test_the_compiled_take_refuses_a_row_outside_and_copies_nothing():
    if arrow._rows is None:
        pytest.skip("the compiled gather is not built (no C compiler)")
    take = arrow._rows.take
    region = np.arange(100, dtype=np.uint8)
    firsts, starts = np.array([0, 4, 9], dtype=np.int64), np.array([0, 50], dtype=np.int64)  # 4 rows, then 5
    out = np.zeros(20, np.uint8)
    take(region, firsts, starts, None, np.array([3, 4], dtype=np.int64), 10, out)
    np.testing.assert_array_equal(out, np.r_[30:40, 50:60])
    take(region, firsts, starts, np.array([8, 0], dtype=np.int64), np.array([0, 1], dtype=np.int64), 10, out)
    np.testing.assert_array_equal(out, np.r_[90:100, 0:10])  # through the mapping
    out[:] = 7
    for indices, rows, what in ((None, [0, 9], "row 9"), (None, [-1, 0], "row -1"),
                                (np.array([0, 9]), [0, 1], "mapped row 9"),
                                (np.array([0, -2]), [0, 1], "mapped row -2"),
                                (np.array([0]), [0, 1], "row 1")):
        with pytest.raises(IndexError, match=f"rows\\[.\\]: {what} is outside"):
            take(region, firsts, starts, None if indices is None else indices.astype(np.int64),
                 np.array(rows, dtype=np.int64), 10, out)
        assert (out == 7).all(), "nothing is copied when one row is outside"
    with pytest.raises(IndexError, match="byte offset 95"):  # the second chunk runs past the region's end
        take(region, np.array([0, 4, 9], dtype=np.int64), np.array([0, 55], dtype=np.int64), None,
             np.array([8], dtype=np.int64), 10, out[:10])
    with pytest.raises(ValueError, match="exactly len"):
        take(region, firsts, starts, None, np.array([0], dtype=np.int64), 10, out)
    with pytest.raises(ValueError, match="len\\(firsts\\) == len\\(starts\\) \\+ 1"):
        take(region, firsts[:2], starts, None, np.array([0], dtype=np.int64), 10, out[:10])


def test_an_index_mapping_outside_the_column_is_refused_at_construction(data):
    views = arrow.column_views(chunked(data).chunks, "x")
    for bad in (np.array([0, ROWS], dtype=np.uint64), np.array([2**63 + 1], dtype=np.uint64), np.array([-1])):
        with pytest.raises(ValueError, match="index mapping must hold column rows 0 to 102"):
            arrow.ArrowSource(views, bad)


@pytest.mark.parametrize("indices", [None, np.array([3, 0, 2, 2], dtype=np.uint64)])
def test_the_read_ahead_finds_each_row_at_its_place_in_the_files_map(tmp_path, indices):
    """mapped_files: one map per file (the one the rows are read from; here one that starts past the file's
    beginning, its chunks apart), item b of it the row_bytes bytes from byte b, each row's item where it lies."""
    data = np.arange(4 * 1024, dtype=np.float32).reshape(4, 1024)
    path = tmp_path / "rows.bin"
    path.write_bytes(b"\xff" * 8192 + data[:1].tobytes() + b"\xee" * 100 + data[1:].tobytes())
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ, offset=8192)
    first = np.frombuffer(mapped, np.float32, count=1024).reshape(1, 1024)
    rest = np.frombuffer(mapped, np.float32, offset=4096 + 100).reshape(3, 1024)
    source = arrow.ArrowSource([first, rest], indices, files=[str(path)])
    rows, maps = source.mapped_files()
    assert len(maps) == 1 and maps[0][0] == 0
    items = maps[0][1]
    assert isinstance(items, np.memmap) and items.filename == str(path) and not items.flags.writeable
    assert (items.ctypes.data, items.strides, items.dtype.itemsize) == (first.ctypes.data, (1,), 4096)
    want = data if indices is None else data[indices.astype(np.int64)]
    assert len(rows) == len(want)
    for row, item in zip(want, rows.tolist()):
        assert items[item].tobytes() == row.tobytes()
    assert source.mapped_files()[1] is maps  # made once
    assert arrow.ArrowSource([data[:2] + 1]).mapped_files() == (None, [])  # in RAM: nothing to ask for
    assert arrow.ArrowSource([first, data[:2] + 1], files=[str(path)]).mapped_files() == (None, [])


def test_a_watched_file_rewritten_in_place_is_a_change(tmp_path):
    path = tmp_path / "f.arrow"
    path.write_bytes(b"x" * 64)
    watched = arrow._Watched([str(path)])
    watched.check()
    with open(path, "r+b") as file:  # same inode, same size, new bytes
        file.write(b"y" * 8)
    with pytest.raises(SourceChangedError, match="rewritten in place"):
        watched.check()
    with pytest.raises(SourceChangedError, match="deleted or moved"):
        arrow._Watched([str(path), str(tmp_path / "gone.arrow")])


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        (pa.array([[1.0, 2.0], None]), ValueError, "null"),
        (pa.array([[1.0, None], [2.0, 3.0]]), ValueError, "null"),
        (pa.array([1, None, 3]), ValueError, "null"),
        (pa.array([True, False]), TypeError, "bit-packed"),
        (pa.array(["a", "b"]), TypeError, "only integer and floating"),
        (pa.chunked_array([pa.array([[1, 2]]), pa.array([[1, 2, 3]])]), ValueError, "rows of shapes"),
    ],
)
def test_what_does_not_qualify_is_refused_with_the_rule(values, error, message):
    with pytest.raises(error, match=message):
        open_source(values, "x")
