"""The Source interface (issue 19, item 1): every format reads the same rows, and a new format is one module.

Each built-in source (an array in memory, a ``.npy`` path, the caller's memory
map, a shard list, a worker's subset of either) passes the same checks against
the array it holds; a format written in a test file, registered in
``sources.OPENERS`` or passed as a ``Source`` instance, serves the same batches
as that array on every tier.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
from conftest import epoch_ids

import gpuloader
from gpuloader import Loader, sources
from gpuloader.sources import Source, open_source, read_rows_sorted

ROWS = 103


@pytest.fixture
def data():
    return np.arange(ROWS * 6, dtype=np.int32).reshape(ROWS, 2, 3)


def built_in_sources(data: np.ndarray, tmp_path: Path) -> dict[str, tuple[Source, np.ndarray]]:
    """Every built-in kind of source over ``data`` (or rows of it), with the array it must read as."""
    path = tmp_path / "d.npy"
    np.save(path, data)
    shard_paths = []
    for i, part in enumerate(np.array_split(data, 4)):
        shard_paths.append(tmp_path / f"s{i}.npy")
        np.save(shard_paths[-1], part)
    rows = np.array([0, 1, 5, 6, 7, 40, 41, 99, 102])
    shards = open_source(shard_paths, "x")
    fortran = tmp_path / "f.npy"
    np.save(fortran, np.asfortranarray(data))  # mapped as a strided view: not a run of rows per row
    return {
        "array": (open_source(data, "x"), data),
        "npy path": (open_source(path, "x"), data),
        "Fortran-order npy": (open_source(fortran, "x"), data),
        "caller's memmap": (open_source(np.load(path, mmap_mode="r"), "x"), data),
        "shards": (shards, data),
        "subset of npy": (open_source(path, "x").subset(rows), data[rows]),
        "subset of shards": (shards.subset(rows), data[rows]),
        "subset of a subset": (shards.subset(rows).subset(np.array([1, 2, 7])), data[rows[[1, 2, 7]]]),
        "subset of an array": (open_source(data, "x").subset(rows), data[rows]),
    }


KINDS = ["array", "npy path", "Fortran-order npy", "caller's memmap", "shards", "subset of npy", "subset of shards",
         "subset of a subset", "subset of an array"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_source_reads_the_rows_it_holds(data, tmp_path, kind):
    source, want = built_in_sources(data, tmp_path)[kind]
    assert isinstance(source, Source)
    assert (len(source), source.shape, source.dtype, source.nbytes) == (len(want), want.shape, want.dtype, want.nbytes)
    assert source.on_disk == (kind not in ("array", "subset of an array"))
    n = len(want)
    for rows in (np.arange(n), np.array([0, 0, 2, 2, n - 1]), np.array([n - 1]), np.arange(1, n, 3)):
        out = np.empty((len(rows), *want.shape[1:]), want.dtype)
        source.read_sorted(rows.astype(np.int64), out)
        np.testing.assert_array_equal(out, want[rows])
    for start, stop in ((0, n), (1, n - 1), (n - 2, n + 5), (3, 3)):
        np.testing.assert_array_equal(source.read_range(start, stop), want[start:stop])
    shuffled = np.random.default_rng(0).permutation(n)
    out = np.empty((n, *want.shape[1:]), want.dtype)
    read_rows_sorted(source, shuffled, out)
    np.testing.assert_array_equal(out, want[shuffled])
    if source.reads_in_any_order:  # then read_rows_sorted hands it the rows as they come
        out[...] = 0
        source.read_sorted(shuffled, out)
        np.testing.assert_array_equal(out, want[shuffled])
    picked = np.array([0, n // 2, n - 1])
    np.testing.assert_array_equal(source.subset(picked).read_range(0, 3), want[picked])
    source.check_unchanged()
    source.check_unchanged(slice(0, 2))
    source.check_unchanged(shuffled[:5])
    assert source.describe("x").startswith("x")


def test_npy_files_read_a_batch_in_its_own_order_with_the_compiled_gather(data, tmp_path, monkeypatch):
    from gpuloader.sources import npy

    made = built_in_sources(data, tmp_path)
    if npy._rows is None:
        pytest.skip("the compiled row gather is not built here")
    for kind in ("npy path", "caller's memmap", "subset of npy"):
        assert made[kind][0].reads_in_any_order, kind  # no sort and no put-back copy per batch
    assert not made["Fortran-order npy"][0].reads_in_any_order  # not rows of contiguous bytes: sorted, put back
    monkeypatch.setattr(npy, "_rows", None)
    without = open_source(tmp_path / "d.npy", "x")
    assert not without.reads_in_any_order
    shuffled = np.random.default_rng(1).permutation(len(data))
    out = np.empty_like(data)
    read_rows_sorted(without, shuffled, out)
    np.testing.assert_array_equal(out, data[shuffled])


def test_sources_on_disk_name_their_files_in_messages(data, tmp_path):
    made = built_in_sources(data, tmp_path)
    assert made["npy path"][0].describe("x") == f"x ({str(tmp_path / 'd.npy')!r})"
    assert made["shards"][0].describe("y") == f"y (4 shards from {str(tmp_path / 's0.npy')!r})"
    assert made["array"][0].describe("x") == "x"


class Squares(Source):
    """A format of a test's own: row i is [i*i, i*i + 1], computed, never stored. The whole of a new format."""

    def __init__(self, n: int, on_disk: bool) -> None:
        self.shape, self.dtype = (n, 2), np.dtype(np.int64)
        self.on_disk = on_disk  # type: ignore[misc]
        self.reads = 0

    def read_sorted(self, rows, out):
        assert np.all(np.diff(rows) >= 0), "the interface promises ascending rows"
        self.reads += 1
        out[:, 0] = rows * rows
        out[:, 1] = rows * rows + 1


