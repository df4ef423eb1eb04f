"""Shared fixtures: data whose values name their sample, and a CPU stand-in for CuPy."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from fake_gpu import make_runtime

from gpuloader import placement


def sample_ids(batch_part) -> list[int]:
    """The sample ids in a batch part built by :func:`id_data` (column 0 holds the id)."""
    values = np.asarray(batch_part)
    return values.reshape(values.shape[0], -1)[:, 0].astype(np.int64).tolist()


def id_data(n: int, features: int = 3, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """x whose row i is filled with i, and y = i; so every batch tells which samples it holds."""
    x = np.repeat(np.arange(n, dtype=dtype)[:, None], features, axis=1)
    y = np.arange(n, dtype=np.int64)
    return x, y


def epoch_ids(loader) -> list[int]:
    """All sample ids served by ``loader`` in its current epoch, in order."""
    ids: list[int] = []
    for i in range(len(loader)):
        ids.extend(sample_ids(loader[i][0]))
    return ids


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make gpuloader believe a GPU exists, backed by array_api_strict (see tests/fake_gpu.py)."""
    runtime = make_runtime()
    monkeypatch.setattr(placement, "gpu_runtime", lambda: runtime)
    return runtime
