"""gpuloader.from_hf_dataset: numeric columns served from the Arrow buffers, image columns decoded once."""

from __future__ import annotations

import io
import os
import time
from unittest import mock

import numpy as np
import pytest

import gpuloader
from gpuloader.ingest import decode
from gpuloader.sources import SourceChangedError
from gpuloader.sources.arrow import ArrowSource, arrow_view

datasets = pytest.importorskip("datasets")
PIL = pytest.importorskip("PIL.Image")


def png(value: int, size=(6, 5)) -> bytes:
    buffer = io.BytesIO()
    PIL.fromarray(np.full((*size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def saved(tmp_path):
    """A Dataset of 2500 rows (3 record batches of 1000 once saved) written with save_to_disk, reopened."""
    n = 2500
    x = np.arange(n * 12, dtype=np.float32).reshape(n, 4, 3)
    features = datasets.Features({
        "x": datasets.Array2D((4, 3), "float32"),
        "v": datasets.List(datasets.Value("int16"), length=5),
        "y": datasets.ClassLabel(num_classes=3),
        "image": datasets.Image(),
    })
    table = {"x": x, "v": np.arange(n * 5, dtype=np.int16).reshape(n, 5), "y": np.arange(n) % 3,
             "image": [{"bytes": png(i % 251), "path": None} for i in range(n)]}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / "ds"))
    return datasets.load_from_disk(str(tmp_path / "ds")), x


def arrow_values(dataset, column):
    """NumPy views of the innermost values buffer of every record batch of a column (what Arrow holds)."""
    views = []
    for chunk in dataset.data.table.column(column).chunks:
        array = chunk.storage if hasattr(chunk, "storage") else chunk
        while hasattr(array, "flatten") and array.type.num_fields:
            array = array.flatten()
        views.append(np.frombuffer(array.buffers()[1], np.uint8))
    return views


def test_numeric_columns_are_served_from_the_arrow_buffers_without_a_copy(saved):
    dataset, x = saved
    assert dataset.data.table.column("x").num_chunks > 1  # several record batches
    loader = gpuloader.from_hf_dataset(dataset, x=("x", "v"), y="y", batch_size=100, shuffle=False, verbose=False)
    leaves = loader.pipeline.store.leaves
    for leaf, column in zip(leaves, ("x", "v")):
        assert isinstance(leaf, ArrowSource) and leaf.on_disk
        for view, held in zip(leaf._views, arrow_values(dataset, column)):
            assert np.shares_memory(view, held)  # the rows are read where Arrow holds them
    assert loader.placement == "disk"  # without a GPU: read from the mapped file, no second copy in RAM
    assert "kept out of RAM by host_memory_limit=0" in str(loader.plan)  # what decided, not "do not fit"
    (xb, vb), yb = loader[3]
    np.testing.assert_array_equal(np.asarray(xb), x[300:400])
    np.testing.assert_array_equal(np.asarray(vb), np.arange(300 * 5, 400 * 5).reshape(100, 5))
    np.testing.assert_array_equal(np.asarray(yb), np.arange(300, 400) % 3)


def rows_dataset(tmp_path, n=1000, writer_batch_size=64, num_shards=2, name="rows"):
    """x[i] = i * 8 + (0..7) as (2, 4) float32, y[i] = i: saved in ``num_shards`` files of small record batches."""
    x = np.arange(n * 8, dtype=np.float32).reshape(n, 2, 4)
    features = datasets.Features({"x": datasets.Array2D((2, 4), "float32"), "y": datasets.Value("int64")})
    built = datasets.Dataset.from_dict({"x": x, "y": np.arange(n)}, features=features)
    folder = str(tmp_path / name)
    with mock.patch.object(datasets.config, "DEFAULT_MAX_BATCH_SIZE", writer_batch_size):  # save_to_disk's batches
        built.save_to_disk(folder, num_shards=num_shards)
    reopened = datasets.load_from_disk(folder)
    return reopened, x


def assert_epochs_equal_the_numpy_reference(dataset, x_rows, y_rows, epochs=3, **kwargs):
    """Every batch of ``epochs`` epochs equals the same Loader's over the NumPy rows (same seed: same order)."""
    ours = gpuloader.from_hf_dataset(dataset, x="x", y="y", batch_size=48, seed=7, verbose=False, **kwargs)
    reference = gpuloader.Loader(x_rows, y_rows, batch_size=48, seed=7, verbose=False)
    assert len(ours) == len(reference)
    for _ in range(epochs):
        seen = []
        for (xb, yb), (xr, yr) in zip(ours, reference):
            np.testing.assert_array_equal(np.asarray(xb), np.asarray(xr))
            np.testing.assert_array_equal(np.asarray(yb), np.asarray(yr))
            seen.extend(np.asarray(yb).tolist())
        assert sorted(seen) == sorted(np.asarray(y_rows).tolist())  # every row once per epoch
        ours.on_epoch_end()
        reference.on_epoch_end()
    return ours


def test_a_saved_dataset_of_many_record_batches_and_files_serves_the_numpy_rows_every_epoch(tmp_path):
    dataset, x = rows_dataset(tmp_path)
    assert len(dataset.cache_files) == 2 and dataset.data.table.column("x").num_chunks > 10
    loader = assert_epochs_equal_the_numpy_reference(dataset, x, np.arange(len(x)))
    assert loader.placement == "disk" and loader.pipeline.store.leaves[0].files == [
        entry["filename"] for entry in dataset.cache_files]


def test_the_compiled_and_numpy_gathers_and_per_chunk_regions_serve_the_same_rows(tmp_path, monkeypatch):
    from gpuloader.sources import arrow

    dataset, x = rows_dataset(tmp_path)
    monkeypatch.setattr(arrow, "_rows", None)
    monkeypatch.setattr(arrow, "_mapped_spans", lambda: [])
    assert_epochs_equal_the_numpy_reference(dataset, x, np.arange(len(x)), epochs=1)


@pytest.mark.parametrize(
    "select",
    [
        lambda d: d.select(np.random.default_rng(0).permutation(len(d))[:300]),
        lambda d: d.select(range(130, 870)),  # contiguous: a sliced table, no indices mapping
        lambda d: d.filter(lambda row: row["y"] % 3 != 1),
        lambda d: d.shuffle(seed=4),
        lambda d: d.train_test_split(test_size=0.25, seed=1)["test"],
        lambda d: d.select(range(130, 870)).shuffle(seed=2).select(range(50, 400)),
    ],
    ids=["select", "contiguous select", "filter", "shuffle", "split", "slice then shuffle then select"],
)
def test_a_selected_or_filtered_dataset_serves_exactly_its_rows(tmp_path, select):
    dataset, x = rows_dataset(tmp_path)
    chosen = select(dataset)
    ids = np.array(chosen["y"])  # the rows the dataset holds, in its order, as datasets itself reads them
    assert len(ids) < len(x) or chosen._indices is not None
    assert_epochs_equal_the_numpy_reference(chosen, x[ids], ids, epochs=2)


def test_concatenated_datasets_serve_both_files_rows(tmp_path):
    first, x = rows_dataset(tmp_path, n=300, num_shards=1, name="a")
    second, _ = rows_dataset(tmp_path, n=300, num_shards=1, name="b")
    both = datasets.concatenate_datasets([first, second.select(range(100, 300))])
    ids = np.array(both["y"])
    assert len(both.cache_files) == 2
    assert_epochs_equal_the_numpy_reference(both, x[ids], ids, epochs=2)


def test_a_column_with_nulls_in_one_record_batch_is_refused_naming_it(tmp_path):
    values = [[float(i), float(i)] for i in range(300)]
    values[250] = None
    features = datasets.Features({"x": datasets.List(datasets.Value("float32"), length=2)})
    with mock.patch.object(datasets.config, "DEFAULT_MAX_BATCH_SIZE", 100):
        datasets.Dataset.from_dict({"x": values}, features=features).save_to_disk(str(tmp_path / "nulls"))
    with pytest.raises(ValueError, match="column 'x' has 1 null value"):
        gpuloader.from_hf_dataset(datasets.load_from_disk(str(tmp_path / "nulls")), x="x", verbose=False)


def test_a_cache_file_rewritten_in_place_is_detected_before_the_next_batch(tmp_path):
    dataset, _ = rows_dataset(tmp_path)
    loader = gpuloader.from_hf_dataset(dataset, x="x", y="y", batch_size=100, verbose=False)
    loader[0]
    path = dataset.cache_files[1]["filename"]
    with open(path, "r+b") as file:  # same inode and size, new bytes: what a rewrite in place looks like
        file.seek(os.path.getsize(path) - 8)
        file.write(b"\0" * 8)
    with pytest.raises(SourceChangedError, match=r"data-00001-of-00002\.arrow.*rewritten in place"):
        loader[1]


def test_a_one_batch_column_is_one_view_the_host_tier_keeps_as_is(tmp_path):
    n = 300
    dataset = datasets.Dataset.from_dict({"x": np.arange(n * 2, dtype=np.float64).reshape(n, 2), "y": np.arange(n)})
    assert dataset.data.table.column("x").num_chunks == 1
    loader = gpuloader.from_hf_dataset(dataset, x="x", y="y", host_memory_limit=None, shuffle=False, verbose=False)
    assert loader.placement == "host"
    (held,) = arrow_values(dataset, "x")
    assert np.shares_memory(loader.pipeline.store.leaves[0], held)
    np.testing.assert_array_equal(np.asarray(loader[1][0]), np.arange(64, 128, dtype=np.float64).reshape(32, 2))


def test_an_image_column_is_decoded_once_into_the_cache(saved, tmp_path, monkeypatch):
    dataset, _ = saved
    cache = tmp_path / "cache"
    loader = gpuloader.from_hf_dataset(dataset, x="image", y="y", batch_size=500, shuffle=False,
                                       cache_dir=cache, verbose=False)
    images = np.asarray(loader[1][0])
    assert images.shape == (500, 6, 5, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(500, 1000) % 251)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_into", refuse)
    again = gpuloader.from_hf_dataset(dataset, x="image", batch_size=500, shuffle=False, cache_dir=cache,
                                      verbose=False)
    np.testing.assert_array_equal(np.asarray(again[1][0]), images)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: datasets.DatasetDict({"train": d}), TypeError, "Pick a split"),
        (lambda d: datasets.Dataset.from_dict({"x": [[1.0], [2.0, 3.0]]}), ValueError, "lists of different lengths"),
        (lambda d: datasets.Dataset.from_dict({"x": [1.0, None]}), ValueError, "null"),
        (lambda d: datasets.Dataset.from_dict({"x": ["a", "b"]}), TypeError, r"text and bytes.*class_encode_column"),
        (lambda d: datasets.Dataset.from_dict({"x": [True, False]}), TypeError, r"one bit a value.*Value\('int8'\)"),
        (lambda d: d.to_iterable_dataset(), TypeError, r"IterableDataset.*without streaming=True"),
        (lambda d: d, ValueError, "no column 'nope'"),
        (lambda d: d.with_transform(lambda batch: {"x": [[v * 100 for v in row] for row in batch["x"]]}),
         ValueError, r"has a transform.*would be skipped.*map\(fn, batched=True\)"),
        (lambda d: __import__("tensorflow").data.Dataset.from_tensor_slices(np.zeros(4)), TypeError,
         r"received _TensorSliceDataset\. It is a tf\.data\.Dataset\. Fix: gpuloader\.from_tf_dataset"),
        (lambda d: d.with_format("numpy", dtype=np.float16), ValueError,
         r"casts to dtype=.*float16.*cast would be skipped.*cast_column"),
    ],
)
def test_refused_with_the_rule(make, error, message):
    base = datasets.Dataset.from_dict({"x": np.zeros((4, 2), np.float32), "nope_not": np.zeros(4)})
    column = "nope" if message.startswith("no column") else "x"
    with pytest.raises(error, match=message):
        gpuloader.from_hf_dataset(make(base), x=column, verbose=False)


