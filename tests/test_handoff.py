"""The hand-off: zero-copy into TensorFlow, and never an unaligned buffer (TF would abort)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gpuloader.gather import ALIGNMENT, aligned_empty, gather, is_aligned
from gpuloader.handoff import as_aligned_host, hand_off


def tf_data_pointer(tensor: tf.Tensor) -> int:
    """Address of a CPU tensor's buffer, read back through DLPack (no copy)."""
    capsule = tf.experimental.dlpack.to_dlpack(tensor)

    class Exporter:
        def __dlpack__(self, **kwargs):
            return capsule

        def __dlpack_device__(self):
            return (1, 0)

    return np.from_dlpack(Exporter()).ctypes.data


def test_aligned_buffers_are_handed_to_tensorflow_without_a_copy():
    array = aligned_empty((256, 784), np.float32)
    array[:] = 3.0
    tensor = hand_off(array, "tensorflow")
    assert tf_data_pointer(tensor) == array.ctypes.data
    assert float(tf.reduce_sum(tensor)) == 3.0 * 256 * 784


@pytest.mark.parametrize("offset", [4, 16, 32, 48])
def test_unaligned_buffers_are_copied_to_an_aligned_one_first(offset):
    raw = aligned_empty((4096 + 64,), np.uint8)
    unaligned = raw[offset : offset + 4096].view(np.float32).reshape(32, 32)
    unaligned[:] = np.arange(1024, dtype=np.float32).reshape(32, 32)
    assert not is_aligned(unaligned)
    tensor = hand_off(unaligned, "tensorflow")
    # A oneDNN kernel touching an unaligned buffer aborts the process; this one must run.
    result = tf.matmul(tensor, tensor)
    np.testing.assert_allclose(result.numpy(), unaligned @ unaligned, rtol=1e-5)
    assert tf_data_pointer(tensor) % ALIGNMENT == 0


def test_non_contiguous_arrays_are_made_contiguous():
    base = aligned_empty((10, 10), np.float32)
    base[:] = np.arange(100).reshape(10, 10)
    strided = base[:, ::2]
    np.testing.assert_array_equal(hand_off(strided, "tensorflow").numpy(), strided)
    assert as_aligned_host(strided).flags.c_contiguous


@pytest.mark.parametrize("rows", [slice(3, 17), np.array([9, 1, 4, 4, 0])])
def test_every_host_gather_is_fresh_aligned_and_contiguous(rows):
    leaf = np.arange(20 * 7, dtype=np.float64).reshape(20, 7)[:, :5].copy()
    first, second = gather(np, leaf, rows), gather(np, leaf, rows)
    for out in (first, second):
        assert is_aligned(out)
        np.testing.assert_array_equal(out, leaf[rows])
    assert not np.shares_memory(first, second) and not np.shares_memory(first, leaf)


def test_a_held_batch_is_never_overwritten_by_later_batches():
    from gpuloader import Loader

    x = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    loader = Loader(x, batch_size=100, seed=0, verbose=False)
    held = [loader[i][0] for i in range(len(loader))]
    snapshot = [t.numpy().copy() for t in held]
    for _ in range(3):
        loader.on_epoch_end()
        [loader[i] for i in range(len(loader))]
    for tensor, copy in zip(held, snapshot):
        np.testing.assert_array_equal(tensor.numpy(), copy)


def test_numpy_backend_gets_numpy_arrays():
    array = aligned_empty((3,), np.int32)
    assert hand_off(array, "numpy") is array
    with pytest.raises(ValueError, match="unknown Keras backend"):
        hand_off(array, "mxnet")


def test_a_batch_of_several_arrays_is_one_fresh_block_of_aligned_arrays():
    from gpuloader.gather import gather_batch

    leaves = [np.arange(30 * 3, dtype=np.float32).reshape(30, 3), np.arange(30, dtype=np.int8),
              np.ones((30, 5, 7), dtype=np.float64)]
    rows = np.array([29, 0, 7, 7, 13])
    first = gather_batch(np, leaves, rows)
    second = gather_batch(np, leaves, rows)
    for out, leaf in zip(first, leaves):
        assert is_aligned(out)
        np.testing.assert_array_equal(out, leaf[rows])
    assert not any(np.shares_memory(a, b) for a in first for b in second)


@pytest.mark.parametrize(
    "rows", [np.array([29, 0, 7, 7, 13]), slice(4, 21), slice(25, 30)], ids=["rows", "slice", "tail"]
)
def test_the_in_ram_gather_matches_numpy_indexing_and_never_reuses_a_block(rows):
    from gpuloader.gather import HostGather

    leaves = [np.arange(30 * 3, dtype=np.float32).reshape(30, 3), np.arange(30, dtype=np.int8),
              np.arange(30 * 35, dtype=np.float64).reshape(30, 5, 7), np.arange(30, dtype=np.uint8)[:, None]]
    gather = HostGather(leaves)
    held = [gather(rows) for _ in range(3)]  # a consumer holding three batches at once
    expected = [leaf[rows] for leaf in leaves]
    for batch in held:
        for out, want in zip(batch, expected):
            assert is_aligned(out) and out.dtype == want.dtype
            np.testing.assert_array_equal(out, want)
    blocks = {id(batch[0].base) for batch in held}
    assert len(blocks) == 3 and all(out.base is batch[0].base for batch in held for out in batch)
