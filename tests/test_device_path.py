"""The GPU path's logic on the CPU, with array_api_strict standing in for CuPy.

The stand-in (tests/conftest.py ``fake_gpu``) replaces only gpuloader/_cuda.py,
the module of CuPy-only calls; placement, the chunked upload, permutation,
gather, transform and hand-off run their real code in a strict array-API
namespace that refuses anything CuPy lacks.
"""

from __future__ import annotations

import array_api_strict as xps
import numpy as np
import pytest
import tensorflow as tf
from conftest import epoch_ids, id_data, prepared, sample_ids

import gpuloader
from gpuloader import Loader, store
from gpuloader.gather import HostGather


def test_auto_places_data_that_fits_on_the_gpu(fake_gpu):
    x, y = id_data(100)
    loader = Loader(x, y, batch_size=16, seed=3, verbose=False)
    assert loader.placement == "gpu" and loader.xp is xps
    assert str(loader.plan).startswith("gpu: the data fits (needs ")
    assert "FakeGPU" in str(loader.plan) and "0.5 x" in str(loader.plan)
    assert all(type(leaf).__module__.startswith("array_api_strict") for leaf in loader.pipeline.store.leaves)


def test_device_batches_equal_host_batches_for_the_same_seed(fake_gpu):
    x, y = id_data(203)
    device = Loader(x, y, batch_size=20, seed=8, verbose=False)
    host = Loader(x, y, batch_size=20, seed=8, device="host", verbose=False)
    assert (device.placement, host.placement) == ("gpu", "host")
    for _ in range(3):
        assert epoch_ids(device) == epoch_ids(host)
        assert sorted(epoch_ids(device)) == list(range(203))
        device.on_epoch_end()
        host.on_epoch_end()


def test_upload_is_chunked(fake_gpu, monkeypatch):
    x, y = id_data(1000, features=4)  # 16 bytes per row of x
    monkeypatch.setattr(store, "DEFAULT_CHUNK_BYTES", 1600)
    Loader(x, y, batch_size=10, verbose=False)
    assert fake_gpu.state.uploads[:10] == [100] * 10  # x in chunks of 100 rows
    assert sum(fake_gpu.state.uploads) == 2000  # x and y, every row once


def test_every_device_batch_is_synchronised_before_hand_off(fake_gpu):
    x, y = id_data(64)
    loader = Loader(x, y, batch_size=16, verbose=False)
    before = fake_gpu.state.syncs
    epoch_ids(loader)
    assert fake_gpu.state.syncs - before == len(loader)


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
def test_device_batches_come_from_the_fused_gather_one_call_per_batch(fake_gpu, shuffle):
    x, y = id_data(50)
    loader = Loader(x, y, batch_size=16, shuffle=shuffle, verbose=False)
    before = fake_gpu.state.fused_gathers
    ids = epoch_ids(loader)
    assert fake_gpu.state.fused_gathers - before == len(loader)  # one call for x and y together
    assert sorted(ids) == list(range(50))


def test_transform_runs_on_the_device_and_storage_stays_compact(fake_gpu):
    images = (np.arange(40 * 8 * 8 * 3) % 256).astype(np.uint8).reshape(40, 8, 8, 3)
    seen = []

    def scale(batch, xp):
        seen.append(xp)
        (x,) = batch
        return (xp.astype(x, xp.float32) / 255.0,)

    loader = Loader(images, batch_size=10, shuffle=False, transform=scale, verbose=False)
    assert loader.pipeline.store.leaves[0].dtype == xps.uint8
    (batch,) = loader[0]
    assert seen == [xps] and batch.dtype == tf.float32
    np.testing.assert_allclose(batch.numpy(), images[:10].astype(np.float32) / 255.0)


def test_gpu_that_is_too_small_falls_back_under_auto_and_raises_under_gpu(fake_gpu):
    fake_gpu.state.free_bytes = 1000
    x, y = id_data(1000)
    loader = Loader(x, y, verbose=False)
    assert loader.placement == "host"
    reason = str(loader.plan)
    assert "does not fit on the GPU" in reason and "budget 500 B" in reason and "1.0 KB free" in reason
    assert loader.plan.bytes_free == 1000 and loader.plan.bytes_needed > 1000
    with pytest.raises(gpuloader.GPUUnavailableError, match=r"does not fit.*budget 500 B"):
        Loader(x, y, device="gpu", verbose=False)
    assert Loader(x, y, gpu_memory_fraction=1.0, device="auto", verbose=False).placement == "host"


def test_no_cuda_device_under_gpu_raises_and_auto_falls_back(fake_gpu):
    fake_gpu.state.usable = False
    x, y = id_data(10)
    assert "no CUDA device" in str(Loader(x, y, verbose=False).plan)
    with pytest.raises(gpuloader.GPUUnavailableError, match="no CUDA device"):
        Loader(x, y, device="gpu", verbose=False)


def test_out_of_memory_during_upload_falls_back_under_auto_and_loses_nothing(fake_gpu):
    fake_gpu.state.fail_after_uploads = 0
    x, y = id_data(50)
    with pytest.warns(RuntimeWarning, match="ran out of memory"):
        loader = Loader(x, y, batch_size=8, seed=1, verbose=False)
    assert loader.placement == "host" and "fell back after: gpu:" in str(loader.plan)
    assert fake_gpu.state.freed == 1
    assert sorted(epoch_ids(loader)) == list(range(50))
    assert np.array_equal(x[:, 0], np.arange(50))  # the caller's data is untouched