def test_arrow_view_of_a_sliced_array_starts_at_its_offset():
    import pyarrow as pa

    values = pa.array(np.arange(20, dtype=np.int32))
    nested = pa.FixedSizeListArray.from_arrays(values, 2).slice(3, 4)
    view = arrow_view(nested, "c")
    np.testing.assert_array_equal(view, np.arange(6, 14).reshape(4, 2))
    assert np.shares_memory(view, np.frombuffer(values.buffers()[1], np.int32))


def test_images_that_cannot_be_decoded_raise_or_are_skipped_from_every_column(tmp_path):
    n = 20
    images = [{"bytes": png(i), "path": None} for i in range(n)]
    images[3] = {"bytes": b"not a png", "path": None}
    images[7] = None
    features = datasets.Features({"image": datasets.Image(), "v": datasets.Value("int32"),
                                  "y": datasets.Value("int64")})
    table = {"image": images, "v": np.arange(n, dtype=np.int32) * 10, "y": np.arange(n)}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / "ds"))
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    cache = tmp_path / "cache"
    with pytest.raises(decode.DecodeError, match=r"2 image\(s\) of column 'image'.*row 3.*row 7.*on_error=\"skip\""):
        gpuloader.from_hf_dataset(dataset, x="image", y="y", cache_dir=cache, verbose=False)
    with pytest.warns(UserWarning, match="2 of 20 rows were left out"):
        loader = gpuloader.from_hf_dataset(dataset, x=("image", "v"), y="y", batch_size=n, shuffle=False,
                                           cache_dir=cache, on_error="skip", verbose=False)
    (pixels, v), y = loader[0]
    kept = [i for i in range(n) if i not in (3, 7)]
    assert len(loader) == 1 and np.asarray(y).tolist() == kept
    np.testing.assert_array_equal(np.asarray(pixels)[:, 0, 0, 0], kept)  # each image beside its own label
    np.testing.assert_array_equal(np.asarray(v), np.array(kept) * 10)
    with pytest.raises(ValueError, match='on_error must be "raise" or "skip"'):
        gpuloader.from_hf_dataset(dataset, x="v", on_error="ignore", verbose=False)


