"""The hand-off: zero-copy into TensorFlow, and never an unaligned buffer (TF would abort)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import ABORTED, run_python
from conftest import record_gathers as shared_record_gathers

from gpuloader.gather import ALIGNMENT, HostGather, aligned_empty, is_aligned
from gpuloader.handoff import as_aligned_host, hand_off

#: Run in a child process by the first test of the session: loaders over many dtypes, row sizes
#: and batch sizes hand every batch to TensorFlow, whose kernels then read it. TensorFlow
#: CHECK-fails (aborts the process) on a buffer that is not aligned, so an alignment bug kills
#: this child, not the test session.
HANDOFF_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
from gpuloader import Loader

def unaligned_views(batch, xp):  # every part starts one row into the gathered block
    return tuple(part[1:, ...] for part in batch)

def read_by_tensorflow(tensors, expected):
    for tensor, want in zip(tensors, expected):
        assert tensor.dtype.as_numpy_dtype == want.dtype, (tensor.dtype, want.dtype)
        total = float(tf.reduce_sum(tf.cast(tensor, tf.float64)))  # a kernel that reads every element
        assert np.isclose(total, want.astype(np.float64).sum()), (total, want)
    return len(tensors)

n, handed = 101, 0
dtypes = [np.bool_, np.uint8, np.int8, np.int16, np.float16, np.int32, np.float32, np.int64, np.float64]
for d, dtype in enumerate(dtypes):
    for features in (1, 3, 5, 13):
        x = (np.arange(n * features) % (2 if dtype is np.bool_ else 97)).astype(dtype).reshape(n, features)
        y = np.arange(n, dtype=np.int64)
        weights = np.linspace(0, 1, n, dtype=[np.float16, np.float32, np.float64][d % 3])
        for batch_size, shuffle, transform in ((1, False, None), (7, True, None), (37, True, None),
                                               (64, False, None), (7, True, unaligned_views),
                                               (37, False, unaligned_views)):
            loader = Loader(x, y, weights, batch_size=batch_size, shuffle=shuffle, seed=d, transform=transform,
                            verbose=False)
            for i in range(len(loader)):
                batch = loader[i]
                rows = batch[1].numpy()
                handed += read_by_tensorflow(batch, (x[rows], y[rows], weights[rows]))
            for batch in loader.get_tf_dataset():
                rows = batch[1].numpy()
                handed += read_by_tensorflow(batch, (x[rows], y[rows], weights[rows]))
print(json.dumps({"tensors": handed}))
"""


def tf_data_pointer(tensor: tf.Tensor) -> int:
    """Address of a CPU tensor's buffer, read back through DLPack (no copy)."""
    capsule = tf.experimental.dlpack.to_dlpack(tensor)

    class Exporter:
        def __dlpack__(self, **kwargs):
            return capsule

        def __dlpack_device__(self):
            return (1, 0)

    return np.from_dlpack(Exporter()).ctypes.data


@pytest.mark.first
def test_tensorflow_reads_every_batch_in_a_child_process_without_aborting(request):
    """Runs first: an alignment bug aborts the child and fails this test by name (see tests/conftest.py)."""
    import signal

    done = run_python(["-c", HANDOFF_SCRIPT], timeout=300)
    if done.returncode < 0:
        request.node.user_properties.append((ABORTED, True))
        check = [line for line in done.stderr.splitlines() if "Check failed" in line]
        pytest.fail(
            f"handing batches to TensorFlow killed the process with {signal.Signals(-done.returncode).name}: "
            f"{check[-1] if check else done.stderr[-2000:]} (TensorFlow aborts on a buffer that is not "
            f"{ALIGNMENT}-byte aligned)"
        )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # 9 dtypes x 4 row widths, batches of 1, 7, 37, 64, 7 and 37 rows of 101, 3 tensors each, twice.
    batches = sum(-(-101 // size) for size in (1, 7, 37, 64, 7, 37))
    assert report["tensors"] == 9 * 4 * batches * 3 * 2


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
    gather = HostGather([leaf])
    (first,), (second,) = gather(rows), gather(rows)
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
    leaves = [np.arange(30 * 3, dtype=np.float32).reshape(30, 3), np.arange(30, dtype=np.int8),
              np.ones((30, 5, 7), dtype=np.float64)]
    rows = np.array([29, 0, 7, 7, 13])
    gather = HostGather(leaves)
    first, second = gather(rows), gather(rows)
    for out, leaf in zip(first, leaves):
        assert is_aligned(out)
        np.testing.assert_array_equal(out, leaf[rows])
    assert not any(np.shares_memory(a, b) for a in first for b in second)


@pytest.mark.parametrize(
    "rows", [np.array([29, 0, 7, 7, 13]), slice(4, 21), slice(25, 30)], ids=["rows", "slice", "tail"]
)
def test_the_in_ram_gather_matches_numpy_indexing_and_never_reuses_a_block(rows):
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


# ------------------------------------------------- zero-copy through the Loader
def record_gathers(loader) -> list[tuple[int, ...]]:
    """The buffer addresses of every batch the loader's gather makes (see conftest.record_gathers)."""
    return shared_record_gathers(loader, lambda leaf: leaf.ctypes.data)


def torch_pointer(tensor) -> int:
    return tensor.data_ptr()


def numpy_pointer(array) -> int:
    assert isinstance(array, np.ndarray)
    return array.ctypes.data


def zero_copy_loader(**kwargs):
    from gpuloader import Loader

    x = np.arange(203 * 5, dtype=np.float32).reshape(203, 5)
    y = np.arange(203, dtype=np.int64)
    weights = np.linspace(0, 1, 203)
    return Loader(x, y, weights, batch_size=32, seed=4, verbose=False, **kwargs)


@pytest.mark.parametrize("transform", [None, lambda batch, xp: batch], ids=["plain", "identity-transform"])
def test_loader_items_are_the_gathered_buffers_without_a_copy(transform):
    loader = zero_copy_loader(transform=transform)
    made = record_gathers(loader)
    served = []
    for i in range(len(loader)):
        tensors = loader[i]
        assert len(tensors) == 3 and all(isinstance(t, tf.Tensor) for t in tensors)
        served.append(tuple(tf_data_pointer(t) for t in tensors))
    assert len(made) == len(loader)
    assert served == made, "loader[i] handed TensorFlow a copy, not the gathered buffers"


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("adapter", ["numpy", "tensorflow", "torch"])
def test_adapter_iterators_hand_over_the_gathered_buffers_without_a_copy(adapter, workers):
    loader = zero_copy_loader(workers=workers, max_queue_size=4)
    made = record_gathers(loader)
    if adapter == "numpy":
        batches, pointer = loader.get_numpy_iterator(), numpy_pointer
    elif adapter == "tensorflow":
        batches, pointer = iter(loader.get_tf_dataset()), tf_data_pointer
    else:
        pytest.importorskip("torch")
        batches, pointer = loader.get_torch_dataloader(), torch_pointer
    held = list(batches)  # every batch stays alive: no address can be reused
    served = [tuple(pointer(part) for part in batch) for batch in held]
    assert len(served) == len(loader) == len(made)
    # Threads may gather out of order; the hand-off must still be each gathered buffer itself.
    expected = made if workers == 1 else sorted(made)
    assert (served if workers == 1 else sorted(served)) == expected, (
        f"the {adapter} iterator handed over copies, not the gathered buffers"
    )
    np.testing.assert_array_equal(np.asarray(held[0][1]), np.asarray(held[0][0])[:, 0] // 5)
