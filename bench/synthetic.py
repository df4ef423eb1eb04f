"""Synthetic stand-ins for MNIST and CIFAR-10, generated in-process (no downloads).

The contents are random but deterministic (``np.random.default_rng(0)``); only
the shapes, dtypes and sizes matter to a loader benchmark:

- ``mnist``: 60000 x 784 float32 images, int32 labels in [0, 10).
- ``cifar``: 50000 x 32 x 32 x 3 uint8 images, int32 labels in [0, 10).

Cost: about 0.5 s and 190 MB (mnist) or 155 MB (cifar) of RAM per call.

The disk mode's data is a pair of ``.npy`` files instead (:func:`write_npy`):
``x`` float32 rows of 3072 values (a CIFAR image as floats, 12 KiB a row) and
int32 labels, written in chunks so that RAM stays low whatever the size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BATCH_SIZE = 256
NUM_CLASSES = 10


@dataclass(frozen=True)
class Spec:
    """Shape of one sample, its dtype and the full row count of a dataset."""

    sample_shape: tuple[int, ...]
    dtype: str
    rows: int


SPECS: dict[str, Spec] = {
    "mnist": Spec((784,), "float32", 60000),
    "cifar": Spec((32, 32, 3), "uint8", 50000),
}


def make(name: str, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` of dataset ``name``, with ``rows`` samples (default: the full size).

    Args:
        name: "mnist" or "cifar".
        rows: number of samples; None for the dataset's real size.

    Returns:
        C-contiguous ``x`` of ``(rows, *sample_shape)`` and int32 ``y`` of ``(rows,)``.
    """
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(SPECS)}")
    spec = SPECS[name]
    n = spec.rows if rows is None else rows
    rng = np.random.default_rng(0)
    shape = (n, *spec.sample_shape)
    if spec.dtype == "float32":
        x = rng.random(shape, dtype=np.float32)
    else:
        x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, size=n, dtype=np.int32)
    return x, y


DISK_SAMPLE_SHAPE = (3072,)
DISK_DTYPE = "float32"
DISK_FILES = ("x.npy", "y.npy")


def disk_nbytes(rows: int) -> int:
    """Bytes of the two ``.npy`` files :func:`write_npy` writes for ``rows`` samples (headers aside)."""
    row = int(np.prod(DISK_SAMPLE_SHAPE)) * np.dtype(DISK_DTYPE).itemsize + np.dtype(np.int32).itemsize
    return rows * row


def write_npy(directory: Path, rows: int, chunk_rows: int = 8192) -> tuple[Path, Path]:
    """Write ``x.npy`` (``rows`` x 3072 float32) and ``y.npy`` (int32 labels) into ``directory``.

    Deterministic contents (chunk ``k`` from ``default_rng(k)``), written through
    ``np.lib.format.open_memmap`` ``chunk_rows`` at a time and fsync'ed, so the
    pages are clean (evictable) and RAM stays at about one chunk (100 MB).
    Files already there with the right shape and dtype are reused.

    Returns:
        The paths of ``x.npy`` and ``y.npy``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    x_path, y_path = (directory / name for name in DISK_FILES)
    x_shape = (rows, *DISK_SAMPLE_SHAPE)
    if npy_matches(x_path, x_shape, DISK_DTYPE) and npy_matches(y_path, (rows,), "int32"):
        return x_path, y_path
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=DISK_DTYPE, shape=x_shape)
    y = np.lib.format.open_memmap(y_path, mode="w+", dtype=np.int32, shape=(rows,))
    for chunk, start in enumerate(range(0, rows, chunk_rows)):
        stop = min(start + chunk_rows, rows)
        rng = np.random.default_rng(chunk)
        x[start:stop] = rng.random((stop - start, *DISK_SAMPLE_SHAPE), dtype=np.float32)
        y[start:stop] = rng.integers(0, NUM_CLASSES, size=stop - start, dtype=np.int32)
        x.flush()  # keep dirty pages (which cannot be evicted) bounded
    y.flush()
    del x, y
    for path in (x_path, y_path):
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    return x_path, y_path


def npy_matches(path: Path, shape: tuple[int, ...], dtype: str) -> bool:
    """Whether ``path`` is a readable ``.npy`` of this shape and dtype (it is mapped, not read)."""
    if not path.exists():
        return False
    try:
        mapped = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return mapped.shape == shape and mapped.dtype == np.dtype(dtype)
