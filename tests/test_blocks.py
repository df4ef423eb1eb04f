"""gpuloader.blocks: a batch's block is reused only once nothing holds any of its arrays."""

from __future__ import annotations

import numpy as np
import pytest

import gpuloader
from gpuloader import blocks
from gpuloader.blocks import BlockPool


def test_a_block_nothing_holds_is_given_out_again_and_a_held_one_never():
    pool = BlockPool()
    first = pool.take(1024)
    view = first[64:128].view(np.float32)  # what a batch's array is: a view whose base is the block
    del first
    second = pool.take(1024)
    assert not np.shares_memory(second, view), "a block one of whose arrays is held was given out again"
    address = second.ctypes.data
    del second
    third = pool.take(1024)
    assert third.ctypes.data == address, "a block nothing holds is reused"
    assert not np.shares_memory(pool.take(1024), view)
    del view


def test_the_pool_keeps_at_most_its_bound_and_still_serves_when_full(monkeypatch):
    monkeypatch.setattr(blocks, "MAX_SPARE_BLOCKS", 3)
    pool = BlockPool()
    held = [pool.take(100) for _ in range(5)]  # all held: two beyond the bound are not kept
    assert len({block.ctypes.data for block in held}) == 5
    assert pool.kept_bytes == 300
    del held
    assert pool.take(200).nbytes == 200  # another size: one free kept block is dropped to make room for it
    assert pool.kept_bytes == 100 + 100 + 200
    monkeypatch.setattr(blocks, "MAX_SPARE_BYTES", 250)
    big = pool.take(300)  # beyond the bytes bound: given out, not kept
    assert big.nbytes == 300 and pool.kept_bytes <= 250


@pytest.mark.parametrize("workers", [1, 4])
def test_batches_the_caller_holds_keep_their_values_while_the_loader_goes_on(tmp_path, workers):
    tf = pytest.importorskip("tensorflow")
    x = np.arange(400 * 8, dtype=np.float32).reshape(400, 8)
    path = tmp_path / "x.npy"
    np.save(path, x)
    for data, device in ((x, "host"), (str(path), "disk")):
        loader = gpuloader.Loader(data, x[:, 0].copy(), batch_size=16, seed=3, device=device, workers=workers,
                                  verbose=False)
        kept = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            for step, (xb, yb) in enumerate(loader.get_tf_dataset()):
                assert isinstance(xb, tf.Tensor)
                if step % 5 == 0:  # held as tensors (zero-copy views of the blocks) and as NumPy views of them
                    kept.append((xb, np.asarray(yb), np.array(xb), np.array(yb)))  # with copies made now
        assert len(kept) == 10
        for xb, y_view, x_then, y_then in kept:
            np.testing.assert_array_equal(np.asarray(xb), x_then)
            np.testing.assert_array_equal(y_view, y_then)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_batches_held_by_torch_or_jax_keep_their_values(backend):
    pytest.importorskip(backend)
    x = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    loader = gpuloader.Loader(x, batch_size=10, seed=1, device="host", verbose=False)
    pipeline = loader.pipeline
    kept = []
    for step in range(len(loader)):
        (xb,) = pipeline.to_consumer(pipeline.prepare(step, 0, True), backend)
        if step % 3 == 0:
            kept.append((xb, np.array(xb)))
    for xb, then in kept:
        np.testing.assert_array_equal(np.asarray(xb), then)


def test_normalized_batches_held_keep_their_values():
    pytest.importorskip("tensorflow")
    from gpuloader import augment

    images = np.random.default_rng(0).integers(0, 255, (200, 8, 8, 3), dtype=np.uint8)
    ops = [augment.RandomFlip(), augment.Normalize(127.5, 64.0)]  # a float32 buffer apart from the gather's block
    loader = gpuloader.Loader(images, batch_size=10, seed=2, device="host", augment=ops, verbose=False)
    kept = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for step, (xb,) in enumerate(loader.get_tf_dataset()):
            if step % 4 == 0:
                kept.append((xb, np.array(xb)))
    for xb, then in kept:
        np.testing.assert_array_equal(np.asarray(xb), then)


def test_without_the_gil_reference_counts_are_not_trusted_and_every_block_is_new(monkeypatch):
    # The one case where "the count says nothing holds it" is known to be unreliable: free-threaded builds.
    monkeypatch.setattr(blocks.sys, "_is_gil_enabled", lambda: False, raising=False)
    pool = BlockPool()
    for _ in range(3):
        assert pool.take(512).nbytes == 512
    assert pool.kept_bytes == 0  # nothing kept, so nothing is ever handed out twice
