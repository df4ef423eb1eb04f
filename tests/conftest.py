"""Shared fixtures: data whose values name their sample, a CPU stand-in for CuPy, child processes.

Tests marked ``first`` run before all others. If one of them finds that handing
batches to TensorFlow aborts a child process (TensorFlow CHECK-fails on an
unaligned buffer instead of raising), the session stops there: the rest of the
suite would hand the same buffers to TensorFlow in this process and die without
naming a test.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from fake_gpu import make_runtime

import gpuloader
from gpuloader import placement

#: The directory holding the gpuloader package under test, and this tests/ directory.
ROOT = Path(inspect.getfile(gpuloader)).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
#: Set in a test's ``user_properties`` when a child process died of a signal (an abort).
ABORTED = "child process aborted"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "first: runs before every other test; if its child process aborts, the session stops there"
    )


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.get_closest_marker("first") is None)  # stable: the rest keep their order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and item.get_closest_marker("first") and (ABORTED, True) in item.user_properties:
        item.session.shouldstop = (
            f"{item.nodeid} failed: a child process handing batches to TensorFlow aborted, and the tests "
            "after it would abort this process the same way without naming a test"
        )
    return report


def run_python(args, timeout=180, **env) -> subprocess.CompletedProcess:
    """Run ``python *args`` in a child importing the same gpuloader (and tests/) as this process."""
    paths = [str(ROOT), str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    child_env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), TF_CPP_MIN_LOG_LEVEL="2", **env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=child_env, cwd=ROOT,
                          timeout=timeout)


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


def prepared(loader, position: int, epoch: int | None = None):
    """Batch ``position`` of ``epoch`` (default: the current one) as ``(structure, leaves)`` where the data lives,
    before the hand-off, through the loader's public pipeline; it never moves the stream."""
    return loader.pipeline.prepare(position, loader.epoch if epoch is None else epoch, loader.shuffle)


def prepared_parts(loader, position: int, epoch: int | None = None):
    """Each replica's part of batch ``position`` of ``epoch``, prepared on its own GPU (a per-GPU layout)."""
    return loader.pipeline.prepare_parts(position, loader.epoch if epoch is None else epoch, loader.shuffle)


def record_gathers(loader, address) -> list[tuple[int, ...]]:
    """Wrap the loader's gather: ``address(leaf)`` of every batch's buffers, in the order made.

    The gathered arrays are kept alive, so no later batch can reuse their memory.
    """
    store = loader.pipeline.store
    gather_rows = store.fused_gather
    made: list[tuple[int, ...]] = []
    keep = []

    def recording(rows):
        leaves = gather_rows(rows)
        keep.append(leaves)
        made.append(tuple(address(leaf) for leaf in leaves))
        return leaves

    store.fused_gather = recording
    return made
