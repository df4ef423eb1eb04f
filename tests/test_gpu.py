"""The GPU path on a real CUDA device: what the device store promises, as tests.

Run where CuPy and a CUDA GPU exist (``make gpu-check`` on the lent machine runs
``pytest -m gpu`` with ``KERAS_BACKEND=jax``, then the Keras fit test again with
``KERAS_BACKEND=torch``). Where CuPy sees no CUDA device (asked directly, not
through ``gpuloader._cuda``, the code under test) each test is skipped with the
reason; where it sees one, or ``GPULOADER_EXPECT_GPU=1`` (set by
bench/gpu_check.sh when it found a device), a test that cannot run fails
instead. Tests that build a ``Loader`` also need Keras (with a backend that
imports): skipped without it, failed under ``GPULOADER_EXPECT_GPU=1``; an error
importing gpuloader's loader is always an error. Tests of a hand-off need torch
or JAX on the GPU.

The unmarked tests at the end check bench/gpu_check.sh itself on the CPU, with
a stand-in ``python``: it fails when no GPU test passed.

The contract, one test (or group) each:

- every sample exactly once per epoch, on the device;
- the upload is exact: many chunks through one pinned staging buffer, from
  arrays and memory maps, every numeric dtype;
- the device order is bit-identical to the host order, for the permutation and
  for whole batches;
- the hand-off to torch and JAX is zero-copy (same data pointer), through the
  loader's iterators and ``loader[i]`` too: what the consumer gets is the gathered buffer;
- every gathered buffer is C-contiguous and 256-byte aligned (the README's promise);
  a transform's view is re-aligned before the hand-off;
- a batch read right after its hand-off, while the next ones are being prepared
  on other threads, holds exactly the expected rows (stream correctness), and
  stays intact after later batches are made (a fresh buffer per batch);
- out of memory: a budget too small falls back to RAM under "auto" with the
  numbers, raises under "gpu"; an allocation failing mid-upload does the same
  and leaves CuPy's pool where it was;
- no device memory growth over 50 epochs;
- arrays already on the GPU (CuPy, torch) are adopted in place, no host trip;
- ``transform`` runs on the device: uint8 stored, float32 served;
- augmentation ops give the host's bytes on the device (odd sizes, uint8/float16/float32), through the
  fused kernel (H, W, C each of 1, 3, 5, 7) and op by op;
- Keras ``fit`` converges on the backend in ``KERAS_BACKEND`` fed from the GPU.

Data is small: the whole file runs in about a minute on an H100.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import math
import os
import subprocess
import sys
from dataclasses import replace as dataclasses_replace
from pathlib import Path

# JAX takes 75% of the GPU at first use unless told otherwise; CuPy and torch
# share the device with it here. Must be set before JAX initialises.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np
import pytest
from conftest import record_gathers as shared_record_gathers

import gpuloader
from gpuloader import GPUUnavailableError, _cuda
from gpuloader.handoff import hand_off
from gpuloader.placement import format_bytes, plan

SEED = 20240611
#: Each gathered array starts on 256 bytes (``_cuda.RowGather``, the README).
ALIGNMENT = 256
#: What the pipeline guarantees for a transform's output (``_cuda.aligned_contiguous``): TensorFlow's need.
TRANSFORM_ALIGNMENT = 64
#: bench/gpu_check.sh sets this when CuPy sees a CUDA device: then no GPU test may skip for want of one.
EXPECT_GPU = os.environ.get("GPULOADER_EXPECT_GPU") == "1"
#: Pool bytes a long run may differ by without counting as growth. A leak of one
#: batch, or of one epoch's order, per epoch over 45 epochs is several times more.
GROWTH_SLACK_BYTES = 256 * 1024


# ---------------------------------------------------------------- fixtures
@functools.cache
def device_status() -> _cuda.DeviceStatus:
    """CuPy and the CUDA device, probed once per session (never raises)."""
    return _cuda.probe()


@functools.cache
def cupy_device_count() -> tuple[int, str]:
    """CUDA devices CuPy sees, asked directly: the skip must not rest on ``_cuda.probe``, the code under test."""
    try:
        import cupy
    except ImportError as error:
        return 0, f"CuPy does not import ({error})"
    try:
        return int(cupy.cuda.runtime.getDeviceCount()), "CuPy's device count"
    except Exception as error:  # no driver
        return 0, f"CuPy cannot count CUDA devices ({type(error).__name__}: {error})"


@pytest.fixture(autouse=True)
def _needs_a_cuda_device(request) -> None:
    if request.node.get_closest_marker("gpu") is None:
        return  # the CPU tests of bench/gpu_check.sh
    count, how = cupy_device_count()
    status = device_status()
    if count > 0 or EXPECT_GPU:
        if not status.usable:
            pytest.fail(f"CuPy sees {count} CUDA device(s) ({how}), but gpuloader's probe says: {status.reason}")
        return
    pytest.skip(f"needs CuPy and a CUDA device: {how}; gpuloader's probe: {status.reason}")


@pytest.fixture
def cp():
    """The CuPy module, with the device idle and unreferenced arrays collected."""
    cupy = _cuda.import_cupy()
    cupy.cuda.Device().synchronize()
    gc.collect()
    return cupy


@pytest.fixture
def pool(cp):
    return cp.get_default_memory_pool()


@pytest.fixture
def make_loader():
    """``make_loader(x, y, ..., device=...)``: a Loader with this file's defaults.

    Skips when Keras (which ``Loader`` subclasses) does not import, e.g. no
    backend: set ``KERAS_BACKEND=jax`` or ``torch`` where TensorFlow is absent.
    Under bench/gpu_check.sh (``GPULOADER_EXPECT_GPU=1``) that fails instead;
    an error importing gpuloader's loader once Keras imports is never a skip.
    """
    try:
        import keras  # noqa: F401
    except ImportError as error:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow (default)")
        message = f"needs Keras with backend {backend}: {type(error).__name__}: {error}"
        if EXPECT_GPU:
            pytest.fail(message)
        pytest.skip(message)
    from gpuloader.loader import Loader

    def make(*arrays, **kwargs):
        kwargs.setdefault("seed", SEED)
        kwargs.setdefault("verbose", False)
        kwargs.setdefault("batch_size", 32)
        return Loader(*arrays, **kwargs)

    return make


@pytest.fixture
def torch():
    module = pytest.importorskip("torch")
    if not module.cuda.is_available():
        pytest.skip("needs torch with CUDA: torch.cuda.is_available() is False")
    return module


@pytest.fixture
def jax():
    module = pytest.importorskip("jax")
    pytest.importorskip("jax.dlpack")
    try:
        module.devices("gpu")
    except RuntimeError as error:
        pytest.skip(f"needs JAX with a GPU backend: {error}")
    return module


# ---------------------------------------------------------------- helpers
def id_rows(n: int, features: int = 3, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """x whose row i is filled with i, and y = i: every batch tells which samples it holds."""
    x = np.repeat(np.arange(n, dtype=dtype)[:, None], features, axis=1)
    return x, np.arange(n, dtype=np.int64)


def host(array) -> np.ndarray:
    """A NumPy copy of a CuPy array (NumPy arrays pass through)."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def host_copy(tensor) -> np.ndarray:
    """A host copy of a torch tensor or JAX array."""
    return tensor.cpu().numpy() if hasattr(tensor, "cpu") else np.asarray(tensor)


