"""The loader's inputs: argument checks, flattening ``x, y, sample_weight`` into leaves, class weights.

Everything here runs once, at construction, so a mistake is refused before
anything is placed or uploaded: every error names the rule, the value received
and the fix. Host leaves become :class:`~gpuloader.sources.Source`\\ s (arrays in
memory, ``.npy`` files and memory maps, shard lists: nothing read but their
headers, see :func:`gpuloader.sources.open_source`); CUDA arrays are kept where they are.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from gpuloader import placement as placement_lib
from gpuloader import sharding
from gpuloader._structure import Structure, flatten
from gpuloader.config import LoaderConfig
from gpuloader.handoff import dtype_problem
from gpuloader.permutation import MAX_SEED
from gpuloader.sources import Source, open_source

PYDATASET_KWARGS = ("workers", "use_multiprocessing", "max_queue_size")
_PARTS = ("x", "y", "sample_weight")


def check_config(
    *,
    batch_size: Any,
    shuffle: Any,
    seed: Any,
    drop_remainder: Any,
    device: Any,
    transform: Any,
    data_format: Any,
    gpu_memory_fraction: Any,
    host_memory_limit: Any,
    num_shards: Any,
    shard_index: Any,
    verbose: Any,
    workers: int,
    max_queue_size: int,
) -> LoaderConfig:
    """Every ``Loader`` argument but the data, checked once: the :class:`~gpuloader.config.LoaderConfig`.

    ``workers`` and ``max_queue_size`` come checked (:func:`check_pydataset_kwargs`,
    then Keras's ``PyDataset``). ``seed=None`` draws a seed here; ``data_format=None``
    reads Keras's ``image_data_format()``; ``num_shards``/``shard_index`` None take
    the strategy's (:func:`gpuloader.sharding.resolve_shards`).

    Raises:
        TypeError, ValueError: an argument breaks its rule; the message names the value and the fix.
    """
    from gpuloader.augment.assign import check_data_format

    batch_size = check_positive_int("batch_size", batch_size)
    shuffle = check_bool("shuffle", shuffle)
    drop_remainder = check_bool("drop_remainder", drop_remainder)
    seed_given = seed is not None
    seed = check_seed(seed)
    verbose = check_bool("verbose", verbose)
    host_memory_limit = check_host_memory_limit(host_memory_limit)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable as transform(batch, xp); received {transform!r}.")
    requested = placement_lib.resolve_device(device)
    fraction = placement_lib.check_fraction(gpu_memory_fraction)
    data_format = check_data_format(data_format)
    num_shards, shard_index, shard_source = sharding.resolve_shards(num_shards, shard_index, seed_given)
    return LoaderConfig(
        batch_size=batch_size, shuffle=shuffle, drop_remainder=drop_remainder, seed=seed, num_shards=num_shards,
        shard_index=shard_index, shard_source=shard_source, device=requested, device_argument=device,
        gpu_memory_fraction=fraction, host_memory_limit=host_memory_limit, transform=transform,
        data_format=data_format, verbose=verbose, workers=int(workers), max_queue_size=int(max_queue_size),
    )


def check_pydataset_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(PYDATASET_KWARGS))
    if unknown:
        raise TypeError(
            f"Loader got unexpected keyword argument(s) {', '.join(unknown)}; the PyDataset "
            f"arguments it takes are {', '.join(PYDATASET_KWARGS)}."
        )
    if kwargs.get("use_multiprocessing"):
        raise ValueError(
            "use_multiprocessing=True is not supported: gpuloader prepares batches ahead in "
            "threads (its gather releases the GIL) and GPU arrays cannot cross processes. "
            "Use workers=N with use_multiprocessing=False."
        )
    for name in ("workers", "max_queue_size"):
        if name in kwargs:
            check_positive_int(name, kwargs[name])
    return kwargs


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; received {value!r}. Pass e.g. {name}=32.")
    return int(value)


def check_non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0; received {value!r}.")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; received {value!r}.")
    return bool(value)


def check_host_memory_limit(limit: Any) -> int | None:
    """``host_memory_limit``: None (half the available RAM, decided at placement) or bytes, an int >= 0.

    A whole-number float (``8e9``) is taken as that many bytes. Checked at
    construction whatever the data, so a wrong value is refused even when the
    data is already in RAM and the limit would not be consulted.
    """
    if limit is None:
        return None
    if isinstance(limit, (float, np.floating)) and math.isfinite(limit) and float(limit).is_integer():
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise TypeError(
            f"host_memory_limit must be a number of bytes (an int) or None; received {limit!r}. "
            "Pass e.g. host_memory_limit=8 * 1024**3, or None for half the available RAM."
        )
    if limit < 0:
        raise ValueError(
            f"host_memory_limit must be >= 0 bytes; received {limit}. Pass e.g. host_memory_limit=8 * 1024**3, "
            "0 to keep on-disk inputs on disk, or None for half the available RAM."
        )
    return int(limit)


def check_seed(seed: Any) -> int:
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"seed must be an int in [0, 2**64) or None; received {seed!r}. "
            "Pass e.g. seed=1234 for a reproducible order, or None to draw one."
        )
    return int(seed)


def flatten_parts(x: Any, y: Any, sample_weight: Any) -> tuple[Structure, list[Any], list[str]]:
    if x is None:
        raise ValueError("x is None; pass the input arrays (an array, or a tuple/list/dict of arrays).")
    if sample_weight is not None and y is None:
        raise ValueError("sample_weight was given without y; pass the targets too: Loader(x, y, sample_weight).")
    parts = [x] if y is None else [x, y] if sample_weight is None else [x, y, sample_weight]
    structures, leaves, names = [], [], []
    for name, part in zip(_PARTS, parts):
        structure, part_leaves, part_names = flatten(part, name)
        structures.append(structure)
        part_leaves = [_as_leaf(leaf, leaf_name) for leaf, leaf_name in zip(part_leaves, part_names)]
        leaves.extend(part_leaves)
        names.extend(_describe(leaf, name) for leaf, name in zip(part_leaves, part_names))
    return Structure("tuple", tuple(structures)), leaves, names


def _describe(leaf: Any, name: str) -> str:
    """A leaf's name for messages, with its file(s) when it is on disk."""
    return leaf.describe(name) if isinstance(leaf, Source) else name


def _host_values(leaf: Any) -> np.ndarray:
    """All of a leaf's values as a NumPy array (a view for an array in memory; read for a file)."""
    return leaf.read_range(0, len(leaf)) if isinstance(leaf, Source) else np.asarray(leaf)


def _as_leaf(value: Any, name: str) -> Any:
    """A :class:`Source` of a host input, or a CUDA array kept where it is; refuse what cannot be batched.

    A non-native byte order is accepted: the store converts it once (on-disk
    files: per batch on the disk tier).
    """
    other = other_input_kind(value)
    if other is not None:
        raise TypeError(f"{name} is {other[0]}, not an array: a Loader batches arrays. Fix: {other[1]}.")
    if isinstance(value, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(value))
        raise TypeError(
            f"{name} is a masked array (np.ma, {masked} of {value.size} values masked); the loader batches plain "
            "arrays, so the mask would be dropped. Fill the masked values, e.g. value.filled(0), and if the "
            "model needs the mask, pass it as an input of its own: np.ma.getmaskarray(value)."
        )
    if placement_lib.gpu_runtime().lives_on_cuda(value):
        array = value
        dtype_name = str(getattr(value.dtype, "name", value.dtype)).replace("torch.", "")
        try:
            dtype = np.dtype(dtype_name)
        except TypeError as error:
            raise TypeError(
                f"{name} is a CUDA array of dtype {dtype_name}, which gpuloader cannot hold (CuPy has no such "
                "dtype); cast it to float16 or float32 first."
            ) from error
    else:
        array = open_source(value, name)
        dtype = array.dtype
    problem = dtype_problem(dtype, name, byte_order_ok=True)
    if problem is not None:
        raise TypeError(problem)
    if len(array.shape) == 0:
        raise ValueError(
            f"{name} is a 0-d array (a scalar); every input needs a first dimension of samples. "
            "Reshape it, e.g. np.reshape(value, (-1,))."
        )
    return array


def other_input_kind(value: Any) -> tuple[str, str] | None:
    """``(what value is, the function that reads it)`` for an input kind with a function of its own (a Hugging Face
    or tf.data dataset, a folder), else None. By type names and the file system: imports nothing."""
    kinds = {(cls.__module__.split(".")[0], cls.__name__) for cls in type(value).__mro__}
    if ("datasets", "Dataset") in kinds or ("datasets", "DatasetDict") in kinds:
        return ("a Hugging Face datasets." + type(value).__name__,
                "gpuloader.from_hf_dataset(dataset, x='column', y='column') (of a split: dataset['train'])")
    if ("tensorflow", "DatasetV2") in kinds:
        return "a tf.data.Dataset", "gpuloader.from_tf_dataset(dataset), which reads it once into a cache"
    if isinstance(value, (str, os.PathLike)) and os.path.isdir(value):
        return (f"the folder {os.fspath(value)!r}",
                "for a folder of images with one subfolder per class, gpuloader.image_dataset_from_directory(folder)")
    return None


def check_leaves(leaves: list[Any], names: list[str]) -> int:
    lengths = [int(leaf.shape[0]) for leaf in leaves]
    if len(set(lengths)) > 1:
        listing = ", ".join(f"{name} has {length}" for name, length in zip(names, lengths))
        if len(listing) > 300:
            listing = listing[:300].rsplit(", ", 1)[0] + f", ... ({len(leaves)} arrays)"
        x_parts = [leaf for leaf, name in zip(leaves, names) if name.startswith("x[")]
        hint = ""
        if len(x_parts) > 2 and len({tuple(leaf.shape) for leaf in x_parts}) == 1:
            hint = " If x is a list of samples (one image each), stack it into one array: x = np.stack(images)."
        raise ValueError(
            f"every array must have the same number of samples (first dimension); {listing}. "
            "Trim or fix the arrays so that their first dimensions agree." + hint
        )
    if lengths[0] == 0:
        raise ValueError(f"the data is empty: {names[0]} has 0 samples; give at least one sample.")
    return lengths[0]


def apply_class_weight(
    class_weight: Mapping[int, float], structure: Structure, leaves: list[Any], names: list[str], n: int
) -> tuple[Structure, list[Any], list[str]]:
    """Turn ``class_weight`` into per-sample weights (times any given sample_weight).

    Rules: keys are integer class indices, weights finite numbers >= 0; ``y``
    holds integer labels (whole-number floats are accepted) or one-hot rows.
    """
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise ValueError(f"class_weight must be a non-empty dict {{class_index: weight}}; received {class_weight!r}.")
    table = _check_class_weight_table(class_weight)
    parts = structure.children
    if len(parts) < 2 or parts[1].kind != "leaf":
        raise ValueError("class_weight needs y to be a single array of class labels (integers or one-hot rows).")
    y = _host_values(leaves[parts[0].num_leaves])
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        labels = y.reshape(-1)
    elif y.ndim == 2:
        labels = np.argmax(y, axis=1)
    else:
        raise ValueError(f"class_weight needs y of shape (n,), (n, 1) or one-hot (n, k); received {y.shape}.")
    _check_integer_labels(labels, y.dtype)
    classes = np.unique(labels)
    missing = [int(c) for c in classes if int(c) not in table]
    if missing:
        raise ValueError(
            f"class_weight has no weight for class(es) {missing[:10]} present in y; give one for each class."
        )
    weights = np.array([table[int(c)] for c in classes], dtype=np.float32)[np.searchsorted(classes, labels)]
    if len(parts) == 3:
        if parts[2].kind != "leaf":
            raise ValueError("class_weight with sample_weight needs sample_weight to be a single array.")
        given = np.asarray(_host_values(leaves[-1]), dtype=np.float32)
        weights = given * weights.reshape((n,) + (1,) * (given.ndim - 1))
        return structure, [*leaves[:-1], open_source(weights, names[-1])], names
    leaves = [*leaves, open_source(weights, "class_weight")]
    return Structure("tuple", (*parts, Structure("leaf"))), leaves, [*names, "class_weight"]


def _check_class_weight_table(class_weight: Mapping[Any, Any]) -> dict[int, float]:
    """``{int class: float weight}``, or a ValueError naming the first key or weight that breaks the rule."""
    table: dict[int, float] = {}
    for key, value in class_weight.items():
        whole = isinstance(key, (int, np.integer)) or (
            isinstance(key, (float, np.floating)) and math.isfinite(key) and float(key).is_integer()
        )
        if isinstance(key, bool) or not whole:
            raise ValueError(
                f"class_weight keys must be integer class indices; received the key {key!r}. Map labels to "
                "0, 1, ... first, e.g. names, y = np.unique(labels, return_inverse=True)."
            )
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(
                f"class_weight weights must be numbers; class {key!r} has {value!r}. Pass e.g. {{0: 1.0, 1: 5.0}}."
            )
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"class_weight weights must be finite and >= 0 (they multiply each sample's loss); class {key!r} "
                f"has {value!r}. Give a weight >= 0 to every class (0 ignores a class)."
            )
        table[int(key)] = float(value)
    return table


def _check_integer_labels(labels: np.ndarray, dtype: np.dtype) -> None:
    """Class weights need class labels: integers or bools, or floats that are whole numbers."""
    if dtype.kind in "iub":
        return
    if dtype.kind != "f":
        raise ValueError(
            f"class_weight needs integer class labels; y has dtype {dtype}. Pass integer labels or one-hot rows."
        )
    bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
    if len(bad):
        raise ValueError(
            f"class_weight needs integer class labels; y (dtype {dtype}) holds {labels[bad[0]]:g} at sample "
            f"{int(bad[0])} ({len(bad)} non-integer value(s) in all), which is no class index. Pass integer "
            "labels (y.astype(np.int64) if they are whole numbers) or one-hot rows; for soft or regression "
            "targets, weigh samples with sample_weight instead."
        )


def describe_leaves(leaves: list[Any]) -> list[str]:
    """Each leaf's dtype and shape of one sample, e.g. ``"float32 (784,)"``: what a saved state must match."""
    return [f"{np.dtype(str(getattr(leaf.dtype, 'name', leaf.dtype)).replace('torch.', ''))} {tuple(leaf.shape[1:])}"
            for leaf in leaves]