def test_out_of_memory_during_upload_raises_under_gpu(fake_gpu):
    fake_gpu.state.fail_after_uploads = 1
    x, y = id_data(50)
    with pytest.raises(gpuloader.GPUUnavailableError, match="ran out of GPU memory") as caught:
        Loader(x, y, device="gpu", verbose=False)
    assert isinstance(caught.value.__cause__, MemoryError)
    assert fake_gpu.state.freed == 1


def test_the_stand_in_row_gather_matches_the_host_gather(fake_gpu):
    # The stand-in plays _cuda.RowGather; the device-path tests are worth what its rows are.
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    y = np.arange(20, dtype=np.int8)
    gather = fake_gpu.row_gather([xps.asarray(x), xps.asarray(y)])
    for rows in (np.array([5, 0, 19, 7]), slice(4, 9)):
        on_device = gather(xps.asarray(rows) if isinstance(rows, np.ndarray) else rows)
        for got, want in zip(on_device, HostGather([x, y])(rows)):
            np.testing.assert_array_equal(np.asarray(got), want)


def test_state_moves_between_host_and_device_loaders(fake_gpu):
    x, y = id_data(90)
    device = Loader(x, y, batch_size=30, seed=77, verbose=False)
    epoch_ids(device)
    device.on_epoch_end()
    host = Loader(x, y, batch_size=30, device="host", verbose=False)
    host.set_state(device.get_state())
    assert [sample_ids(host[i][0]) for i in range(3)] == [sample_ids(device[i][0]) for i in range(3)]


class FakeTensorFlowConfig:
    """Just enough of tf.config to follow share_gpu_with_tensorflow's decisions."""

    def __init__(self, initialised: bool):
        self.initialised = initialised
        self.growth: dict[str, bool] = {"GPU:0": False, "GPU:1": False}
        self.experimental = self

    def list_physical_devices(self, kind):
        return list(self.growth)

    def get_memory_growth(self, gpu):
        return self.growth[gpu]

    def set_memory_growth(self, gpu, value):
        if self.initialised:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.growth[gpu] = value


def test_tensorflow_gets_memory_growth_before_it_initialises(monkeypatch):
    from types import SimpleNamespace

    from gpuloader.placement import share_gpu_with_tensorflow

    monkeypatch.delenv("TF_GPU_ALLOCATOR", raising=False)
    fresh = SimpleNamespace(config=FakeTensorFlowConfig(initialised=False))
    assert share_gpu_with_tensorflow(fresh) == "memory growth is on for TensorFlow's 2 GPU(s)"
    assert all(fresh.config.growth.values())

    started = SimpleNamespace(config=FakeTensorFlowConfig(initialised=True))
    assert "already initialised" in share_gpu_with_tensorflow(started)

    monkeypatch.setenv("TF_GPU_ALLOCATOR", "cuda_malloc_async")
    untouched = SimpleNamespace(config=FakeTensorFlowConfig(initialised=False))
    assert "cuda_malloc_async" in share_gpu_with_tensorflow(untouched)
    assert not any(untouched.config.growth.values())


def strided_columns(batch, xp):
    bx, by = batch
    return bx[:, ::2], by  # a view with a column stride


def rows_from_an_offset(batch, xp):
    bx, by = batch
    return bx[1:, ...], by[1:]  # C-contiguous views starting 24 and 8 bytes into the gathered block


@pytest.mark.parametrize("transform", [strided_columns, rows_from_an_offset])
def test_a_transform_that_returns_a_view_is_realigned_on_the_device(fake_gpu, transform):
    """On a real GPU the hand-off does not check device buffers: the pipeline must re-align them."""
    x, y = id_data(100, features=6)  # 24-byte rows of x, 8-byte rows of y
    loader = Loader(x, y, batch_size=10, shuffle=False, transform=transform, verbose=False)
    assert loader.placement == "gpu"
    want_x, want_y = transform((x[20:30], y[20:30]), np)
    _, leaves = prepared(loader, 2)
    for leaf, want in zip(leaves, (want_x, want_y)):
        values = np.from_dlpack(leaf)
        assert values.flags.c_contiguous, "a transform's strided view reached the hand-off"
        assert values.ctypes.data % 64 == 0, f"a transform's view at {values.ctypes.data:#x} reached the hand-off"
        np.testing.assert_array_equal(values, want)
    assert fake_gpu.state.realigned >= 1
    bx, by = loader[2]
    np.testing.assert_array_equal(bx.numpy(), want_x)
    np.testing.assert_array_equal(by.numpy(), want_y)


def test_the_stand_in_promises_no_more_than_the_real_runtime(fake_gpu):
    """What the CPU tests rely on from the stand-in is what gpuloader/_cuda.py guarantees, no more."""
    strided = xps.asarray(np.arange(40, dtype=np.float32).reshape(10, 4))[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        fake_gpu.row_gather([strided])
    block = xps.asarray(np.zeros((16, 16), np.float32))
    leaves = fake_gpu.row_gather([block, xps.asarray(np.arange(16, dtype=np.int8))])(xps.asarray(np.arange(5)))
    addresses = [np.from_dlpack(leaf).ctypes.data for leaf in leaves]
    assert all(address % 256 == 0 for address in addresses) and addresses[1] - addresses[0] == 512
    aligned = leaves[0]
    assert fake_gpu.aligned_contiguous(aligned) is aligned  # nothing to do: no copy
    view = aligned[:, ::2]
    fresh = fake_gpu.aligned_contiguous(view)
    assert fresh is not view and np.from_dlpack(fresh).flags.c_contiguous
    host = np.arange(6, dtype=np.float32)[1:]
    assert fake_gpu.aligned_contiguous(host) is host  # not the runtime's array: left alone, as CuPy's does