def expected_rows(n: int, batch_size: int, epoch: int, index: int) -> np.ndarray:
    """The sample indices of batch ``index``, computed on the host."""
    order = gpuloader.permutation(np, n, SEED, epoch)
    return order[index * batch_size : (index + 1) * batch_size]


def run_epoch(loader, epoch: int) -> None:
    """Gather every batch of ``epoch`` on the device and drop it."""
    loader.set_epoch(epoch)
    for i in range(len(loader)):
        _, leaves = loader._prepare(i)
        del leaves


def record_gathers(loader) -> list[tuple[int, ...]]:
    """The buffer addresses of every batch the loader's gather makes (see conftest.record_gathers)."""
    return shared_record_gathers(loader, lambda leaf: leaf.data.ptr)


def settled_used_bytes(cp, pool) -> int:
    """Bytes CuPy's pool has handed out, once the device is idle and garbage collected."""
    cp.cuda.Device().synchronize()
    gc.collect()
    return pool.used_bytes()


# ------------------------------------------------ exactly once, same order
@pytest.mark.gpu
def test_every_sample_once_per_epoch_on_the_device(cp, make_loader):
    n, batch_size = 1000, 64  # 15 full batches and one of 40
    x, y = id_rows(n)
    loader = make_loader(x, y, batch_size=batch_size, device="gpu")
    assert loader.placement == "gpu", loader.plan
    assert loader.xp is cp

    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        served = []
        for i in range(len(loader)):
            _, (bx, by) = loader._prepare(i)
            assert isinstance(bx, cp.ndarray) and isinstance(by, cp.ndarray)
            assert bx.shape == (min(batch_size, n - i * batch_size), 3)
            ids = host(by)
            np.testing.assert_array_equal(host(bx), np.repeat(ids[:, None], 3, axis=1).astype(np.float32))
            served.extend(ids.tolist())
        assert sorted(served) == list(range(n)), f"epoch {epoch} did not serve every sample exactly once"
        np.testing.assert_array_equal(served, gpuloader.permutation(np, n, SEED, epoch))
        orders.append(served)
    assert orders[0] != orders[1] != orders[2], "each epoch must have its own order"


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("n", "seed", "epoch"),
    [
        (1, 0, 0),
        (2, 1, 0),
        (7, 42, 3),
        (1000, 2**64 - 1, 0),
        (1000, 2**64 - 1, 1),
        (4097, 123, 7),
        (60000, 1234, 0),
        (60000, 1234, 1),
    ],
)
def test_permutation_is_bit_identical_on_host_and_device(cp, n, seed, epoch):
    on_host = gpuloader.permutation(np, n, seed, epoch)
    on_device = gpuloader.permutation(cp, n, seed, epoch)
    assert isinstance(on_device, cp.ndarray)
    assert on_device.dtype == np.int64 and on_host.dtype == np.int64
    np.testing.assert_array_equal(host(on_device), on_host)
    np.testing.assert_array_equal(np.sort(on_host), np.arange(n))


@pytest.mark.gpu
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
def test_device_batches_equal_host_batches(cp, make_loader, shuffle):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 5), dtype=np.float32)
    y = rng.integers(0, 10, 500).astype(np.int64)
    on_gpu = make_loader(x, y, batch_size=48, shuffle=shuffle, device="gpu")
    on_host = make_loader(x, y, batch_size=48, shuffle=shuffle, device="host")
    assert (on_gpu.placement, on_host.placement) == ("gpu", "host")
    assert len(on_gpu) == len(on_host) == 11

    for epoch in (0, 1):
        on_gpu.set_epoch(epoch)
        on_host.set_epoch(epoch)
        for i in range(len(on_gpu)):
            _, device_leaves = on_gpu._prepare(i)
            _, host_leaves = on_host._prepare(i)
            assert len(device_leaves) == len(host_leaves) == 2
            for got, want in zip(device_leaves, host_leaves):
                assert isinstance(got, cp.ndarray) and isinstance(want, np.ndarray)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(host(got), want)


