"""``from_hf_dataset``: a Loader over columns of a Hugging Face ``datasets.Dataset``.

Numeric columns are served from the Arrow buffers themselves, without a copy,
through :class:`~gpuloader.sources.arrow.ArrowSource`: each row found by its
address in the memory the dataset already maps (its ``.arrow`` files after
``load_from_disk``), a batch gathered in one NumPy call per mapped region. A
column qualifies when its Arrow type is a primitive integer or floating type
(not bool: Arrow packs bools into bits), or fixed-shape lists of one
(``Array2D`` ... ``Array5D``, ``Sequence``/``List`` with a ``length``, or lists
whose every row has the same length), with no nulls at any level. A dataset
with an indices mapping (after ``shuffle``, ``select``, ``filter``,
``train_test_split``) is served through that mapping, row for row.

Image columns (``datasets.Image``) are decoded once, with Pillow, into the
cache (:mod:`gpuloader.ingest.cache`), keyed by the dataset's fingerprint, its
cache files (sizes, modification times), the column and the decode settings.
Images that cannot be decoded raise an error naming the row, or with
``on_error="skip"`` their rows are left out of every column, with a warning.

``host_memory_limit`` defaults to 0 here: without a GPU the batches are read
from the mapped files (page cache) rather than copied into RAM; the plan's
reason says so. ``host_memory_limit=None`` copies them into RAM when they fit.
"""

from __future__ import annotations

