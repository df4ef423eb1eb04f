"""Beyond RAM: .npy paths, memory maps and shards; the GPU / host / disk tiers; bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import epoch_ids, id_data, sample_ids

import gpuloader
from gpuloader import Loader, permutation, placement
from gpuloader.sources import Source, open_source, read_rows_sorted

MB = 1024 * 1024


def save(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.fixture
def files(tmp_path):
    x, y = id_data(1000, features=5)
    return x, y, save(tmp_path, "x.npy", x), save(tmp_path, "y.npy", y)


def test_paths_memmaps_and_shards_give_the_same_batches(files, tmp_path):
    x, y, x_path, y_path = files
    shards = [save(tmp_path, f"x{i}.npy", part) for i, part in enumerate(np.array_split(x, 3))]
    in_ram = Loader(x, y, batch_size=64, seed=5, verbose=False)
    for source in (str(x_path), x_path, np.load(x_path, mmap_mode="r"), shards):
        loader = Loader(source, y_path, batch_size=64, seed=5, device="disk", verbose=False)
        assert loader.placement == "disk"
        assert epoch_ids(loader) == epoch_ids(in_ram)
        assert [np.asarray(loader[i][1]).tolist() for i in range(3)] == [sample_ids(loader[i][0]) for i in range(3)]


def test_nothing_is_read_at_construction(files):
    _, _, x_path, y_path = files
    loader = Loader(str(x_path), str(y_path), batch_size=10, device="disk", verbose=False)
    assert all(isinstance(leaf, Source) and leaf.on_disk for leaf in loader.pipeline.store.leaves)


def test_auto_picks_host_when_the_files_fit_the_ram_limit_and_disk_otherwise(files):
    _, _, x_path, y_path = files
    roomy = Loader(x_path, y_path, batch_size=10, host_memory_limit=10 * MB, verbose=False)
    assert roomy.placement == "host"
    assert not any(isinstance(leaf, np.memmap) for leaf in roomy.pipeline.store.leaves)
    assert f"fit within host_memory_limit={10 * MB}" in str(roomy.plan)
    tight = Loader(x_path, y_path, batch_size=10, host_memory_limit=1000, verbose=False)
    assert tight.placement == "disk"
    assert "are over host_memory_limit=1000 (1.0 KB)" in str(tight.plan)


def test_auto_picks_the_gpu_first_and_streams_the_upload(files, fake_gpu, monkeypatch):
    from gpuloader import store

    _, _, x_path, y_path = files
    monkeypatch.setattr(store, "DEFAULT_CHUNK_BYTES", 4000)  # 200 rows of x per chunk
    loader = Loader(x_path, y_path, batch_size=100, seed=1, host_memory_limit=1000, verbose=False)
    assert loader.placement == "gpu"
    assert fake_gpu.state.uploads[:5] == [200] * 5
    disk = Loader(x_path, y_path, batch_size=100, seed=1, device="disk", verbose=False)
    assert epoch_ids(loader) == epoch_ids(disk)


def test_host_for_files_over_the_limit_is_refused_with_the_numbers(files):
    _, _, x_path, _ = files
    with pytest.raises(ValueError, match=r"device='host' would read 20.0 KB.*host_memory_limit=1.0 KB"):
        Loader(x_path, device="host", host_memory_limit=1000, verbose=False)


@pytest.mark.parametrize("drop", [False, True])
def test_disk_tier_serves_every_sample_once_in_the_same_order_as_ram(files, drop):
    x, y, x_path, y_path = files
    disk = Loader(x_path, y_path, batch_size=96, seed=3, device="disk", drop_remainder=drop, verbose=False)
    ram = Loader(x, y, batch_size=96, seed=3, drop_remainder=drop, verbose=False)
    for _ in range(2):
        ids = epoch_ids(disk)
        assert ids == epoch_ids(ram)
        assert len(set(ids)) == len(ids) == (960 if drop else 1000)
        disk.on_epoch_end()
        ram.on_epoch_end()


def test_disk_tier_with_workers_reads_ahead_in_order(files):
    _, _, x_path, y_path = files
    loader = Loader(x_path, y_path, batch_size=50, seed=2, device="disk", workers=3, verbose=False)
    expected = [sample_ids(loader[i][0]) for i in range(len(loader))]
    loader.set_epoch(0)  # every batch went out through loader[i]: the next pass would serve epoch 1
    assert [sample_ids(batch[0]) for batch in loader.get_numpy_iterator()] == expected


def test_sorted_reads_put_rows_back_in_permutation_order(tmp_path):
    data = np.arange(100 * 3, dtype=np.int32).reshape(100, 3)
    mapped = open_source(np.load(save(tmp_path, "d.npy", data), mmap_mode="r"), "x")
    shards = open_source([save(tmp_path, f"s{i}.npy", p) for i, p in enumerate(np.array_split(data, 4))], "x")
    for rows in (np.array([99, 3, 50, 4, 0, 26, 25]), np.arange(10, 60)[::-1].copy(), np.arange(30, 70)):
        for leaf in (mapped, shards):
            out = np.empty((len(rows), 3), np.int32)
            read_rows_sorted(leaf, rows, out)
            np.testing.assert_array_equal(out, data[rows])
    np.testing.assert_array_equal(shards.read_range(20, 80), data[20:80])


def rss_anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def test_disk_tier_memory_stays_bounded(tmp_path):
    rows, row_bytes, batch_size = 16384, 4096, 256  # 64 MB of data, 1 MB batches
    path = tmp_path / "big.npy"
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, row_bytes // 4))
    for start in range(0, rows, 2048):
        mapped[start : start + 2048] = np.arange(start, start + 2048, dtype=np.float32)[:, None]
    mapped.flush()
    del mapped
    limit = 16 * MB  # the data is four times the limit
    baseline = rss_anon()
    loader = Loader(path, batch_size=batch_size, seed=0, host_memory_limit=limit, verbose=False)
    assert loader.placement == "disk"
    peak, seen = 0, 0
    for i in range(len(loader)):
        (batch,) = loader[i]
        seen += int(batch.shape[0])
        peak = max(peak, rss_anon() - baseline)
        del batch
    assert seen == rows
    batch_bytes = batch_size * row_bytes
    assert peak <= limit + 8 * batch_bytes, f"anonymous memory grew by {peak / MB:.1f} MB"


BAD_FILES = [
    ("missing file", lambda d: d / "nope.npy", FileNotFoundError, r"x: the file '.*nope.npy' does not exist"),
    ("not a .npy", lambda d: (d / "t.npy").write_text("hello") and d / "t.npy", ValueError,
     r"x: '.*t.npy' \(5 bytes\) is not a readable .npy file"),
    ("truncated", lambda d: truncated(d), ValueError, r"x: '.*cut.npy' \(\d+ bytes\) is not a readable .npy"),
    ("shard shapes differ", lambda d: [save(d, "a.npy", np.zeros((4, 3))), save(d, "b.npy", np.zeros((4, 2)))],
     ValueError, r"'.*a.npy' has rows of shape \(3,\) and dtype float64, '.*b.npy' has \(2,\) and float64"),
    ("shard dtypes differ", lambda d: [save(d, "a.npy", np.zeros((4, 3))), save(d, "b.npy", np.zeros((4, 3), "f4"))],
     ValueError, r"'.*b.npy' has \(3,\) and float32"),
]


def truncated(directory):
    path = save(directory, "cut.npy", np.zeros((100, 10)))
    path.write_bytes(path.read_bytes()[:1000])
    return path


@pytest.mark.parametrize(("case", "make", "error", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_at_construction(tmp_path, case, make, error, message):
    with pytest.raises(error, match=message):
        Loader(make(tmp_path), device="disk", verbose=False)


def test_row_counts_that_differ_name_the_files(tmp_path):
    x_path = save(tmp_path, "x.npy", np.zeros((10, 2)))
    y_path = save(tmp_path, "y.npy", np.zeros(9))
    with pytest.raises(ValueError, match=r"x \('.*x.npy'\) has 10, y \('.*y.npy'\) has 9"):
        Loader(x_path, y_path, verbose=False)


def test_unknown_device_lists_disk(files):
    with pytest.raises(ValueError, match="'disk'"):
        Loader(np.zeros(3), device="tape", verbose=False)
    assert gpuloader.Loader(files[2], device="disk", verbose=False).placement == "disk"


def test_the_disk_tier_without_any_input_on_disk_is_refused_at_construction(monkeypatch):
    # Issue 17: it reported placement "disk" and "batches are read from the files" where there were none.
    x, y = id_data(100, features=3)
    rule = r"reads every batch from files, but no input is on disk: x, y are arrays in memory.*device='host'"
    with pytest.raises(ValueError, match=r"device='disk' " + rule):
        Loader(x, y, device="disk", verbose=False)
    monkeypatch.setenv("GPULOADER_DEVICE", "disk")
    with pytest.raises(ValueError, match=r"\$GPULOADER_DEVICE=disk \(no device argument was given\) " + rule):
        Loader(x, y, verbose=False)
    assert Loader(x, y, device="host", verbose=False).placement == "host"


def test_the_disk_tier_with_some_inputs_in_ram_says_which_are_read_from_files(files):
    x, y, x_path, _ = files
    loader = Loader(x_path, y, batch_size=100, seed=1, device="disk", verbose=False)
    assert loader.placement == "disk"
    assert str(loader.plan).endswith(
        "batches are read from the files; y is in RAM and gathered from there")
    assert epoch_ids(loader) == epoch_ids(Loader(x, y, batch_size=100, seed=1, verbose=False))


def test_the_helpers_advise_only_maps_numpy_made(files, tmp_path):
    _, _, x_path, _ = files
    assert open_source(np.load(x_path, mmap_mode="r"), "x").advise_random_access()
    shards = [save(tmp_path, f"p{i}.npy", np.zeros((5, 2))) for i in range(2)]
    assert Loader(shards, batch_size=2, device="disk", verbose=False).pipeline.store.leaves[0].advise_random_access()
    assert not open_source(np.zeros((3, 2)), "x").advise_random_access()  # an array in RAM has no file


def pages_of_rows(path, ids, row_bytes):
    """The page numbers (from the map's start) that rows ``ids`` of a .npy file span."""
    import mmap

    offset = np.load(path, mmap_mode="r").offset
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # where NumPy's map of the file begins
    pages = set()
    for row in ids:
        first = offset - start + row * row_bytes
        pages.update(range(first // mmap.PAGESIZE, (first + row_bytes - 1) // mmap.PAGESIZE + 1))
    return pages


@pytest.mark.parametrize("source", ["path", "shards"])
def test_a_shuffled_disk_loader_turns_read_ahead_off_and_asks_for_each_batchs_pages(tmp_path, monkeypatch, source):
    import mmap

    from gpuloader.sources import npy as sources

    given = []
    real = sources._madvise
    monkeypatch.setattr(sources, "_madvise", lambda m, *a: given.append((m, *a)) or real(m, *a))
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 20)  # the files cannot stay cached
    x, y = id_data(2000, features=600)  # rows of 2400 bytes: each spans one or two pages
    paths = [save(tmp_path, "x.npy", x)] if source == "path" else [
        save(tmp_path, f"x{i}.npy", part) for i, part in enumerate(np.split(x, 4))
    ]
    loader = Loader(paths[0] if source == "path" else paths, y, batch_size=64, seed=7, device="disk", verbose=False)
    leaf = loader.pipeline.store.leaves[0]
    maps = [part.array._mmap for part in ([leaf] if source == "path" else leaf.parts)]
    randoms = [m for m, what, *_ in given if what == mmap.MADV_RANDOM]
    assert sorted(map(id, randoms)) == sorted(map(id, maps)), "every map of x advised random access, once"
    given.clear()

    ids = sample_ids(loader[5][0])
    asked = {id(m): set() for m in maps}
    for mapping, what, start, length in given:
        assert what == mmap.MADV_WILLNEED and start % mmap.PAGESIZE == 0 and length % mmap.PAGESIZE == 0
        asked[id(mapping)].update(range(start // mmap.PAGESIZE, (start + length) // mmap.PAGESIZE))
    rows_per_file = len(x) // len(maps)
    for k, (path, mapping) in enumerate(zip(paths, maps)):
        mine = [i - k * rows_per_file for i in ids if i // rows_per_file == k]
        assert asked[id(mapping)] == pages_of_rows(path, mine, 600 * 4), f"file {k}: exactly the batch's pages"


def test_a_shuffled_disk_loader_over_files_the_page_cache_holds_keeps_the_read_ahead(tmp_path, monkeypatch):

    from gpuloader.sources import npy as sources

    given = []
    real = sources._madvise
    monkeypatch.setattr(sources, "_madvise", lambda m, *a: given.append((m, *a)) or real(m, *a))
    monkeypatch.setattr(placement, "available_host_memory", lambda: 1 << 40)
    x, y = id_data(2000, features=600)
    loader = Loader(save(tmp_path, "x.npy", x), y, batch_size=64, seed=7, device="disk", verbose=False)
    assert sample_ids(loader[5][0]) == np.asarray(permutation(np, 2000, 7, 0))[320:384].tolist()
    assert given == [], "no advice: each fault reads around, and the pages stay cached until their rows come"


def test_an_unshuffled_disk_loader_keeps_the_kernels_read_ahead(files, monkeypatch):
    import mmap

    from gpuloader.sources import npy as sources

    given = []
    real = sources._madvise
    monkeypatch.setattr(sources, "_madvise", lambda m, *a: given.append((m, *a)) or real(m, *a))
    _, _, x_path, y_path = files
    loader = Loader(x_path, y_path, batch_size=64, shuffle=False, device="disk", verbose=False)
    loader[3]
    assert not [what for _, what, *_ in given if what == mmap.MADV_RANDOM]