# ------------------------------------------------------------------ upload
@pytest.mark.gpu
@pytest.mark.parametrize("source", ["array", "memmap"])
def test_a_chunked_upload_is_exact(cp, make_loader, monkeypatch, tmp_path, source):
    """Many small chunks through the one pinned staging buffer: every byte arrives.

    Each chunk is copied into the staging buffer, then to the device. CuPy's
    ``ndarray.set`` only queues that copy on the current stream, so the staging
    buffer may be refilled only once the copy has run. Here the stream is kept
    busy first, so every copy is still queued when the next chunk is staged: an
    upload that does not wait would leave the device holding the wrong rows.
    """
    from gpuloader import store

    monkeypatch.setattr(store, "DEFAULT_CHUNK_BYTES", 256 * 1024)
    real_upload_rows = _cuda.upload_rows
    starts = []

    def upload_rows_behind_queued_work(target, start, host_rows, staging):
        if not starts:
            queue_device_work(cp)
        starts.append(start)
        return real_upload_rows(target, start, host_rows, staging)

    monkeypatch.setattr(_cuda, "upload_rows", upload_rows_behind_queued_work)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8192, 512), dtype=np.float32)  # 16 MB: 64 chunks of 128 rows
    y = rng.integers(0, 2**31 - 1, 8192).astype(np.int64)  # 64 KB: one chunk, staged after x's last
    if source == "memmap":
        np.save(tmp_path / "x.npy", x)
        x_input = np.load(tmp_path / "x.npy", mmap_mode="r")
    else:
        x_input = x
    loader = make_loader(x_input, y, batch_size=1024, device="gpu")
    assert loader.placement == "gpu", loader.plan
    assert len(starts) == 64 + 1, "the upload was expected in 64 chunks of x and one of y"
    stored_x, stored_y = loader._store.leaves
    np.testing.assert_array_equal(host(stored_x), x)
    np.testing.assert_array_equal(host(stored_y), y)


def queue_device_work(cp, launches: int = 400) -> None:
    """Queue some 15 ms of work on the current stream (64 MB read and written per launch)."""
    busy = cp.zeros((4096, 4096), dtype=cp.float32)
    for _ in range(launches):
        busy += 1


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype", [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64]
)
def test_every_numeric_dtype_uploads_and_gathers(cp, make_loader, dtype):
    rng = np.random.default_rng(6)
    x = (rng.integers(0, 100, (300, 4)) % (2 if dtype is np.bool_ else 100)).astype(dtype)
    loader = make_loader(x, batch_size=64, device="gpu")
    assert loader._store.leaves[0].dtype == np.dtype(dtype)
    _, (bx,) = loader._prepare(1)
    assert bx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(host(bx), x[expected_rows(300, 64, 0, 1)])


@pytest.mark.gpu
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
def test_one_fused_gather_serves_leaves_of_every_row_width(cp, make_loader, shuffle):
    """Rows of 1 to 48 bytes (kernel units of 1, 2, 4, 8 and 16 bytes) in one batch, one launch."""
    n = 517  # a partial last batch
    rng = np.random.default_rng(9)
    leaves = [
        rng.integers(0, 255, (n, 1)).astype(np.uint8),  # 1-byte rows
        rng.integers(0, 255, (n, 3)).astype(np.uint8),  # 3 bytes: unit 1
        rng.random((n, 3)).astype(np.float16),  # 6 bytes: unit 2
        rng.random((n, 3)).astype(np.float32),  # 12 bytes: unit 4
        rng.integers(0, 1 << 40, (n, 3)),  # 24 bytes of int64: unit 8
        rng.random((n, 2, 2, 3)).astype(np.float32),  # 48 bytes: unit 16
    ]
    loader = make_loader(tuple(leaves[:-1]), leaves[-1], batch_size=64, shuffle=shuffle, device="gpu")
    assert isinstance(loader._store.fused_gather, _cuda.RowGather)
    for index in (0, 3, len(loader) - 1):
        _, gathered = loader._prepare(index)
        rows = expected_rows(n, 64, 0, index) if shuffle else np.arange(index * 64, min(index * 64 + 64, n))
        assert len(gathered) == len(leaves)
        for got, source in zip(gathered, leaves):
            assert got.flags.c_contiguous and got.data.ptr % ALIGNMENT == 0, f"{got.data.ptr:#x} not on 256 bytes"
            np.testing.assert_array_equal(host(got), source[rows])


@pytest.mark.gpu
def test_a_strided_device_array_is_made_contiguous_on_the_device(cp, make_loader, monkeypatch):
    x, _ = id_rows(300, features=8)
    strided = cp.asarray(x)[:, ::2]  # a view with a column stride

    def no_host_trip(*args, **kwargs):
        raise AssertionError("an array already on the GPU went through host memory")

    monkeypatch.setattr(_cuda, "upload_rows", no_host_trip)
    loader = make_loader(strided, batch_size=50, device="gpu")
    assert loader._store.leaves[0].flags.c_contiguous
    _, (bx,) = loader._prepare(2)
    np.testing.assert_array_equal(host(bx), x[:, ::2][expected_rows(300, 50, 0, 2)])


# ------------------------------------------------------ zero-copy hand-off
@pytest.mark.gpu
def test_torch_handoff_is_zero_copy(cp, torch, make_loader):
    x, y = id_rows(256, features=7)
    loader = make_loader(x, y, batch_size=64, device="gpu")
    _, leaves = loader._prepare(1)
    for leaf in leaves:
        for tensor in (torch.from_dlpack(leaf), hand_off(leaf, "torch")):
            assert tensor.is_cuda
            assert tensor.data_ptr() == leaf.data.ptr, "torch got a copy, not the gathered buffer"
            assert tuple(tensor.shape) == leaf.shape

    made = record_gathers(loader)
    held = list(loader.get_torch_dataloader())  # through the adapter, as Keras's torch trainer reads it
    assert all(part.is_cuda for batch in held for part in batch)
    assert [tuple(part.data_ptr() for part in batch) for batch in held] == made, (
        "get_torch_dataloader handed torch copies, not the gathered buffers"
    )
    assert len(made) == len(loader)


