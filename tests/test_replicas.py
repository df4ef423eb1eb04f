"""Several GPUs under MirroredStrategy: a copy of the data on each GPU, or its rows sharded across them.

Two fake GPUs (array_api_strict's devices, which refuse to mix arrays) stand in
for two CUDA devices; the strategy's replica devices are patched in, so the
layout logic runs here without TensorFlow GPUs. tests/test_distribute.py runs
the same layouts under a real MirroredStrategy over two logical CPUs.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
from conftest import epoch_ids, id_data, prepared_parts, sample_ids
from fake_gpu import make_runtime

from gpuloader import GPUUnavailableError, Loader, placement, replicas

DEVICES = ["/job:localhost/replica:0/task:0/device:GPU:0", "/job:localhost/replica:0/task:0/device:GPU:1"]
#: id_data rows: 3 float32 (12 bytes) + an int64 label (8 bytes).
ROW_BYTES = 20


@pytest.fixture
def two_gpus(monkeypatch):
    runtime = make_runtime(gpus=2)
    monkeypatch.setattr(placement, "gpu_runtime", lambda: runtime)
    monkeypatch.setattr(replicas, "strategy_replica_devices", lambda: list(DEVICES))
    monkeypatch.setattr(replicas, "gpu_ordinals", lambda devices: list(range(len(devices))))
    return runtime


def copy_does_not_fit(runtime, n, batch_size):
    """Free memory on each fake GPU such that a 1/2 share fits the 0.5 budget and a full copy does not."""
    part_rows = -(-batch_size // 2)
    share = -(-n // 2)
    share_need = share * ROW_BYTES + 4 * part_rows * ROW_BYTES + 24 * share
    runtime.state.free_bytes = 2 * share_need + 64


def part_ids(loader, position, epoch=None):
    """Each replica's sample ids for batch ``position`` (of the loader's epoch), and each part's fake GPU."""
    parts = prepared_parts(loader, position, loader.epoch if epoch is None else epoch)
    devices = loader.pipeline.replicas.stores[0].xp._state.devices if loader.plan.layout else None
    ids, homes = [], []
    for _, leaves in parts:
        ids.append(sample_ids(np.from_dlpack(leaves[0])))
        homes.append(devices.index(leaves[0].device))
        assert all(leaf.device == leaves[0].device for leaf in leaves)
    return ids, homes


def host_batches(n, batch_size, seed, epoch, **kwargs):
    x, y = id_data(n)
    loader = Loader(x, y, batch_size=batch_size, seed=seed, device="host", verbose=False, **kwargs)
    loader.set_epoch(epoch)
    return [sample_ids(loader[i][0]) for i in range(len(loader))]


# ------------------------------------------------------------ replicated
def test_a_copy_on_each_gpu_when_it_fits_and_the_single_device_order(two_gpus):
    x, y = id_data(300)
    loader = Loader(x, y, batch_size=32, seed=5, verbose=False)
    assert loader.plan.layout == "replicated" and loader.plan.gpus == (0, 1)
    assert "a copy of the data on each of the 2 replicas' GPUs (0, 1)" in str(loader.plan)
    assert [store.leaves[0].device for store in loader.pipeline.replicas.stores] == two_gpus.state.devices
    for epoch in (0, 1):
        expected = host_batches(300, 32, 5, epoch)
        for position in range(len(loader)):
            ids, homes = part_ids(loader, position, epoch)
            assert homes == [0, 1], "a replica's part was gathered off its own GPU"
            assert ids[0] + ids[1] == expected[position]  # the batch of one device, cut in two
            assert abs(len(ids[0]) - len(ids[1])) <= 1


def test_sequence_access_on_the_replicated_layout_uses_the_first_gpu(two_gpus):
    x, y = id_data(100)
    loader = Loader(x, y, batch_size=10, seed=2, verbose=False)
    two_gpus.state.gathers_on.clear()
    assert epoch_ids(loader) == [i for batch in host_batches(100, 10, 2, 0) for i in batch]
    assert set(two_gpus.state.gathers_on) == {0}


# --------------------------------------------------------------- sharded
@pytest.mark.parametrize(("n", "batch_size", "drop"), [(400, 32, False), (401, 32, True), (10, 4, False),
                                                       (1000, 14, True)])