def test_an_image_column_of_paths_rebuilds_when_a_referenced_file_changes(tmp_path):
    """An Image column built from local files holds only their paths: the files decide the pixels too."""
    paths = []
    for value in range(4):
        paths.append(str(tmp_path / f"{value}.png"))
        (tmp_path / f"{value}.png").write_bytes(png(value))

    def served():
        dataset = datasets.Dataset.from_dict({"img": paths}).cast_column("img", datasets.Image())
        loader = gpuloader.from_hf_dataset(dataset, x="img", batch_size=4, shuffle=False,
                                           cache_dir=tmp_path / "cache", verbose=False)
        return np.asarray(loader[0][0])[:, 0, 0, 0].tolist()

    assert served() == [0, 1, 2, 3]
    (tmp_path / "0.png").write_bytes(png(99))
    assert served() == [99, 1, 2, 3]


def test_a_palette_mask_column_keeps_its_class_ids_beside_an_rgb_image_column(tmp_path):
    """VOC-style masks: palette PNGs whose stored values are the class ids (what np.asarray gives HF's users)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, (6, 8, 8)).astype(np.uint8)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)

    def mask(values):
        image = PIL.fromarray(values, mode="P")
        image.putpalette(palette)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    table = {"image": [{"bytes": png(i * 10, size=(8, 8)), "path": None} for i in range(6)],
             "mask": [mask(values) for values in ids]}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / "seg"))
    dataset = datasets.load_from_disk(str(tmp_path / "seg"))
    loader = gpuloader.from_hf_dataset(dataset, x="image", y="mask", batch_size=6, shuffle=False,
                                       color_mode={"mask": "index"}, interpolation={"mask": "nearest"},
                                       image_size=(16, 16), cache_dir=tmp_path / "c", verbose=False)
    images, masks = (np.asarray(part) for part in loader[0])
    assert images.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(masks[..., 0], ids.repeat(2, axis=1).repeat(2, axis=2))  # nearest 2x: ids kept
    with pytest.raises(ValueError, match=r'color_mode="index" keeps stored values.*interpolation="nearest"'):
        gpuloader.from_hf_dataset(dataset, x="image", y="mask", color_mode={"mask": "index"}, image_size=(16, 16),
                                  cache_dir=tmp_path / "c", verbose=False)
    with pytest.raises(ValueError, match=r"names \['masks'\], which are not Image columns"):
        gpuloader.from_hf_dataset(dataset, x="image", y="mask", color_mode={"masks": "index"},
                                  cache_dir=tmp_path / "c", verbose=False)


def test_a_class_label_y_gives_the_loader_its_class_names(saved):
    dataset, _ = saved
    loader = gpuloader.from_hf_dataset(dataset, x="x", y="y", batch_size=100, verbose=False)
    assert loader.class_names == dataset.features["y"].names
    assert gpuloader.from_hf_dataset(dataset, x="x", y="v", batch_size=100, verbose=False).class_names is None


def test_image_columns_are_augmented_as_the_channels_last_cache_they_are(tmp_path):
    """Under Keras's channels_first a RandomFlip read the channels-last cache as channels-first: RGB became BGR."""
    import keras

    pixels = np.zeros((8, 10, 3), np.uint8)
    pixels[:, :5, 0] = 255  # the left half red
    buffer = io.BytesIO()
    PIL.fromarray(pixels).save(buffer, format="PNG")
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": buffer.getvalue(), "path": None}] * 16},
                                         features=datasets.Features({"image": datasets.Image()}))
    call = {"x": "image", "batch_size": 16, "shuffle": False, "cache_dir": tmp_path / "c", "verbose": False}
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format("channels_first")
        out = np.asarray(gpuloader.from_hf_dataset(dataset, augment=[gpuloader.augment.RandomFlip()], seed=1,
                                                   **call)[0][0])
    finally:
        keras.config.set_image_data_format(previous)
    mirrored = (out[:, 0, 9, 0] == 255).sum()
    assert 0 < mirrored < 16 and (out[:, 0, 0, 0] == 255).sum() == 16 - mirrored  # mirrored or as stored
    assert (out[..., 1:] == 0).all()  # never a colour moved to another channel
    for arguments in ({"augment": [gpuloader.augment.RandomFlip(data_format="channels_first")]},
                      {"augment": [gpuloader.augment.RandomFlip()], "data_format": "channels_first"}):
        with pytest.raises(ValueError, match=r"image columns are decoded channels-last.*leave data_format out"):
            gpuloader.from_hf_dataset(dataset, **arguments, **call)