@pytest.mark.gpu
def test_jax_handoff_is_zero_copy(cp, jax, make_loader):
    x, y = id_rows(256, features=7)
    y = y.astype(np.float32)  # JAX runs without x64 by default: keep 32-bit leaves
    loader = make_loader(x, y, batch_size=64, device="gpu")
    _, leaves = loader._prepare(1)
    for leaf in leaves:
        for array in (jax.dlpack.from_dlpack(leaf), hand_off(leaf, "jax")):
            assert {device.platform for device in array.devices()} == {"gpu"}
            assert array.unsafe_buffer_pointer() == leaf.data.ptr, "JAX got a copy, not the gathered buffer"
            assert array.shape == leaf.shape

    made = record_gathers(loader)
    held = list(loader.get_jax_iterator())  # through the adapter, as Keras's JAX trainer reads it
    assert all({device.platform for device in part.devices()} == {"gpu"} for batch in held for part in batch)
    assert [tuple(part.unsafe_buffer_pointer() for part in batch) for batch in held] == made, (
        "get_jax_iterator handed JAX copies, not the gathered buffers"
    )
    assert len(made) == len(loader)


@pytest.mark.gpu
def test_loader_items_are_the_gathered_buffers(cp, make_loader):
    """``loader[i]`` on the backend in KERAS_BACKEND: the consumer's tensor is the gathered buffer itself."""
    import keras

    backend = keras.backend.backend()
    pointer = {"jax": lambda a: a.unsafe_buffer_pointer(), "torch": lambda t: t.data_ptr()}.get(backend)
    if pointer is None:
        pytest.skip(f"reads device pointers of JAX and torch; KERAS_BACKEND is {backend}")
    x, y = id_rows(256, features=7)
    y = y.astype(np.float32)
    loader = make_loader(x, y, batch_size=64, device="gpu")
    made = record_gathers(loader)
    held = [loader[i] for i in range(len(loader))]
    assert [tuple(pointer(part) for part in batch) for batch in held] == made, "loader[i] handed over a copy"


# ---------------------------------------------------------------- alignment
@pytest.mark.gpu
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
def test_gathered_buffers_are_aligned_and_contiguous(cp, make_loader, shuffle):
    n = 301  # odd row sizes and an odd batch size: nothing lands aligned by luck
    rng = np.random.default_rng(1)
    x = {
        "pixels": rng.integers(0, 255, (n, 5, 3), dtype=np.uint8),
        "dense": rng.standard_normal((n, 13), dtype=np.float32),
    }
    y = rng.integers(0, 3, n).astype(np.int16)
    weights = rng.random(n)  # float64
    loader = make_loader(x, y, weights, batch_size=37, shuffle=shuffle, device="gpu")
    for i in range(len(loader)):
        _, leaves = loader._prepare(i)
        assert len(leaves) == 4
        for leaf in leaves:
            assert isinstance(leaf, cp.ndarray)
            assert leaf.flags.c_contiguous, f"batch {i}: a leaf of shape {leaf.shape} is not C-contiguous"
            assert leaf.data.ptr % ALIGNMENT == 0, f"batch {i}: {leaf.data.ptr:#x} is not 256-byte aligned"


# ------------------------------------------------------ stream correctness
@pytest.mark.gpu
@pytest.mark.parametrize("consumer", ["torch", "jax"])
def test_batches_read_right_after_handoff_hold_the_expected_rows(cp, make_loader, request, consumer):
    """Two worker threads gather ahead while the consumer reads each batch at once.

    Each batch is compared on the consumer's own stream (torch.equal /
    jnp.array_equal on the GPU) and on the host, the moment it is handed over,
    then once more after the whole epoch: a later batch must never overwrite
    one the consumer still holds.
    """
    framework = request.getfixturevalue(consumer)
    n, features, batch_size = 16384, 512, 1024  # 32 MB of data, 2 MB per batch
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, features), dtype=np.float32)
    y = np.arange(n, dtype=np.float32)
    loader = make_loader(x, y, batch_size=batch_size, device="gpu", workers=2, max_queue_size=4)

    if consumer == "torch":
        iterate = loader.get_torch_dataloader

        def equal_on_device(tensor, expected):
            return bool(framework.equal(tensor, framework.as_tensor(expected, device=tensor.device)))

    else:
        import jax.numpy as jnp

        iterate = loader.get_jax_iterator

        def equal_on_device(array, expected):
            return bool(jnp.array_equal(array, jnp.asarray(expected)))

    for epoch in range(2):
        assert loader.epoch == epoch
        held = []
        for i, (batch_x, batch_y) in enumerate(iterate()):
            rows = expected_rows(n, batch_size, epoch, i)
            assert equal_on_device(batch_x, x[rows]), f"epoch {epoch} batch {i}: wrong rows on the device"
            np.testing.assert_array_equal(np.asarray(batch_y.tolist()), rows.astype(np.float32))
            np.testing.assert_array_equal(np.asarray(host_copy(batch_x)), x[rows])
            held.append((rows, batch_x))
        assert len(held) == math.ceil(n / batch_size)
        for i, (rows, batch_x) in enumerate(held):
            np.testing.assert_array_equal(
                np.asarray(host_copy(batch_x)), x[rows], err_msg=f"batch {i} changed after later batches"
            )
        loader.on_epoch_end()


# ------------------------------------------------------------ out of memory
@pytest.mark.gpu
def test_the_memory_rule_in_numbers(cp):
    assert plan("gpu", 1024, 0.5).placement == "gpu"
    too_big = 10**15  # 1 PB: fits no GPU
    fallback = plan("auto", too_big, 1.0)
    assert fallback.placement == "host"
    assert fallback.bytes_free is not None and 0 < fallback.bytes_free
    assert fallback.bytes_free <= device_status().total_bytes
    assert format_bytes(too_big) in fallback.reason
    with pytest.raises(GPUUnavailableError, match="does not fit"):
        plan("gpu", too_big, 1.0)