import os
import warnings
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
    color_mode: str | Mapping[str, str] = "rgb",
    interpolation: str | Mapping[str, str] = "bilinear",
    crop_to_aspect_ratio: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    on_error: str = "raise",
    verbose: bool = True,
    **loader_kwargs: Any,
) -> Any:
    """A :class:`gpuloader.Loader` over the named columns of a ``datasets.Dataset``.

    Args:
        dataset: a ``datasets.Dataset`` (not a ``DatasetDict``: pick a split;
            not an ``IterableDataset``: rows must be addressable). An indices
            mapping (``select``, ``shuffle``, ``filter``) is honoured.
        x: a column name, a list/tuple of names, or a dict ``{input_name: column}``.
        y, sample_weight: column names (or structures of them), or None.
        image_size, color_mode, interpolation, crop_to_aspect_ratio: for image
            columns, as in :func:`gpuloader.image_dataset_from_directory`
            (``image_size=None`` keeps the images' size, which must be equal).
            ``color_mode`` and ``interpolation`` may be dicts ``{column: value}``
            (columns left out: "rgb", "bilinear"), and ``color_mode="index"``
            keeps a palette or grayscale image's stored values (a segmentation
            mask's class ids; resized with "nearest" only), e.g.
            ``color_mode={"mask": "index"}, interpolation={"mask": "nearest"}``.
        cache_dir: where decoded image columns are cached (see that function).
        on_error: "raise" or "skip" for images that cannot be decoded (or are
            missing); "skip" leaves their rows out of every column and warns
            with the count.
        verbose: progress bar while decoding, and the Loader's own.
        **loader_kwargs: passed to the Loader (``batch_size``, ``shuffle``,
            ``seed``, ``device``, ``host_memory_limit`` (default 0 here), ...).

    Returns:
        A :class:`gpuloader.Loader`; its ``class_names`` are the names of a
        ``ClassLabel`` column given as ``y`` (label ``i`` is ``class_names[i]``),
        else None.

    Raises:
        TypeError: not a ``datasets.Dataset``, or a column of a type that is
            neither a qualifying numeric type nor ``Image`` (the message says why).
        ValueError: an unknown column, nulls, lists of several lengths, or a bad ``on_error``.
        gpuloader.ingest.decode.DecodeError: an image that cannot be decoded, with ``on_error="raise"``.

    Cost: numeric columns: nothing is read at construction (the chunks' addresses
    are noted; an indices mapping of several chunks is copied, 8 bytes per row);
    each batch is gathered from the mapped files; the GPU tier copies them once to
    the device. Image columns: one decode per image, the first time.
    """
    import datasets

    from gpuloader.inputs import other_input_kind

    if not isinstance(dataset, datasets.Dataset):
        hint = " Pick a split, e.g. dataset['train']." if isinstance(dataset, datasets.DatasetDict) else ""
        if isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
            hint = (" An IterableDataset (streaming=True) has no addressable rows to shuffle. Fix: load it without "
                    "streaming=True, or materialise it: datasets.Dataset.from_generator(lambda: (yield from "
                    "dataset), features=dataset.features).")
        other = other_input_kind(dataset)
        if not hint and other is not None:
            hint = f" It is {other[0]}. Fix: {other[1]}."
        raise TypeError(f"from_hf_dataset takes a datasets.Dataset; received {type(dataset).__name__}.{hint}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip"; received {on_error!r}.')
    if dataset.format.get("type") == "custom":
        raise ValueError(
            "the dataset has a transform (set_transform / with_transform), which runs when rows are read in "
            "Python; from_hf_dataset reads the stored columns, so the transform would be skipped. Fix: apply it "
            "once, dataset = dataset.with_format(None).map(fn, batched=True), and pass that; move random "
            "augmentation to augment=[...] (drawn anew each epoch), or into the model."
        )
    if dataset.format.get("format_kwargs", {}).get("dtype") is not None:
        raise ValueError(
            f"the dataset's format casts to dtype={dataset.format['format_kwargs']['dtype']!r} "
            f"(with_format({dataset.format.get('type')!r}, dtype=...)), which applies when rows are read in Python; "
            "from_hf_dataset serves the stored Arrow types, so the cast would be skipped. Fix: cast the column "
            "itself, dataset.cast_column(name, datasets.Value('float16')) (or the Sequence/ArrayND of it), and pass "
            "dataset.with_format(None); or cast the batches in the model."
        )
    settings = _per_column_settings(dataset, image_size, color_mode, interpolation, crop_to_aspect_ratio)
    columns = _Columns(dataset, settings, cache_dir, on_error, verbose)
    parts = [_map(part, columns.leaf) if part is not None else None for part in (x, y, sample_weight)]
    kept = columns.kept_rows()
    if kept is not None:
        parts = [_map_leaves(part, lambda leaf: columns.keep(leaf, kept)) for part in parts]
    from gpuloader.loader import Loader

    loader_kwargs.setdefault("host_memory_limit", 0)
    if columns.images:  # decoded channels-last: the ops read them so, whatever Keras's image_data_format
        decode.refuse_channels_first(loader_kwargs, "image columns")
        loader_kwargs.setdefault("data_format", "channels_last")
    loader = Loader(*parts, verbose=verbose, **loader_kwargs)
    label = dataset.features.get(y) if isinstance(y, str) else None
    # As the folder loaders: the names of a ClassLabel y, index i naming label i (None otherwise).
    loader.class_names = list(label.names) if isinstance(label, datasets.ClassLabel) else None
    return loader


def _map(part: Any, leaf: Any) -> Any:
    if isinstance(part, str):
        return leaf(part)
    if isinstance(part, Mapping):
        return {key: _map(value, leaf) for key, value in part.items()}
    if isinstance(part, (list, tuple)):
        return tuple(_map(value, leaf) for value in part)
    raise TypeError(f"columns are named by strings (or lists/dicts of them); received {part!r}.")


def _map_leaves(part: Any, change: Any) -> Any:
    if part is None:
        return None
    if isinstance(part, Mapping):
        return {key: _map_leaves(value, change) for key, value in part.items()}
    if isinstance(part, tuple):
        return tuple(_map_leaves(value, change) for value in part)
    return change(part)


def _per_column_settings(dataset: Any, image_size: Any, color_mode: Any, interpolation: Any,
                         crop_to_aspect_ratio: Any) -> dict[str, decode.DecodeSettings]:
    """Each image column's decode settings; a dict ``color_mode`` / ``interpolation`` names columns."""
    import datasets

    images = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    for argument, value in (("color_mode", color_mode), ("interpolation", interpolation)):
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(images))
            if unknown:
                raise ValueError(f"{argument} names {unknown}, which are not Image columns of this Dataset "
                                 f"(its Image columns: {images}). Fix: name Image columns only.")

    def pick(value: Any, column: str, default: str) -> Any:
        return value.get(column, default) if isinstance(value, Mapping) else value

    return {column: decode.check_settings(image_size, pick(color_mode, column, "rgb"),
                                          pick(interpolation, column, "bilinear"), crop_to_aspect_ratio)
            for column in images} or {"": decode.check_settings(image_size, pick(color_mode, "", "rgb"),
                                                                 pick(interpolation, "", "bilinear"),
                                                                 crop_to_aspect_ratio)}


class _Columns:
    """The dataset's columns as Loader inputs; image columns' skipped rows (``on_error="skip"``) collected."""

    def __init__(self, dataset: Any, settings: dict[str, decode.DecodeSettings], cache_dir: Any, on_error: str,
                 verbose: bool) -> None:
        self.dataset, self.settings, self.cache_dir = dataset, settings, cache_dir
        self.on_error, self.verbose = on_error, verbose
        self.skipped: dict[int, str] = {}
        self.images: dict[int, np.ndarray] = {}  # id(leaf) -> the rows (dataset rows) an image leaf holds

    def leaf(self, column: str) -> Any:
        import datasets

        dataset = self.dataset
        if column not in dataset.column_names:
            raise ValueError(f"no column {column!r} in this Dataset; its columns are {dataset.column_names}.")
        if isinstance(dataset.features[column], datasets.Image):
            images, skipped = _images(dataset, column, self.settings[column], self.cache_dir, self.verbose)
            if skipped and self.on_error == "raise":
                raise decode.DecodeError(
                    f"{len(skipped)} image(s) of column {column!r} could not be decoded: "
                    + "; ".join(skipped[row] for row in sorted(skipped)[:5])
                    + ' Fix or drop these rows (dataset.filter), or pass on_error="skip" to leave them out.'
                )
            self.skipped.update(skipped)
            self.images[id(images)] = np.setdiff1d(np.arange(dataset.num_rows), list(skipped))
            return images
        return arrow_source(dataset, column)

    def kept_rows(self) -> np.ndarray | None:
        """The dataset rows every column serves (None: all of them)."""
        if not self.skipped:
            return None
        warnings.warn(
            f"{len(self.skipped)} of {self.dataset.num_rows} rows were left out: their images could not be "
            f"decoded (on_error='skip'): " + "; ".join(self.skipped[row] for row in sorted(self.skipped)[:5]),
            stacklevel=3,
        )
        return np.setdiff1d(np.arange(self.dataset.num_rows), list(self.skipped))

    def keep(self, leaf: Any, kept: np.ndarray) -> Any:
        """``leaf`` reduced to dataset rows ``kept`` (an image leaf holds its own decoded rows only)."""
        from gpuloader.sources import open_source

        held = self.images.get(id(leaf))
        positions = kept if held is None else np.searchsorted(held, kept)
        return open_source(leaf, "column").subset(positions.astype(np.int64))


