"""``from_hf_dataset``: a Loader over columns of a Hugging Face ``datasets.Dataset``.

Numeric columns are served from the Arrow buffers themselves, without a
copy: NumPy views over each record batch's values buffer (a memory map of the
dataset's ``.arrow`` files after ``load_from_disk``). A column qualifies when
its Arrow type is a primitive integer or floating type (not bool: Arrow packs
bools into bits), or fixed-shape lists of one (``Array2D`` ... ``Array5D``,
``Sequence``/``List`` with a ``length``, or lists whose every row has the same
length), with no nulls at any level. A dataset with an indices mapping (after
``shuffle``, ``select``, ``filter``, ``train_test_split``) has no contiguous
rows to view: call ``dataset.flatten_indices()`` first.

Image columns (``datasets.Image``) are decoded once, with Pillow, into the
cache (:mod:`gpuloader.ingest.cache`), keyed by the dataset's fingerprint, its
cache files (sizes, modification times), the column and the decode settings.

What the Loader receives: one record batch gives one NumPy view (an in-RAM
input: the host tier holds it as is, no copy); several record batches give
the views as shards, which the tiers treat like ``.npy`` shards, and
``host_memory_limit`` defaults to 0 here so that without a GPU the batches are
read from the mapped file (page cache) rather than copied into RAM.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpuloader.ingest import cache as cache_lib
from gpuloader.ingest import decode


def from_hf_dataset(
    dataset: Any,
    x: str | Sequence[str] | Mapping[str, str],
    y: str | Sequence[str] | Mapping[str, str] | None = None,
    sample_weight: str | None = None,
    *,
    image_size: tuple[int, int] | int | None = None,
    color_mode: str = "rgb",
    interpolation: str = "bilinear",
    crop_to_aspect_ratio: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    verbose: bool = True,
    **loader_kwargs: Any,
) -> Any:
    """A :class:`gpuloader.Loader` over the named columns of a ``datasets.Dataset``.

    Args:
        dataset: a ``datasets.Dataset`` (not a ``DatasetDict``: pick a split;
            not an ``IterableDataset``: rows must be addressable).
        x: a column name, a list/tuple of names, or a dict ``{input_name: column}``.
        y, sample_weight: column names (or structures of them), or None.
        image_size, color_mode, interpolation, crop_to_aspect_ratio: for image
            columns, as in :func:`gpuloader.image_dataset_from_directory`
            (``image_size=None`` keeps the images' size, which must be equal).
        cache_dir: where decoded image columns are cached (see that function).
        verbose: progress bar while decoding, and the Loader's own.
        **loader_kwargs: passed to the Loader (``batch_size``, ``shuffle``,
            ``seed``, ``device``, ``host_memory_limit`` (default 0 here), ...).

    Raises:
        TypeError: not a ``datasets.Dataset``, or a column of a type that is
            neither a qualifying numeric type nor ``Image`` (the message says why).
        ValueError: an unknown column, an indices mapping, or nulls.

    Cost: numeric columns: nothing is read at construction (the GPU tier copies
    them once to the device). Image columns: one decode per image, the first time.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        hint = " Pick a split, e.g. dataset['train']." if isinstance(dataset, datasets.DatasetDict) else ""
        raise TypeError(f"from_hf_dataset takes a datasets.Dataset; received {type(dataset).__name__}.{hint}")
    if dataset._indices is not None:
        raise ValueError(
            "this Dataset has an indices mapping (from shuffle, select, filter or a split), so its rows are not "
            "contiguous in the Arrow file and cannot be served without a copy. Call dataset = "
            "dataset.flatten_indices() first (writes the selected rows once); the Loader shuffles by itself."
        )
    settings = decode.check_settings(image_size, color_mode, interpolation, crop_to_aspect_ratio)

    def leaf(column: str) -> Any:
        return _column(dataset, column, settings, cache_dir, verbose)

    parts = [_map(part, leaf) if part is not None else None for part in (x, y, sample_weight)]
    from gpuloader.loader import Loader

    loader_kwargs.setdefault("host_memory_limit", 0)
    return Loader(*parts, verbose=verbose, **loader_kwargs)


def _map(part: Any, leaf: Any) -> Any:
    if isinstance(part, str):
        return leaf(part)
    if isinstance(part, Mapping):
        return {key: _map(value, leaf) for key, value in part.items()}
    if isinstance(part, (list, tuple)):
        return tuple(_map(value, leaf) for value in part)
    raise TypeError(f"columns are named by strings (or lists/dicts of them); received {part!r}.")


def _column(dataset: Any, column: str, settings: decode.DecodeSettings, cache_dir: Any, verbose: bool) -> Any:
    import datasets

    if column not in dataset.column_names:
        raise ValueError(f"no column {column!r} in this Dataset; its columns are {dataset.column_names}.")
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return _images(dataset, column, settings, cache_dir, verbose)
    chunks = dataset.data.table.column(column).chunks
    views = [arrow_view(chunk, column) for chunk in chunks if len(chunk)]
    if not views:
        raise ValueError(f"column {column!r} is empty; the Dataset has no rows.")
    if len(views) == 1:
        return views[0]
    from gpuloader.sources import concatenated

    return concatenated(views)  # the record batches' rows in order, each read in place


def arrow_view(chunk: Any, column: str) -> np.ndarray:
    """A read-only NumPy view over one Arrow array's values, shaped ``(rows, *fixed shape)``; no copy.

    Raises:
        TypeError: the type does not qualify (see the module docstring), with the fix.
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
        raise TypeError(
            f"column {column!r} has Arrow type {chunk.type}, whose values are {kind}: only integer and floating "
            "values (fixed-shape lists of them included) are served from the Arrow buffers without a copy; bool "
            "is bit-packed. Cast it (dataset.cast_column(name, datasets.Value('int8'))) or encode strings as ids."
        )
    dtype = np.dtype(kind.to_pandas_dtype())
    values = np.frombuffer(array.buffers()[1], dtype, count=len(array), offset=array.offset * dtype.itemsize)
    return values.reshape(rows, *shape)


def _refuse_nulls(array: Any, column: str) -> None:
    if array.null_count:
        raise ValueError(f"column {column!r} has {array.null_count} null value(s); a batch cannot hold a missing "
                         "value. Fill or drop them (dataset.filter / dataset.map) first.")


def _images(dataset: Any, column: str, settings: decode.DecodeSettings, cache_dir: Any, verbose: bool) -> np.ndarray:
    """An image column decoded once into the cache; the uint8 images as a memory map."""
    import dataclasses

    files = []
    for entry in dataset.cache_files:
        stat = os.stat(entry["filename"])
        files.append([entry["filename"], stat.st_size, stat.st_mtime_ns])
    source = {"fingerprint": dataset._fingerprint, "column": column, "settings": dataclasses.asdict(settings)}
    content = {"files": files, "rows": dataset.num_rows}

    def build(folder: Path) -> dict[str, Any]:
        from gpuloader.ingest.folder import decode_images

        items, names = [], []
        for chunk in dataset.data.table.column(column).chunks:
            for value in chunk.to_pylist():
                if value is None:
                    raise ValueError(f"column {column!r} row {len(items)} holds no image; fill or drop it first.")
                items.append(value["bytes"] if value.get("bytes") is not None else value["path"])
                names.append(f"column {column!r} row {len(names)}")
        extra = decode_images(items, names, settings, folder, f"gpuloader: decoding {len(items)} images", verbose)
        if extra["skipped"]:
            raise decode.DecodeError("; ".join(problem for _, problem in extra["skipped"][:5]) +
                                     " (fix or drop these rows; every row of every column must be served)")
        return extra

    entry = cache_lib.open_or_build(cache_lib.cache_root(cache_dir), "hf", source, content, build)
    return entry.array("images")