@pytest.mark.gpu
def test_a_budget_too_small_falls_back_to_ram_under_auto(cp, make_loader):
    x, y = id_rows(1000, features=10)
    loader = make_loader(x, y, device="auto", gpu_memory_fraction=1e-9)
    assert loader.placement == "host"
    assert loader.xp is np
    reason = str(loader.plan)
    assert "does not fit" in reason
    assert format_bytes(loader.plan.bytes_needed) in reason, reason
    assert "free" in reason and "budget" in reason, reason
    assert loader.plan.bytes_free is not None and loader.plan.bytes_free > 0
    _, (bx, _) = loader._prepare(0)
    assert isinstance(bx, np.ndarray)


@pytest.mark.gpu
def test_a_budget_too_small_raises_under_gpu(cp, make_loader):
    x, y = id_rows(1000, features=10)
    with pytest.raises(GPUUnavailableError, match="does not fit") as caught:
        make_loader(x, y, device="gpu", gpu_memory_fraction=1e-9)
    assert "needs" in str(caught.value) and "free" in str(caught.value)


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["auto", "gpu"])
def test_out_of_memory_during_upload(cp, pool, make_loader, monkeypatch, device):
    """x uploads, then y's copy runs out of memory: nothing uploaded may stay behind."""
    x, y = id_rows(4096, features=64)  # 1 MB: one chunk each, so one upload call per leaf
    real_upload_rows = _cuda.upload_rows
    calls = []

    def upload_rows_then_out_of_memory(target, start, host_rows, staging):
        calls.append(host_rows.nbytes)
        if len(calls) == 1:
            return real_upload_rows(target, start, host_rows, staging)
        del target  # the traceback must not be what keeps the device array alive
        raise cp.cuda.memory.OutOfMemoryError(host_rows.nbytes, device_status().total_bytes)

    monkeypatch.setattr(_cuda, "upload_rows", upload_rows_then_out_of_memory)
    used_before = settled_used_bytes(cp, pool)
    total_before = pool.total_bytes()

    if device == "auto":
        with pytest.warns(RuntimeWarning, match="out of memory"):
            loader = make_loader(x, y, device="auto")
        assert loader.placement == "host"
        assert "ran out of memory" in str(loader.plan)
        _, (bx, by) = loader._prepare(0)
        assert isinstance(bx, np.ndarray)
        np.testing.assert_array_equal(bx[:, 0], by.astype(np.float32))
    else:
        with pytest.raises(GPUUnavailableError, match="ran out of GPU memory") as caught:
            make_loader(x, y, device="gpu")
        assert isinstance(caught.value.__cause__, cp.cuda.memory.OutOfMemoryError)
        del caught

    assert len(calls) == 2, "the failure was injected in y's upload, after x's"
    assert settled_used_bytes(cp, pool) == used_before, "a failed upload left device memory in use"
    assert pool.total_bytes() <= total_before, "a failed upload left cached blocks in the pool"


@pytest.mark.gpu
@pytest.mark.parametrize("consumer", ["prepare", "torch"])
def test_no_device_memory_growth_over_50_epochs(cp, pool, make_loader, request, consumer):
    n, batch_size = 4096, 100  # 1 MB of x; 41 batches, the last one partial
    x, _ = id_rows(n, features=64)
    y = np.arange(n, dtype=np.int32)
    loader = make_loader(x, y, batch_size=batch_size, device="gpu")

    if consumer == "torch":
        request.getfixturevalue("torch")

        def one_epoch(epoch):
            loader.set_epoch(epoch)
            for batch_x, _ in loader.get_torch_dataloader():
                assert batch_x.is_cuda  # the tensor owns the batch until it is dropped here
    else:

        def one_epoch(epoch):
            run_epoch(loader, epoch)

    for epoch in range(5):
        one_epoch(epoch)
    after_5 = settled_used_bytes(cp, pool)
    for epoch in range(5, 50):
        one_epoch(epoch)
    after_50 = settled_used_bytes(cp, pool)
    assert after_50 <= after_5 + GROWTH_SLACK_BYTES, (
        f"device memory grew by {after_50 - after_5} bytes between epoch 5 and epoch 50"
    )


# ------------------------------------------------- arrays already on the GPU
@pytest.mark.gpu
def test_a_cupy_array_is_adopted_in_place(cp, make_loader, monkeypatch):
    x, y = id_rows(640, features=4)
    x_on_device = cp.asarray(x)
    real_upload_rows = _cuda.upload_rows
    uploaded = []

    def recording_upload_rows(target, start, host_rows, staging):
        uploaded.append(host_rows.shape)
        return real_upload_rows(target, start, host_rows, staging)

    monkeypatch.setattr(_cuda, "upload_rows", recording_upload_rows)
    loader = make_loader(x_on_device, y, batch_size=64, device="gpu")
    stored_x, stored_y = loader._store.leaves
    assert stored_x.data.ptr == x_on_device.data.ptr, "x was copied instead of adopted"
    assert uploaded == [y.shape], "only the host array y may travel through the host"
    assert isinstance(stored_y, cp.ndarray)

    _, (bx, by) = loader._prepare(3)
    rows = expected_rows(640, 64, 0, 3)
    np.testing.assert_array_equal(host(bx), x[rows])
    np.testing.assert_array_equal(host(by), y[rows])


