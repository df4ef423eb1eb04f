"""Synthetic stand-ins for MNIST and CIFAR-10, generated in-process (no downloads).

The contents are random but deterministic (``np.random.default_rng(0)``); only
the shapes, dtypes and sizes matter to a loader benchmark:

- ``mnist``: 60000 x 784 float32 images, int32 labels in [0, 10).
- ``cifar``: 50000 x 32 x 32 x 3 uint8 images, int32 labels in [0, 10).

Cost: about 0.5 s and 190 MB (mnist) or 155 MB (cifar) of RAM per call.
"""

from __future__ import annotations

from dataclasses import dataclass

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
