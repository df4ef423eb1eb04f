"""The store's preload: files read into RAM chunk by chunk, byte order made native once (issues 9 and 13)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import epoch_ids, id_data, sample_ids

from gpuloader import Loader
from gpuloader import store as store_lib
from gpuloader.gather import is_aligned

MB = 1024 * 1024
ROWS, FEATURES = 1000, 5


def unshuffled_values(loader) -> np.ndarray:
    """Every batch of x, in input order, stacked."""
    return np.concatenate([np.asarray(loader[i][0]) for i in range(len(loader))])


@pytest.mark.parametrize("source", ["path", "shards", "worker shard"])
def test_files_read_into_ram_in_small_chunks_keep_every_row(tmp_path, monkeypatch, source):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    row_bytes = FEATURES * 4
    monkeypatch.setattr(store_lib, "DEFAULT_CHUNK_BYTES", 37 * row_bytes)  # 37 rows: crosses shard ends
    if source == "shards":
        sizes = [300, 211, 489]
        paths = [tmp_path / f"s{i}.npy" for i in range(3)]
        for path, part in zip(paths, np.split(x, np.cumsum(sizes)[:-1])):
            np.save(path, part)
        given = paths
    else:
        given = tmp_path / "x.npy"
        np.save(given, x)
    shard = dict(num_shards=2, shard_index=1, seed=3) if source == "worker shard" else {}
    loader = Loader(given, batch_size=64, shuffle=False, host_memory_limit=64 * MB, verbose=False, **shard)
    assert loader.placement == "host"
    held = loader.pipeline.store.leaves[0]
    assert isinstance(held, np.ndarray) and not isinstance(held, np.memmap)
    expected = x
    if shard:
        from gpuloader.sharding import shard_rows

        expected = x[shard_rows(ROWS, 3, 2, 1)]
    assert len(expected) > 3 * 37  # several chunks were read
    np.testing.assert_array_equal(held, expected)
    np.testing.assert_array_equal(unshuffled_values(loader), expected)


def big_endian(array: np.ndarray) -> np.ndarray:
    return array.astype(array.dtype.newbyteorder(">"))


def test_big_endian_arrays_in_ram_are_made_native_once_and_serve_the_same_values():
    x, y = id_data(300, features=4)
    loader = Loader(big_endian(x), big_endian(y), batch_size=64, seed=1, verbose=False)
    native = Loader(x, y, batch_size=64, seed=1, verbose=False)
    assert all(leaf.dtype.isnative for leaf in loader.pipeline.store.leaves)
    batch = loader[0]  # DLPack refused '>f4' at every batch before
    assert batch[0].dtype == native[0][0].dtype
    assert epoch_ids(loader) == epoch_ids(native)
    for xs, ys in loader.get_tf_dataset():
        assert sample_ids(xs) == np.asarray(ys).tolist()


@pytest.mark.parametrize("device", ["disk", "host"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_a_big_endian_npy_file_serves_native_batches(tmp_path, device, shuffle):
    x, y = id_data(500, features=3, dtype=np.float64)
    path = tmp_path / "be.npy"
    np.save(path, big_endian(x))
    shards = [tmp_path / f"be{i}.npy" for i in range(2)]
    for shard, part in zip(shards, np.split(big_endian(x), 2)):
        np.save(shard, part)
    expected = Loader(x, y, batch_size=64, seed=2, shuffle=shuffle, verbose=False)
    for source in (path, shards):
        loader = Loader(source, big_endian(y), batch_size=64, seed=2, shuffle=shuffle, device=device,
                        host_memory_limit=64 * MB, verbose=False)
        assert loader.placement == device
        batches = [loader[i] for i in range(len(loader))]
        assert [sample_ids(b[0]) for b in batches] == [sample_ids(expected[i][0]) for i in range(len(expected))]
        assert [np.asarray(b[1]).tolist() for b in batches] == [sample_ids(b[0]) for b in batches]
        assert all(b[0].dtype.name == "float64" for b in batches)
        numpy_batches = list(loader.get_numpy_iterator())
        assert all(part.dtype.isnative and is_aligned(part) for b in numpy_batches for part in b)
        served = [i for b in numpy_batches for i in sample_ids(b[0])]
        assert served == [int(i) for b in numpy_batches for i in b[1]] and sorted(served) == list(range(500))
        assert all(np.array_equal(b[0], np.repeat(b[1][:, None], 3, axis=1)) for b in numpy_batches)


def test_big_endian_arrays_are_uploaded_in_native_order(fake_gpu):
    x, y = id_data(300, features=4)
    loader = Loader(big_endian(x), big_endian(y), batch_size=64, seed=4, verbose=False)
    assert loader.placement == "gpu"
    assert epoch_ids(loader) == epoch_ids(Loader(x, y, batch_size=64, seed=4, device="host", verbose=False))


def test_reading_a_file_into_ram_reports_progress_when_verbose(tmp_path, monkeypatch):
    x = np.arange(ROWS * FEATURES, dtype=np.float32).reshape(ROWS, FEATURES)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(store_lib, "DEFAULT_CHUNK_BYTES", 100 * FEATURES * 4)
    bars = []

    class Recorder:
        def __init__(self, total, verbose, description="gpuloader upload"):
            self.total, self.verbose, self.description, self.done = total, verbose, description, 0
            bars.append(self)

        def advance(self, nbytes):
            self.done += nbytes

        def close(self):
            self.closed = True

    monkeypatch.setattr(store_lib, "_Progress", Recorder)
    loader = Loader(str(tmp_path / "x.npy"), batch_size=100, shuffle=False, device="host", verbose=True)
    assert [(bar.description, bar.verbose, bar.total, bar.done, bar.closed) for bar in bars] == [
        ("gpuloader read into RAM", True, x.nbytes, x.nbytes, True)
    ]
    assert np.array_equal(unshuffled_values(loader), x)