@pytest.mark.gpu
def test_a_torch_cuda_tensor_is_adopted_in_place(cp, torch, make_loader, monkeypatch):
    x, y = id_rows(640, features=4)
    x_on_device = torch.from_numpy(x).cuda()
    y_on_device = torch.from_numpy(y).cuda()

    def no_host_trip(*args, **kwargs):
        raise AssertionError("a tensor already on the GPU went through host memory")

    monkeypatch.setattr(_cuda, "upload_rows", no_host_trip)
    monkeypatch.setattr(_cuda, "pinned_staging", no_host_trip)
    loader = make_loader(x_on_device, y_on_device, batch_size=64, device="gpu")
    assert loader.placement == "gpu"
    stored_x, stored_y = loader._store.leaves
    assert isinstance(stored_x, cp.ndarray)
    assert stored_x.data.ptr == x_on_device.data_ptr(), "x was copied instead of adopted"
    assert stored_y.data.ptr == y_on_device.data_ptr(), "y was copied instead of adopted"

    _, (bx, by) = loader._prepare(3)
    rows = expected_rows(640, 64, 0, 3)
    np.testing.assert_array_equal(host(bx), x[rows])
    np.testing.assert_array_equal(host(by), y[rows])


# ---------------------------------------------------------------- transform
@pytest.mark.gpu
def test_transform_runs_on_the_device(cp, make_loader):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (512, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 512).astype(np.int32)
    namespaces = []

    def to_unit_float(batch, xp):
        namespaces.append(xp)
        pixels, targets = batch
        return xp.astype(pixels, xp.float32) / 255, targets

    loader = make_loader(images, labels, batch_size=64, device="gpu", transform=to_unit_float)
    stored_images = loader._store.leaves[0]
    assert isinstance(stored_images, cp.ndarray) and stored_images.dtype == np.uint8, "store must stay uint8"
    assert loader._store.nbytes == images.nbytes + labels.nbytes

    _, (bx, by) = loader._prepare(2)
    assert namespaces and all(xp is cp for xp in namespaces), "transform must be given CuPy"
    assert isinstance(bx, cp.ndarray) and bx.dtype == np.float32
    assert bx.data.ptr % TRANSFORM_ALIGNMENT == 0 and bx.flags.c_contiguous
    rows = expected_rows(512, 64, 0, 2)
    np.testing.assert_allclose(host(bx), images[rows].astype(np.float32) / 255, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(host(by), labels[rows])
    assert stored_images.dtype == np.uint8



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
@pytest.mark.parametrize("size", [1, 3, 5, 7])
@pytest.mark.parametrize("path", ["fused kernel", "ops one by one"])
def test_augmented_batches_on_the_device_are_the_host_bytes(cp, make_loader, monkeypatch, dtype, size, path):
    # The fused kernel (_cuda.GatherAugment, one launch per batch) and the ops one by one through CuPy
    # (where the kernel does not fit) both give the host's bytes.
    from gpuloader import _cuda, augment

    launches = []
    if path == "ops one by one":
        monkeypatch.setattr(_cuda, "gather_augment", lambda table, leaf: None)
    else:
        real_call = _cuda.GatherAugment.__call__
        monkeypatch.setattr(_cuda.GatherAugment, "__call__",
                            lambda self, *args: launches.append(1) or real_call(self, *args))

    rng = np.random.default_rng(size)
    images = (rng.integers(0, 256, (96, size + 4, size + 2, size)) if dtype == np.uint8
              else rng.standard_normal((96, size + 4, size + 2, size))).astype(dtype)
    labels = np.arange(96, dtype=np.int32)

    def ops():
        padding = min(2, size)
        return [augment.RandomCrop(padding=padding), augment.RandomFlip(), augment.Cutout(size=3, fill=1)]

    on_gpu = make_loader(images, labels, batch_size=32, device="gpu", augment=ops())
    on_host = make_loader(images, labels, batch_size=32, device="host", augment=ops())
    assert on_gpu.placement == "gpu"
    for epoch in (0, 1):
        for index in range(len(on_gpu)):
            _, (gx, gy) = on_gpu._prepare(index, epoch)
            _, (hx, hy) = on_host._prepare(index, epoch)
            assert isinstance(gx, cp.ndarray)
            np.testing.assert_array_equal(host(gy), hy)
            assert host(gx).tobytes() == np.asarray(hx).tobytes(), f"epoch {epoch}, batch {index}"
    assert len(launches) == (2 * len(on_gpu) if path == "fused kernel" else 0)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
def test_the_fused_kernel_gives_the_reference_bytes_for_odd_sizes(cp, dtype):
    # _cuda.GatherAugment alone, H, W and C each of 1, 3, 5, 7, against the ops one by one on the host
    # (the array-API reference path), shuffled rows and a slice of rows, two streams.
    from gpuloader import _cuda, augment
    from gpuloader.augment import fused

    rng = np.random.default_rng(5)
    id_table = np.arange(40, dtype=np.int64) * 13 + 5
    for height in (1, 3, 5, 7):
        for width in (1, 3, 5, 7):
            for channels in (1, 3, 5, 7):
                images = rng.integers(1, 250, (40, height, width, channels)).astype(dtype)
                pad = min(height, width) - 1
                ops = [augment.RandomCrop(pad), augment.RandomFlip(), augment.Cutout(3, fill=7),
                       augment.RandomCrop(pad, mode="constant", fill=2)]
                kernel = _cuda.gather_augment(fused.fused_ops(ops, images.dtype, channels), cp.asarray(images))
                for rows, stream in ((rng.permutation(40)[:17].astype(np.int64), 0), (slice(3, 29), 2)):
                    chosen = rows if isinstance(rows, np.ndarray) else np.arange(rows.start, rows.stop)
                    on_device = kernel(rows if isinstance(rows, slice) else cp.asarray(rows), cp.asarray(id_table),
                                       11, 3, stream=stream)
                    previous, augment._host._FAST_PATH_ENABLED = augment._host._FAST_PATH_ENABLED, False
                    try:
                        want = augment.apply_augment(ops, images[chosen], id_table[chosen], 11, 3, np, stream=stream)
                    finally:
                        augment._host._FAST_PATH_ENABLED = previous
                    assert host(on_device).tobytes() == want.tobytes(), (height, width, channels, stream)


@pytest.mark.gpu
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("normalize", [None, "float32", "float16"])
def test_the_fused_kernel_gives_the_reference_bytes_in_both_formats_and_normalized(cp, data_format, normalize):
    # Issue 18: _cuda.GatherAugment with channels-first planes and a final Normalize, against the host's
    # array-API reference path.
    from gpuloader import _cuda, augment
    from gpuloader.augment import fused

    rng = np.random.default_rng(8)
    id_table = np.arange(40, dtype=np.int64) * 7 + 1
    images = rng.integers(0, 256, (40, 9, 11, 3)).astype(np.uint8)
    if data_format == "channels_first":
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    ops = [augment.RandomCrop(3, data_format=data_format), augment.RandomFlip(data_format=data_format),
           augment.Cutout(4, fill=9, data_format=data_format)]
    if normalize:
        ops.append(augment.Normalize((120, 110, 100), (60, 61, 62), normalize, data_format=data_format))
    kernel = _cuda.gather_augment(fused.table_for(ops, images), cp.asarray(images))
    rows = rng.permutation(40)[:23].astype(np.int64)
    on_device = kernel(cp.asarray(rows), cp.asarray(id_table), 11, 3)
    previous, augment._host._FAST_PATH_ENABLED = augment._host._FAST_PATH_ENABLED, False
    try:
        want = augment.apply_augment(ops, images[rows], id_table[rows], 11, 3, np)
    finally:
        augment._host._FAST_PATH_ENABLED = previous
    assert host(on_device).dtype == want.dtype
    assert host(on_device).tobytes() == want.tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize("view", ["strided", "offset"])
def test_a_transform_that_returns_a_view_is_realigned_on_the_device(cp, make_loader, view):
    x, y = id_rows(300, features=6)  # 24-byte rows of x, 8-byte rows of y

    def transform(batch, xp):
        bx, by = batch
        return (bx[:, ::2], by) if view == "strided" else (bx[1:], by[1:])

    loader = make_loader(x, y, batch_size=50, device="gpu", transform=transform)
    _, (bx, by) = loader._prepare(2)
    rows = expected_rows(300, 50, 0, 2)
    want_x, want_y = transform((x[rows], y[rows]), np)
    for got, want in ((bx, want_x), (by, want_y)):
        assert got.flags.c_contiguous, "a transform's strided view reached the hand-off"
        assert got.data.ptr % TRANSFORM_ALIGNMENT == 0, f"a view at {got.data.ptr:#x} reached the hand-off"
        np.testing.assert_array_equal(host(got), want)


# ------------------------------------------------------------ several GPUs
@pytest.mark.gpu
def test_device_calls_for_several_gpus_work_on_device_zero(cp):
    """probe(ordinal), on_device and copy_to_device: what the per-GPU layouts use, checked on GPU 0."""
    assert _cuda.probe(0).usable and _cuda.probe(0).free_bytes > 0
    missing = cp.cuda.runtime.getDeviceCount()
    assert not _cuda.probe(missing).usable and f"CUDA device {missing} does not exist" in _cuda.probe(missing).reason
    with _cuda.on_device(0):
        a = cp.arange(10)
    b = _cuda.copy_to_device(a, 0)
    assert b.device.id == 0 and b.data.ptr != a.data.ptr
    np.testing.assert_array_equal(host(b), np.arange(10))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_each_replica_part_is_gathered_on_its_own_gpu(cp, make_loader, monkeypatch, layout):
    """Needs 2 GPUs: a MirroredStrategy's replicas on GPUs 0 and 1 (patched in; no TensorFlow needed)."""
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs 2 CUDA devices for a per-GPU layout")
    from gpuloader import replicas

    devices = ["/job:localhost/replica:0/task:0/device:GPU:0", "/job:localhost/replica:0/task:0/device:GPU:1"]
    monkeypatch.setattr(replicas, "strategy_replica_devices", lambda: devices)
    monkeypatch.setattr(replicas, "gpu_ordinals", lambda names: [0, 1])
    x, y = id_rows(1000, features=4)
    if layout == "sharded":  # report room for half of the data on each GPU (rows of 24 bytes), not for all
        real_probe, free = _cuda.probe, 2 * (500 * 24 + 4 * 32 * 24 + 24 * 500) + 64

        def probe(ordinal=None):
            return dataclasses_replace(real_probe(ordinal), free_bytes=free)

        monkeypatch.setattr(_cuda, "probe", probe)
    loader = make_loader(x, y, batch_size=64, device="gpu")
    assert loader.plan.layout == layout, loader.plan
    seen = []
    for position in range(len(loader)):
        parts = loader._prepare_parts(position, 0)
        for replica, (_, leaves) in enumerate(parts):
            assert all(leaf.device.id == replica for leaf in leaves)
            seen.extend(host(leaves[1]).tolist())
    assert sorted(seen) == list(range(1000))


# ---------------------------------------------------------------- Keras fit
@pytest.mark.gpu
def test_keras_fit_converges_on_the_gpu(cp, make_loader):
    """A Dense model fed by Loader(device="gpu") learns y = x @ w on the backend in KERAS_BACKEND."""
    import keras  # make_loader has skipped already when Keras does not import

    backend = keras.backend.backend()
    if backend == "numpy":
        pytest.skip("Keras's numpy backend cannot train")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2048, 16), dtype=np.float32)
    w = rng.standard_normal((16, 1), dtype=np.float32)
    y = (x @ w + 0.01 * rng.standard_normal((2048, 1), dtype=np.float32)).astype(np.float32)
    loader = make_loader(x, y, batch_size=128, device="gpu")
    assert loader.placement == "gpu", loader.plan

    batches = _backend_batches(loader, backend)
    first_x = next(iter(batches))[0]
    assert _on_gpu(first_x), f"the {backend} backend was not handed a GPU batch: {first_x!r}"
    getattr(batches, "close", lambda: None)()

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
    losses = model.fit(loader, epochs=5, verbose=0).history["loss"]
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < 0.1 * losses[0], f"loss did not decrease enough on {backend}: {losses}"
    evaluated = model.evaluate(loader, verbose=0)
    assert math.isfinite(evaluated) and evaluated < 0.1 * losses[0]


