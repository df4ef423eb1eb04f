"""gpuloader.from_hf_dataset: numeric columns served from the Arrow buffers, image columns decoded once."""

from __future__ import annotations

import io

import numpy as np
import pytest

import gpuloader
from gpuloader.ingest import decode, hf

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
    assert dataset.data.table.column("x").num_chunks > 1  # several record batches: served as shards
    loader = gpuloader.from_hf_dataset(dataset, x=("x", "v"), y="y", batch_size=100, shuffle=False, verbose=False)
    leaves = loader.pipeline.store.leaves
    for leaf, column in zip(leaves, ("x", "v")):
        for served, held in zip([part.array for part in leaf.parts], arrow_values(dataset, column)):
            assert np.shares_memory(served, held)
    assert loader.placement == "disk"  # without a GPU: read from the mapped file, no second copy in RAM
    (xb, vb), yb = loader[3]
    np.testing.assert_array_equal(np.asarray(xb), x[300:400])
    np.testing.assert_array_equal(np.asarray(vb), np.arange(300 * 5, 400 * 5).reshape(100, 5))
    np.testing.assert_array_equal(np.asarray(yb), np.arange(300, 400) % 3)


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
        (lambda d: d.shuffle(seed=0), ValueError, "indices mapping"),
        (lambda d: datasets.DatasetDict({"train": d}), TypeError, "Pick a split"),
        (lambda d: datasets.Dataset.from_dict({"x": [[1.0], [2.0, 3.0]]}), ValueError, "lists of different lengths"),
        (lambda d: datasets.Dataset.from_dict({"x": [1.0, None]}), ValueError, "null"),
        (lambda d: datasets.Dataset.from_dict({"x": ["a", "b"]}), TypeError, "only integer and floating"),
        (lambda d: datasets.Dataset.from_dict({"x": [True, False]}), TypeError, "bit-packed"),
        (lambda d: d, ValueError, "no column 'nope'"),
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
    view = hf.arrow_view(nested, "c")
    np.testing.assert_array_equal(view, np.arange(6, 14).reshape(4, 2))
    assert np.shares_memory(view, np.frombuffer(values.buffers()[1], np.int32))