def squares(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.int64)
    return np.stack([i * i, i * i + 1], axis=1)


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_source_of_ones_own_serves_the_batches_of_the_same_array(on_disk):
    labels = np.arange(200) % 7
    want = epoch_ids(Loader(squares(200), labels, batch_size=32, seed=4, verbose=False))
    source = Squares(200, on_disk)
    device = "disk" if on_disk else "host"
    loader = Loader(source, labels, batch_size=32, seed=4, device=device, verbose=False)
    assert loader.placement == device
    assert epoch_ids(loader) == want
    batch = loader[3]
    rows = np.asarray(batch[0])[:, 0]
    np.testing.assert_array_equal(np.asarray(batch[0])[:, 1], rows + 1)
    assert (source.reads > 1) == on_disk  # on disk: read per batch; in memory: read once into the store


def test_a_format_registered_in_openers_is_opened_for_its_own_values(monkeypatch):
    class SquaresSpec:
        def __init__(self, n):
            self.n = n

    monkeypatch.setattr(sources, "OPENERS", [*sources.OPENERS, lambda value, name: (
        Squares(value.n, on_disk=True) if isinstance(value, SquaresSpec) else None)])
    loader = Loader(SquaresSpec(150), batch_size=50, seed=1, device="disk", verbose=False)
    assert loader.placement == "disk"
    assert epoch_ids(loader) == epoch_ids(Loader(squares(150), batch_size=50, seed=1, verbose=False))


def test_a_worker_shard_of_a_source_of_ones_own_reads_only_its_rows():
    x, y = squares(90), np.arange(90)
    for index in range(3):
        loader = Loader(Squares(90, on_disk=True), y, batch_size=10, seed=2, num_shards=3, shard_index=index,
                        device="disk", verbose=False)
        plain = Loader(x, y, batch_size=10, seed=2, num_shards=3, shard_index=index, verbose=False)
        assert [np.asarray(b[1]).tolist() for b in loader.get_numpy_iterator()] == [
            np.asarray(b[1]).tolist() for b in plain.get_numpy_iterator()]


def test_a_source_with_a_wrong_shape_is_refused_naming_the_class():
    class Broken(Squares):
        def __init__(self):
            super().__init__(4, True)
            self.shape = [4, 2]

    with pytest.raises(TypeError, match=r"Broken.shape must be a tuple of ints"):
        Loader(Broken(), verbose=False)


def test_no_module_outside_sources_asks_what_kind_of_source_it_holds():
    """The store, gather, placement and disk tier speak the interface: no isinstance over source types elsewhere."""
    package = Path(inspect.getfile(gpuloader)).parent
    kinds = {"memmap", "ShardedArray", "RowSubset", "NpySource", "ArraySource"}
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "sources":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
            if named in kinds:
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not offenders, offenders


def test_the_interface_needs_only_shape_dtype_and_read_sorted():
    class Bare(Source):
        def __init__(self):
            self.shape, self.dtype = (5, 3), np.dtype(np.float32)

    with pytest.raises(TypeError, match="read_sorted"):
        Bare()  # the one method a format must write
    assert Squares(5, True).read_range(1, 3).tolist() == [[1, 2], [4, 5]]  # the default read_range
