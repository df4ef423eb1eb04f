"""The Loader contract: structure, length, indexing, exactly-once, order, state, errors."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import epoch_ids, id_data, run_python, sample_ids

import gpuloader
from gpuloader import Loader


def make(n=100, batch_size=32, **kwargs):
    x, y = id_data(n)
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("verbose", False)
    return Loader(x, y, batch_size=batch_size, **kwargs)


def test_is_a_keras_pydataset():
    assert isinstance(make(), keras.utils.PyDataset)


@pytest.mark.parametrize(("n", "batch_size", "drop", "expected"), [
    (100, 32, False, 4), (100, 32, True, 3), (96, 32, False, 3), (96, 32, True, 3), (5, 10, False, 1),
])
def test_len_is_ceil_or_floor(n, batch_size, drop, expected):
    loader = make(n, batch_size, drop_remainder=drop)
    assert len(loader) == expected
    assert len(loader) == (n // batch_size if drop else math.ceil(n / batch_size))


def test_len_has_no_side_effects():
    loader = make()
    first = sample_ids(loader[0][0])
    for _ in range(5):
        len(loader)
    assert sample_ids(loader[0][0]) == first
    assert loader.epoch == 0


def test_batch_parts_follow_the_inputs():
    x, y = id_data(10)
    only_x = Loader(x, batch_size=4, verbose=False)[0]
    assert isinstance(only_x, tuple) and len(only_x) == 1
    ids = sample_ids(only_x[0])
    np.testing.assert_array_equal(only_x[0].numpy(), x[ids])
    weights = np.linspace(0, 1, 10).astype(np.float32)
    with_w = Loader(x, y, weights, batch_size=4, verbose=False)[0]
    assert len(with_w) == 3
    assert all(isinstance(part, tf.Tensor) for part in with_w)
    ids = sample_ids(with_w[0])
    for part, source in zip(with_w, (x, y, weights)):
        np.testing.assert_array_equal(part.numpy(), source[ids])


def test_nested_structures_keep_dict_keys_and_become_tuples():
    x, y = id_data(12)
    loader = Loader(
        {"image": x, "meta": [y, y * 2]}, (y, x), batch_size=5, shuffle=False, verbose=False
    )
    bx, by = loader[1]
    assert list(bx) == ["image", "meta"]
    assert isinstance(bx["meta"], tuple) and isinstance(by, tuple)
    assert sample_ids(bx["image"]) == [5, 6, 7, 8, 9]
    assert np.asarray(bx["meta"][1]).tolist() == [10, 12, 14, 16, 18]
    assert sample_ids(by[1]) == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32,
                                   np.float64, np.bool_])
def test_dtypes_are_kept(dtype):
    x = (np.arange(40).reshape(20, 2) % (2 if dtype is np.bool_ else 37)).astype(dtype)
    batch = Loader(x, x[:, 0], batch_size=8, shuffle=False, verbose=False)[1]
    assert batch[0].dtype.as_numpy_dtype == dtype
    assert batch[1].dtype.as_numpy_dtype == dtype
    np.testing.assert_array_equal(batch[0].numpy(), x[8:16])
    np.testing.assert_array_equal(batch[1].numpy(), x[8:16, 0])


def test_negative_index_counts_from_the_end_and_out_of_range_raises():
    loader = make(100, 32, shuffle=False)
    assert sample_ids(loader[-1][0]) == sample_ids(loader[3][0]) == list(range(96, 100))
    for bad in (4, -5, 100):
        with pytest.raises(IndexError, match="out of range"):
            loader[bad]
    with pytest.raises(TypeError, match="int"):
        loader[1.0]


def test_same_index_same_samples_within_an_epoch():
    loader = make()
    assert sample_ids(loader[2][0]) == sample_ids(loader[2][0])
    assert sample_ids(loader[2][1]) == sample_ids(loader[2][0])


@pytest.mark.parametrize("drop", [False, True])
def test_every_sample_exactly_once_per_epoch_with_rows_aligned(drop):
    x, y = id_data(103)
    weights = np.arange(103, dtype=np.float64)
    loader = Loader(x, y, weights, batch_size=10, seed=3, drop_remainder=drop, verbose=False)
    for _ in range(3):
        seen = []
        for i in range(len(loader)):
            bx, by, bw = loader[i]
            assert sample_ids(bx) == np.asarray(by).tolist() == np.asarray(bw).astype(int).tolist()
            seen.extend(np.asarray(by).tolist())
        if drop:
            assert len(seen) == 100 and len(set(seen)) == 100
        else:
            assert sorted(seen) == list(range(103))
        loader.on_epoch_end()


def test_shuffle_false_keeps_input_order():
    loader = make(50, 8, shuffle=False)
    assert epoch_ids(loader) == list(range(50))
    loader.on_epoch_end()
    assert epoch_ids(loader) == list(range(50))


def test_on_epoch_end_moves_to_the_next_order():
    loader = make(200, 50)
    first = epoch_ids(loader)
    loader.on_epoch_end()
    second = epoch_ids(loader)
    assert first != second and sorted(first) == sorted(second)
    assert loader.epoch == 1


def test_on_epoch_end_without_a_served_batch_is_a_no_op():
    loader = make()
    loader.on_epoch_end()
    loader.on_epoch_end()
    assert loader.epoch == 0


def test_same_seed_same_orders_and_order_depends_on_seed_and_epoch_only():
    a, b, c = make(seed=11), make(seed=11), make(seed=12)
    for _ in range(3):
        ids_a = epoch_ids(a)  # every batch once: the epoch is finished
        assert ids_a == epoch_ids(b)
        assert ids_a != epoch_ids(c)
        for loader in (a, b, c):
            loader.on_epoch_end()
    fresh = make(seed=11)
    fresh.set_epoch(3)
    assert epoch_ids(fresh) == epoch_ids(a)


def test_pinned_order_for_seed_1234():
    # Changing the permutation algorithm changes every user's order: do it on purpose.
    loader = Loader(np.arange(10), batch_size=10, seed=1234, verbose=False)
    assert np.asarray(loader[0][0]).tolist() == [9, 2, 4, 5, 7, 8, 1, 0, 6, 3]
    loader.on_epoch_end()
    assert np.asarray(loader[0][0]).tolist() == [6, 8, 1, 9, 7, 2, 5, 4, 0, 3]


def test_the_next_order_is_computed_ahead_and_is_the_same_order(monkeypatch):
    from gpuloader import orders as orders_lib

    asked = []

    def recording(call, *args):
        asked.append(args)
        return in_background(call, *args)

    in_background = orders_lib.in_background
    monkeypatch.setattr(orders_lib, "in_background", recording)
    loader = make(500, 50, seed=7)
    first = epoch_ids(loader)
    assert asked == [((7, 1),)]  # (seed, epoch 1), on its way while epoch 0 is served
    loader.on_epoch_end()
    fresh = make(500, 50, seed=7)
    fresh.set_epoch(1)
    assert epoch_ids(loader) == epoch_ids(fresh) != first
    # A state with another seed discards what was computed ahead for the old seed.
    loader.set_state({**make(500, 50, seed=8).get_state(), "epoch": 2})
    other = make(500, 50, seed=8)
    other.set_epoch(2)
    assert epoch_ids(loader) == epoch_ids(other)


def test_seed_none_draws_a_seed_at_construction():
    a, b = make(seed=None), make(seed=None)
    assert isinstance(a.seed, int) and a.seed != b.seed
    again = make(seed=a.seed)  # built independently, from the seed the first one drew
    for _ in range(3):
        assert epoch_ids(a) == epoch_ids(again) != epoch_ids(b)
        for loader in (a, b, again):
            loader.on_epoch_end()


ORDERS_SCRIPT = """
import json, sys
import numpy as np
from gpuloader import Loader
x = np.repeat(np.arange(100, dtype=np.float32)[:, None], 3, axis=1)
loader = Loader(x, np.arange(100), batch_size=32, seed=int(sys.argv[1]), verbose=False)
orders = []
for _ in range(3):
    orders.append([int(v) for i in range(len(loader)) for v in np.asarray(loader[i][1])])
    loader.on_epoch_end()