def pages_holding(dataset, rows_bytes: list[bytes]) -> set[tuple[str, int]]:
    """``(file, page)`` of every page the given rows' bytes lie on, found by searching the dataset's files."""
    page = 4096
    pages = set()
    files = {entry["filename"]: open(entry["filename"], "rb").read() for entry in dataset.cache_files}
    for wanted in rows_bytes:
        found = [(path, data.find(wanted)) for path, data in files.items() if data.find(wanted) >= 0]
        assert len(found) == 1, "each row's bytes are in one file"
        path, at = found[0]
        pages.update((path, p) for p in range(at // page, (at + len(wanted) - 1) // page + 1))
    return pages


@pytest.mark.parametrize("shuffled", [False, True], ids=["in order", "through an indices mapping"])
def test_the_disk_tiers_read_ahead_asks_for_the_pages_the_rows_lie_on_in_the_arrow_files(tmp_path, shuffled):
    from gpuloader import readahead
    from gpuloader.ingest.hf import arrow_source

    dataset, x = rows_dataset(tmp_path, n=3000)  # 2 files of record batches of 64 rows, 32 bytes a row
    column_rows = np.arange(len(x))
    if shuffled:
        dataset = dataset.shuffle(seed=3)
        column_rows = np.asarray(dataset._indices.column("indices")).astype(np.int64)
    leaf = readahead._Leaf(arrow_source(dataset, "x"))
    for rows in (np.array([0, 63, 64, 1499, 1500, 2999]), np.random.default_rng(0).permutation(3000)[:40]):
        asked = {(file.path, page) for file, start, length in leaf.ranges(rows)
                 for page in range(start // 4096, (start + length) // 4096)}
        assert asked == pages_holding(dataset, [x[r].tobytes() for r in column_rows[rows]])


def test_an_hf_epoch_on_the_disk_tier_has_its_pages_requested_ahead(tmp_path, monkeypatch):
    from gpuloader import readahead

    made = []
    monkeypatch.setattr(readahead, "willneed", lambda file, start, length: made.append(file.path))
    monkeypatch.setattr(readahead, "all_cached", lambda file: False)  # as after a reboot
    monkeypatch.setattr(readahead, "SWEEP_SHARE", 0.0)  # the window only: requests per batch
    dataset, _ = rows_dataset(tmp_path, n=3000)
    loader = gpuloader.from_hf_dataset(dataset, x="x", y="y", batch_size=100, verbose=False)
    assert loader.placement == "disk"
    seen = []
    for _, y in loader.get_numpy_iterator():
        seen.extend(np.asarray(y).tolist())
        time.sleep(0.01)  # a training step: the read-ahead thread runs meanwhile
    assert sorted(seen) == list(range(3000))
    assert set(made) == {entry["filename"] for entry in dataset.cache_files}, "both files' pages were asked for"