def _backend_batches(loader, backend):
    if backend == "jax":
        return loader.get_jax_iterator()
    if backend == "torch":
        return loader.get_torch_dataloader()
    if backend == "tensorflow":
        return iter(loader.get_tf_dataset())
    return loader.get_numpy_iterator()


def _on_gpu(tensor) -> bool:
    if hasattr(tensor, "is_cuda"):  # torch
        return bool(tensor.is_cuda)
    if hasattr(tensor, "devices"):  # JAX
        return all(device.platform == "gpu" for device in tensor.devices())
    return "GPU" in str(getattr(tensor, "device", ""))  # TensorFlow


# ----------------------------------------- bench/gpu_check.sh, on the CPU (not marked gpu)
ROOT = Path(__file__).resolve().parent.parent

#: A stand-in for python in bench/gpu_check.sh: CuPy's device count and pytest's JUnit report
#: come from STUB_* variables; every other call (environment report, benchmarks) succeeds.
STUB_PYTHON = r"""#!/usr/bin/env bash
if [[ $1 == -c && $2 == *getDeviceCount* ]]; then
    if [[ $STUB_DEVICES == none ]]; then
        echo "ModuleNotFoundError: No module named 'cupy'" >&2
        exit 1
    fi
    echo "$STUB_DEVICES"
    exit 0
fi
if [[ $1 == -m && $2 == pytest ]]; then
    echo "pytest GPULOADER_EXPECT_GPU=${GPULOADER_EXPECT_GPU:-unset}" >> "$STUB_LOG"
    for arg in "$@"; do
        if [[ $arg == --junitxml=* ]]; then
            suite='<testsuite name="pytest" errors="0" failures="%s" skipped="%s" tests="%s" time="1">'
            printf "<?xml version=\"1.0\"?><testsuites name=\"pytest tests\">$suite</testsuite></testsuites>" \
                "$STUB_FAILED" "$STUB_SKIPPED" "$((STUB_PASSED + STUB_SKIPPED + STUB_FAILED))" > "${arg#--junitxml=}"
        fi
    done
    exit "$STUB_RC"
fi
exit 0
"""