def arrow_source(dataset: Any, column: str) -> Any:
    """The :class:`~gpuloader.sources.arrow.ArrowSource` of a numeric column, through the indices mapping if any."""
    from gpuloader.sources.arrow import ArrowSource, column_views

    views = column_views(dataset.data.table.column(column).chunks, column)
    indices = None
    if dataset._indices is not None:  # after select / shuffle / filter: row i is data row indices[i]
        chunks = [chunk for chunk in dataset._indices.column("indices").chunks if len(chunk)]
        parts = [np.frombuffer(chunk.buffers()[1], np.uint64, len(chunk), chunk.offset * 8) for chunk in chunks]
        indices = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        if len(indices) != dataset.num_rows:
            raise ValueError(f"this Dataset's indices mapping has {len(indices)} rows for {dataset.num_rows} rows; "
                             "call dataset = dataset.flatten_indices() first.")
        if len(indices) and int(indices.max()) >= sum(len(view) for view in views):
            raise ValueError(f"this Dataset's indices mapping points past the {column!r} column's rows; call "
                             "dataset = dataset.flatten_indices() first.")
    if not len(views[0]) or (indices is not None and not len(indices)):
        raise ValueError(f"column {column!r} is empty; the Dataset has no rows.")
    files = [entry["filename"] for entry in dataset.cache_files]
    return ArrowSource(views, indices, files)


def _referenced_files(values: Any) -> list[str]:
    """The files an ``Image`` column refers to by path (rows without embedded bytes), in row order.

    Cost: reads the column's ``bytes`` validity and ``path`` fields (no image bytes)."""
    paths: list[str] = []
    for chunk in values.chunks:
        if chunk.type.num_fields == 0 or chunk.type.get_field_index("path") < 0:
            continue
        stored = chunk.field("bytes").is_valid() if chunk.type.get_field_index("bytes") >= 0 else None
        path = chunk.field("path")
        for keep, value in zip(stored.to_pylist() if stored is not None else [False] * len(path), path.to_pylist()):
            if not keep and value is not None:
                paths.append(value)
    return paths


def _images(
    dataset: Any, column: str, settings: decode.DecodeSettings, cache_dir: Any, verbose: bool
) -> tuple[np.ndarray, dict[int, str]]:
    """An image column decoded once into the cache: the uint8 images of the rows that decoded (a memory map),
    and ``{dataset row: problem}`` for the rows that did not (a missing image counts as one)."""
    import dataclasses

    files = []
    for entry in dataset.cache_files:
        stat = os.stat(entry["filename"])
        files.append([entry["filename"], stat.st_size, stat.st_mtime_ns])
    from gpuloader.ingest.folder import files_fingerprint

    stored = dataset.data.table.column(column)
    # Images stored as paths: their files decide the bytes too (every stored row's: no copy of the column here).
    referenced = _referenced_files(stored)
    source = {"fingerprint": dataset._fingerprint, "column": column, "settings": dataclasses.asdict(settings)}
    content = {"files": files, "rows": dataset.num_rows,
               "referenced": files_fingerprint(referenced, referenced) if referenced else None}

    def build(folder: Path) -> dict[str, Any]:
        from gpuloader.ingest.folder import decode_images

        values = stored
        if dataset._indices is not None:  # the dataset's rows, in its order
            values = values.take(dataset._indices.column("indices"))
        items, names = [], []
        for chunk in values.chunks:
            for value in chunk.to_pylist():
                row = len(items)
                if value is None:  # no image: fails to decode, so it is reported (or skipped) with its row
                    items.append(b"")
                    names.append(f"column {column!r} row {row} (no image: the value is null)")
                    continue
                items.append(value["bytes"] if value.get("bytes") is not None else value["path"])
                names.append(f"column {column!r} row {row}")
        return decode_images(items, names, settings, folder, f"gpuloader: decoding {len(items)} images", verbose)

    entry = cache_lib.open_or_build(cache_lib.cache_root(cache_dir), "hf", source, content, build)
    return entry.array("images"), {int(row): problem for row, problem in entry.manifest["skipped"]}
