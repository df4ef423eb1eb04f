"""Shared fixtures: data whose values name their sample, and a CPU stand-in for CuPy."""

from __future__ import annotations

import os
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from gpuloader import _cuda, placement


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


class FakeGpuRuntime(types.SimpleNamespace):
    """Stands in for gpuloader._cuda with array_api_strict as the GPU's namespace.

    It runs the whole device path on the CPU: placement's memory rule, the
    chunked upload, the permutation, gather and transform in a strict array-API
    namespace (which refuses anything CuPy lacks), the stream sync before
    hand-off, and an injected out-of-memory failure.
    """


class FakeOutOfMemoryError(MemoryError):
    """What the stand-in raises where CuPy would raise OutOfMemoryError."""


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make gpuloader believe a GPU exists, backed by array_api_strict."""
    import array_api_strict as xps

    state = types.SimpleNamespace(
        free_bytes=1 << 30, uploads=[], syncs=0, fail_after_uploads=None, freed=0, fused_gathers=0,
        usable=True,
    )

    def probe():
        if not state.usable:
            return _cuda.DeviceStatus(False, "no CUDA device is visible")
        return _cuda.DeviceStatus(True, "usable", state.free_bytes, 2 * state.free_bytes, "FakeGPU")

    def upload_rows(target, start, host_rows, staging):
        if state.fail_after_uploads is not None and len(state.uploads) >= state.fail_after_uploads:
            raise FakeOutOfMemoryError("out of memory allocating 1 bytes")
        target[start : start + host_rows.shape[0], ...] = xps.asarray(host_rows)
        state.uploads.append(host_rows.shape[0])

    def synchronize():
        state.syncs += 1

    def free_cached_memory():
        state.freed += 1

    def row_gather(leaves):
        """The fused kernel's contract in array-API terms: fresh arrays of every leaf's rows."""

        def gather(rows):
            state.fused_gathers += 1
            if isinstance(rows, slice):
                return [xps.asarray(leaf[rows, ...], copy=True) for leaf in leaves]
            return [xps.take(leaf, rows, axis=0) for leaf in leaves]

        return gather

    runtime = FakeGpuRuntime(
        probe=probe,
        namespace=lambda: xps,
        upload_rows=upload_rows,
        pinned_staging=lambda nbytes: np.empty(nbytes, np.uint8),
        synchronize=synchronize,
        free_cached_memory=free_cached_memory,
        out_of_memory_errors=lambda: (FakeOutOfMemoryError,),
        lives_on_cuda=lambda array: False,
        aligned_contiguous=lambda array: array,
        adopt=lambda array: array,
        row_gather=row_gather,
        state=state,
    )
    monkeypatch.setattr(placement, "gpu_runtime", lambda: runtime)
    return runtime