def test_rows_sharded_across_gpus_when_a_copy_does_not_fit(two_gpus, n, batch_size, drop):
    copy_does_not_fit(two_gpus, n, batch_size)
    x, y = id_data(n)
    loader = Loader(x, y, batch_size=batch_size, seed=8, drop_remainder=drop, verbose=False)
    assert loader.plan.layout == "sharded", loader.plan
    assert "rows sharded across the 2 replicas' GPUs (0, 1), a 1/2 share on each" in str(loader.plan)
    sizes = [store.n for store in loader.pipeline.replicas.stores]
    assert sorted(sizes) == [n // 2, -(-n // 2)]
    assert len(loader) == (n // batch_size if drop else math.ceil(n / batch_size))
    seen_by_replica = []
    for epoch in (0, 1):
        per_replica = [[], []]
        for position in range(len(loader)):
            ids, homes = part_ids(loader, position, epoch)
            assert homes == [0, 1]
            for replica in (0, 1):
                assert len(ids[replica]) <= batch_size // 2
                per_replica[replica].extend(ids[replica])
        union = per_replica[0] + per_replica[1]
        assert len(union) == len(set(union)), "a sample was served twice in one epoch"
        if drop:
            assert len(union) == len(loader) * batch_size
        else:
            assert sorted(union) == list(range(n))
        seen_by_replica.append(per_replica)
    assert set(seen_by_replica[0][0]) <= set(range(n)) - set(seen_by_replica[1][1])  # fixed shares
    assert seen_by_replica[0][0] != seen_by_replica[1][0]  # each share reshuffled per epoch


def test_sequence_access_on_the_sharded_layout_assembles_the_whole_batch(two_gpus):
    copy_does_not_fit(two_gpus, 200, 20)
    x, y = id_data(200)
    loader = Loader(x, y, batch_size=20, seed=3, verbose=False)
    assert loader.plan.layout == "sharded"
    ids, _ = part_ids(loader, 4)
    assert sample_ids(loader[4][0]) == ids[0] + ids[1]
    assert two_gpus.state.peer_copies > 0
    assert sorted(epoch_ids(loader)) == list(range(200))


def test_resuming_replays_the_same_parts_on_every_gpu(two_gpus):
    copy_does_not_fit(two_gpus, 120, 12)
    x, y = id_data(120)
    first = Loader(x, y, batch_size=12, seed=11, verbose=False)
    first.set_epoch(3)
    state = first.get_state()
    expected = [part_ids(first, position, 3)[0] for position in range(len(first))]
    second = Loader(x, y, batch_size=12, seed=11, verbose=False)
    second.set_state(state)
    assert second.epoch == 3
    assert [part_ids(second, position)[0] for position in range(len(second))] == expected


def test_a_state_with_another_seed_is_refused_when_the_seed_chose_the_shares(two_gpus):
    copy_does_not_fit(two_gpus, 120, 12)
    x, y = id_data(120)
    state = Loader(x, y, batch_size=12, seed=11, verbose=False).get_state()
    other = Loader(x, y, batch_size=12, seed=99, verbose=False)
    with pytest.raises(ValueError, match=r"the state has seed=11, this loader seed=99.*Build the loader with seed=11"):
        other.set_state(state)


# ------------------------------------------------------ neither, and OOM
def test_no_per_gpu_layout_says_why_and_the_single_device_rule_decides(two_gpus):
    copy_does_not_fit(two_gpus, 400, 33)
    x, y = id_data(400)
    loader = Loader(x, y, batch_size=33, seed=1, verbose=False)
    assert loader.plan.layout == "" and loader.placement == "host"
    reason = str(loader.plan)
    assert "no copy per GPU for the 2 replicas" in reason
    assert "batch_size=33 is not a multiple of the 2 replicas" in reason


def test_neither_layout_fits_under_gpu_raises_with_the_numbers(two_gpus):
    two_gpus.state.free_bytes = 1000
    x, y = id_data(400)
    with pytest.raises(GPUUnavailableError, match=r"the data does not fit"):
        Loader(x, y, batch_size=32, seed=1, device="gpu", verbose=False)


def test_out_of_memory_on_the_second_gpu_falls_back_under_auto(two_gpus):
    two_gpus.state.fail_after_uploads = 2  # x and y reach GPU 0; GPU 1's first chunk fails
    x, y = id_data(100)
    with pytest.warns(RuntimeWarning) as caught:
        loader = Loader(x, y, batch_size=10, seed=1, verbose=False)
    messages = [str(warning.message) for warning in caught]
    assert any("upload to the replicas' GPUs (replicated) ran out of memory" in message for message in messages)
    # The single-device rule then tries one GPU, which fails too here, and lands on the host.
    assert any("the upload to the GPU ran out of memory" in message for message in messages)
    assert loader.plan.layout == "" and loader.pipeline.replicas is None and loader.placement == "host"
    assert "the upload to the replicas' GPUs (replicated) ran out of memory" in str(loader.plan)
    assert {0, 1} <= set(two_gpus.state.freed_on)  # both GPUs' pools released
    assert sorted(epoch_ids(loader)) == list(range(100))


def test_out_of_memory_on_the_second_gpu_raises_under_gpu(two_gpus):
    two_gpus.state.fail_after_uploads = 2
    x, y = id_data(100)
    with pytest.raises(GPUUnavailableError, match=r"upload to the replicas' GPUs \(replicated\) ran out of GPU memory"):
        Loader(x, y, batch_size=10, seed=1, device="gpu", verbose=False)


def test_outside_a_multi_gpu_strategy_there_is_no_layout(fake_gpu):
    x, y = id_data(50)
    loader = Loader(x, y, batch_size=10, seed=1, verbose=False)
    assert loader.placement == "gpu" and loader.plan.layout == "" and loader.pipeline.replicas is None


# ------------------------------------------------ TF device names -> CUDA
def fake_tensorflow(visible, logical):
    config = types.SimpleNamespace(
        get_visible_devices=lambda kind: [types.SimpleNamespace(name=f"/physical_device:GPU:{i}") for i in visible],
        list_logical_devices=lambda kind: list(range(logical)),
    )
    return types.SimpleNamespace(config=config)


@pytest.mark.parametrize(("devices", "visible", "logical", "expected"), [
    (DEVICES, [0, 1], 2, [0, 1]),
    (DEVICES, [1, 3], 2, [1, 3]),  # tf.config.set_visible_devices hid GPUs 0 and 2
    (DEVICES, [0], 2, None),  # virtual GPUs: two logical devices on one physical GPU
    (["/job:localhost/replica:0/task:0/device:CPU:0", DEVICES[1]], [0, 1], 2, None),
    ([DEVICES[0], DEVICES[0]], [0, 1], 2, None),
])
def test_replica_devices_map_to_cuda_devices(monkeypatch, devices, visible, logical, expected):
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tensorflow(visible, logical))
    assert replicas.gpu_ordinals(devices) == expected