print(json.dumps(orders))
"""


def test_orders_are_the_same_in_another_process():
    """The order is a function of (seed, epoch) only: nothing of the process (hash salt, pid, RNG state)."""
    seed = 2**63 + 12345
    done = run_python(["-c", ORDERS_SCRIPT, str(seed)], PYTHONHASHSEED="12345")
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    np.random.seed(99)  # this process's global RNG state differs from the child's
    here = make(100, 32, seed=seed)
    for epoch in range(3):
        assert epoch_ids(here) == there[epoch], f"epoch {epoch} differs between processes"
        here.on_epoch_end()


def test_state_is_json_and_resumes_the_epoch_exactly():
    loader = make(300, 64, seed=99)
    for _ in range(2):
        epoch_ids(loader)
        loader.on_epoch_end()
    state = json.loads(json.dumps(loader.get_state()))
    assert {"seed", "epoch"} <= set(state) and state["epoch"] == 2
    expected = [sample_ids(loader[i][0]) for i in range(len(loader))]

    resumed = make(300, 64, seed=5)
    resumed.set_state(state)
    assert [sample_ids(resumed[i][0]) for i in range(len(resumed))] == expected
    resumed.on_epoch_end()
    loader.on_epoch_end()
    assert epoch_ids(resumed) == epoch_ids(loader)


def test_set_state_refuses_a_state_from_other_data():
    state = make(300, 64).get_state()
    with pytest.raises(ValueError, match=r"num_samples=300.*num_samples=301"):
        make(301, 64).set_state(state)
    with pytest.raises(ValueError, match="get_state"):
        make().set_state({"seed": 1})


def test_host_placement_and_plan_on_a_machine_without_gpu():
    loader = make()
    assert loader.placement == "host"
    assert "host" in str(loader.plan)
    assert loader.xp is np


def test_gpu_requested_without_gpu_raises_with_the_reason():
    x, y = id_data(10)
    with pytest.raises(gpuloader.GPUUnavailableError, match=r"device='gpu'.*(CuPy|CUDA)"):
        Loader(x, y, device="gpu", verbose=False)


def test_environment_variable_sets_the_default_device(monkeypatch):
    x, y = id_data(10)
    monkeypatch.setenv("GPULOADER_DEVICE", "gpu")
    with pytest.raises(gpuloader.GPUUnavailableError):
        Loader(x, y, verbose=False)
    assert Loader(x, y, device="host", verbose=False).placement == "host"  # the argument wins
    monkeypatch.setenv("GPULOADER_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"\$GPULOADER_DEVICE.*'tpu'"):
        Loader(x, y, verbose=False)


def test_inputs_are_preloaded_once_and_not_copied_when_contiguous():
    x, y = id_data(64)
    loader = Loader(x, y, batch_size=8, verbose=False)
    assert np.shares_memory(loader.pipeline.store.leaves[0], x)
    fortran = np.asfortranarray(x)
    stored = Loader(fortran, y, batch_size=8, verbose=False).pipeline.store.leaves[0]
    assert stored.flags.c_contiguous and not stored.flags.writeable


def test_lists_of_numbers_are_data():
    loader = Loader([1.0, 2.0, 3.0], [0, 1, 0], batch_size=2, shuffle=False, verbose=False)
    assert np.asarray(loader[0][0]).tolist() == [1.0, 2.0]


def test_transform_runs_on_the_gathered_batch_with_xp():
    images = (np.arange(20 * 4 * 4 * 3) % 256).astype(np.uint8).reshape(20, 4, 4, 3)
    labels = np.arange(20)
    seen = []

    def scale(batch, xp):
        seen.append(xp)
        x, y = batch
        return xp.astype(x, xp.float32) / 255.0, y

    loader = Loader(images, labels, batch_size=8, transform=scale, verbose=False)
    x, labels_0 = loader[0]
    assert x.dtype == tf.float32
    np.testing.assert_allclose(x.numpy(), images[labels_0.numpy()].astype(np.float32) / 255.0, rtol=1e-6)
    assert seen == [np] and loader.pipeline.store.leaves[0].dtype == np.uint8


def test_transform_that_returns_something_else_is_refused():
    x, y = id_data(10)
    loader = Loader(x, y, batch_size=4, transform=lambda batch, xp: batch[0], verbose=False)
    with pytest.raises(TypeError, match=r"must return a tuple \(x,\)"):
        loader[0]
    loader = Loader(x, y, batch_size=4, transform=lambda batch, xp: (batch[0].tolist(),), verbose=False)
    with pytest.raises(TypeError, match="not an array of the namespace xp"):
        loader[0]


def test_class_weight_becomes_sample_weight():
    x = np.zeros((6, 2), np.float32)
    y = np.array([0, 1, 1, 0, 2, 2])
    loader = Loader(x, y, batch_size=6, shuffle=False, class_weight={0: 1.0, 1: 2.0, 2: 0.5}, verbose=False)
    _, _, w = loader[0]
    assert np.asarray(w).tolist() == [1.0, 2.0, 2.0, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"no weight for class\(es\) \[2\]"):
        Loader(x, y, class_weight={0: 1.0, 1: 2.0}, verbose=False)
    onehot = np.eye(3, dtype=np.float32)[y]
    both = Loader(x, onehot, np.full(6, 2.0), batch_size=6, shuffle=False, class_weight={0: 1, 1: 2, 2: 3},
                  verbose=False)
    assert np.asarray(both[0][2]).tolist() == [2.0, 4.0, 4.0, 2.0, 6.0, 6.0]


BAD_INPUTS = [
    ("first dimensions differ", dict(x=np.zeros((10, 2)), y=np.zeros(9)), ValueError,
     r"same number of samples.*x has 10, y has 9"),
    ("nested lengths named", dict(x={"a": np.zeros((4, 2)), "b": np.zeros(5)}), ValueError,
     r"x\['a'\] has 4, x\['b'\] has 5"),
    ("batch_size zero", dict(x=np.zeros(4), batch_size=0), ValueError,
     r"batch_size must be a positive int; received 0"),
    ("batch_size float", dict(x=np.zeros(4), batch_size=2.5), ValueError, r"received 2.5"),
    ("batch_size bool", dict(x=np.zeros(4), batch_size=True), ValueError, r"received True"),
    ("empty data", dict(x=np.zeros((0, 3))), ValueError, r"empty: x has 0 samples"),
    ("scalar", dict(x=np.float32(3.0)), ValueError, r"0-d array"),
    ("object dtype", dict(x=np.array([object(), object()])), TypeError, r"dtype object"),
    ("string dtype", dict(x=np.array(["a", "b"])), TypeError, r"dtype <U1 \(string\)"),
    ("unknown device", dict(x=np.zeros(4), device="cuda"), ValueError, r"device must be one of.*'cuda'"),
    ("None x", dict(x=None), ValueError, r"x is None"),
    ("weights without y", dict(x=np.zeros(4), sample_weight=np.ones(4)), ValueError, r"without y"),
    ("seed negative", dict(x=np.zeros(4), seed=-1), ValueError, r"seed must be an int in \[0, 2\*\*64\)"),
    ("no batch left", dict(x=np.zeros(4), batch_size=8, drop_remainder=True), ValueError, r"leaves no batch"),
    ("multiprocessing", dict(x=np.zeros(4), use_multiprocessing=True), ValueError, r"use_multiprocessing=True"),
    ("unknown kwarg", dict(x=np.zeros(4), prefetch=3), TypeError, r"unexpected keyword argument\(s\) prefetch"),
    ("fraction", dict(x=np.zeros(4), gpu_memory_fraction=1.5), ValueError, r"gpu_memory_fraction.*1.5"),
]


@pytest.mark.parametrize(("case", "kwargs", "error", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_rule_value_and_fix(case, kwargs, error, message):
    kwargs = dict(kwargs)
    x = kwargs.pop("x")
    kwargs.setdefault("verbose", False)
    with pytest.raises(error, match=message):
        Loader(x, **kwargs)


@pytest.mark.parametrize("name", ["cache", "prefetch", "map", "take", "cardinality"])
def test_tf_data_methods_a_keras_tutorial_calls_next_say_what_the_loader_offers(name):
    loader = Loader(np.zeros((8, 2), np.float32), np.zeros(8), batch_size=4, verbose=False)
    with pytest.raises(AttributeError, match=rf"not a tf\.data\.Dataset, so it has no \.{name}\(\): \w"):
        getattr(loader, name)
    assert not hasattr(loader, name)
    with pytest.raises(AttributeError, match="'Loader' object has no attribute 'no_such_thing'"):
        loader.no_such_thing  # noqa: B018