def run_gpu_check(tmp_path, devices, passed, skipped, failed=0, rc=0):
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), OUT=str(tmp_path / "out"), STUB_DEVICES=devices, STUB_LOG=str(
        tmp_path / "calls"), STUB_PASSED=str(passed), STUB_SKIPPED=str(skipped), STUB_FAILED=str(failed),
        STUB_RC=str(rc))
    env.pop("GPULOADER_EXPECT_GPU", None)
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                          timeout=120)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return done.returncode, done.stdout, calls


@pytest.mark.parametrize(
    ("devices", "passed", "skipped", "failed", "rc", "ok", "says"),
    [
        ("1", 0, 49, 0, 0, False, "no GPU test passed although CuPy sees 1 CUDA device(s)"),
        ("none", 0, 49, 0, 0, False, "CuPy sees no CUDA device here, so nothing was checked"),
        ("1", 47, 2, 0, 0, True, "gpu_check: all steps passed"),
        ("2", 40, 0, 9, 1, False, "9 failed"),
    ],
    ids=["device-but-all-skipped", "no-device", "tests-passed", "tests-failed"],
)
def test_gpu_check_fails_unless_a_gpu_test_passed(tmp_path, devices, passed, skipped, failed, rc, ok, says):
    returncode, output, calls = run_gpu_check(tmp_path, devices, passed, skipped, failed, rc)
    assert (returncode == 0) == ok, output[-3000:]
    assert says in output, output[-3000:]
    expect_gpu = "unset" if devices == "none" else "1"
    assert calls == [f"pytest GPULOADER_EXPECT_GPU={expect_gpu}"] * 2, "both pytest steps, told whether a GPU is there"


FAKE_CUPY = """
from types import SimpleNamespace
# CuPy that counts one CUDA device and can do nothing else: gpuloader's probe cannot use it.
cuda = SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=lambda: 1))
"""


@pytest.mark.parametrize("case", ["cupy-sees-a-device", "gpu-check-expects-one"])
def test_gpu_tests_fail_rather_than_skip_where_a_gpu_is_expected(tmp_path, case):
    """The skip does not rest on gpuloader's probe: a device CuPy counts, or gpu_check's word, makes a test fail."""
    env = dict(os.environ)
    env.pop("GPULOADER_EXPECT_GPU", None)
    if case == "cupy-sees-a-device":
        (tmp_path / "cupy").mkdir()
        (tmp_path / "cupy" / "__init__.py").write_text(FAKE_CUPY)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
        says = "CuPy sees 1 CUDA device(s) (CuPy's device count), but gpuloader's probe says"
    else:
        if importlib.util.find_spec("cupy") is not None:
            pytest.skip("CuPy is installed here; the case needs a machine without it")
        env["GPULOADER_EXPECT_GPU"] = "1"
        says = "CuPy sees 0 CUDA device(s) (CuPy does not import"
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-k", "permutation_is_bit_identical",
         f"--junitxml={report}", str(Path(__file__))], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 1, done.stdout[-3000:]
    suite = report.read_text()
    assert 'skipped="0"' in suite and 'errors="8"' in suite, done.stdout[-3000:]  # failed in the fixture
    assert says in done.stdout, done.stdout[-3000:]
