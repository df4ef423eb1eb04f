"""``Loader(augment=...)``: each sample's augmentation depends on (seed, epoch, sample) and nothing else.

Whatever the batch size, shuffling, worker threads, tier (host, disk, the
stand-in GPU) or shard layout, sample i of epoch e gets the same bytes; a
resumed epoch replays them; evaluation and prediction passes are not augmented.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from conftest import prepared, prepared_parts

from gpuloader import Loader, augment
from gpuloader.augment import apply_augment, fused
from gpuloader.gather import HostGather

N = 120


def images(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8), np.arange(n, dtype=np.int64)


def ops():
    return [augment.RandomCrop(padding=2), augment.RandomFlip(), augment.Cutout(size=3)]


class Jitter(augment.AugmentOp):
    """An op of one's own (it changes nothing)."""

    draws = 1

    def apply(self, images, bits, xp):
        return images + 0


def per_sample(batches) -> dict[int, bytes]:
    """sample id -> its image bytes, over batches of (x, y) with y the sample ids."""
    out = {}
    for batch in batches:
        x, y = (np.asarray(part) for part in batch[:2])
        for image, sample in zip(x, y.tolist()):
            assert sample not in out
            out[sample] = image.tobytes()
    return out


def served(loader) -> dict[int, bytes]:
    return per_sample(loader.get_numpy_iterator())


def expected(x, seed=7, epoch=0):
    """The contract, computed directly: the ops' array-API reference path over the whole dataset at once."""
    previous, augment._host._FAST_PATH_ENABLED = augment._host._FAST_PATH_ENABLED, False
    try:
        augmented = apply_augment(ops(), x, np.arange(len(x), dtype=np.int64), seed, epoch, np)
    finally:
        augment._host._FAST_PATH_ENABLED = previous
    return {i: augmented[i].tobytes() for i in range(len(x))}


def make(x, y, **kwargs):
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("batch_size", 16)
    return Loader(x, y, augment=ops(), verbose=False, **kwargs)


def test_each_sample_gets_its_keyed_augmentation_whatever_the_batch_size_shuffle_or_workers():
    x, y = images()
    want = expected(x)
    assert served(make(x, y)) == want
    assert served(make(x, y, batch_size=50, workers=3)) == want
    assert served(make(x, y, shuffle=False)) == want
    assert want != {i: x[i].tobytes() for i in range(N)}  # it did augment


@pytest.mark.skipif(fused.host_kernel() is None, reason=fused.host_kernel_missing() or "")
def test_in_ram_images_are_augmented_straight_from_the_store_without_a_gathered_copy(monkeypatch):
    # The host kernel reads the stored images itself (fused with the gather); the gather copies only y.
    x, y = images()
    sources, copied = [], []
    real_kernel = fused.gather_augment_host

    def kernel(table, source, *args, **kwargs):
        sources.append(source)
        return real_kernel(table, source, *args, **kwargs)

    monkeypatch.setattr(fused, "gather_augment_host", kernel)
    loader = make(x, y)
    # The store's gather, built again over leaves that record which ones it copies.
    monkeypatch.setattr(loader.pipeline.store, "fused_gather", HostGather(recording(loader, copied)))
    assert served(loader) == expected(x)
    assert len(sources) == len(loader) and all(np.shares_memory(source, x) for source in sources)
    assert copied == [1] * len(loader)  # the gather copied leaf 1 (y) only


def recording(loader, copied):
    """The store's leaves, each wrapped so that a gather copying it records its index."""
    return [_Recorded(leaf, index, copied) for index, leaf in enumerate(loader.pipeline.store.leaves)]


class _Recorded:
    def __init__(self, leaf, index, copied):
        self._leaf, self._index, self._copied = leaf, index, copied

    def take(self, *args, **kwargs):
        self._copied.append(self._index)
        return self._leaf.take(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._leaf, name)


def test_another_epoch_draws_again_and_a_resume_replays_the_epoch_exactly():
    x, y = images()
    loader = make(x, y)
    first = served(loader)
    second = served(loader)
    assert second == expected(x, epoch=1) != first
    resumed = make(x, y)
    resumed.set_state({**loader.get_state(), "epoch": 1})
    assert served(resumed) == second


def test_the_disk_tier_gives_the_same_bytes(tmp_path):
    x, y = images()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    disk = Loader(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), batch_size=16, seed=7, augment=ops(),
                  device="disk", verbose=False)
    assert disk.placement == "disk"
    assert served(disk) == expected(x)


@pytest.mark.parametrize("kernel", ["fused kernel", "ops one by one"])
def test_the_stand_in_gpu_gives_the_same_bytes_as_the_host(fake_gpu, monkeypatch, kernel):
    # The pipeline hands built-in ops to the runtime's fused kernel (_cuda.GatherAugment on a GPU),
    # and runs them one by one through the array API where the runtime has none for them.
    if kernel == "fused kernel" and fused.host_kernel() is None:
        pytest.skip(fused.host_kernel_missing())
    if kernel == "ops one by one":
        monkeypatch.setattr(fake_gpu, "gather_augment", lambda table, leaf: None)
    x, y = images()
    loader = make(x, y, device="gpu")
    assert loader.placement == "gpu"
    batches = [prepared(loader, i)[1] for i in range(len(loader))]
    assert per_sample([(np.asarray(bx), np.asarray(by)) for bx, by in batches]) == expected(x)
    assert fake_gpu.state.augment_kernels == (len(loader) if kernel == "fused kernel" else 0)


def test_worker_shards_together_see_the_draws_of_one_process():
    x, y = images()
    union = {}
    for index in range(3):
        shard = make(x, y, batch_size=10, num_shards=3, shard_index=index)
        part = served(shard)
        assert not set(part) & set(union)
        union.update(part)
    assert union == expected(x)


def test_evaluation_and_prediction_passes_are_not_augmented():
    import keras

    x, y = images()
    loader = make(x, y)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    seen = []

    def spy(batch, xp):
        seen.append(np.asarray(batch[0]).copy())
        return batch

    spying = Loader(x, y, batch_size=16, seed=7, augment=ops(), transform=spy, verbose=False)
    model.predict(spying, verbose=0)
    model.evaluate(spying, verbose=0)
    assert np.array_equal(np.concatenate(seen), np.concatenate([x, x]))  # input order, untouched
    seen.clear()
    model.fit(spying, epochs=1, verbose=0)
    assert not np.array_equal(np.sort(np.concatenate(seen), axis=0), np.sort(x, axis=0))
    assert served(loader) == expected(x)


def test_evaluation_and_prediction_keep_a_final_normalize_and_drop_the_random_ops(fake_gpu_or_host):
    # The model trains on normalised floats; evaluating it on raw uint8 images would silently score another input.
    import keras

    x, y = images(40)
    normalize = augment.Normalize(mean=[120.0, 110.0, 100.0], std=[60.0, 50.0, 40.0])
    loader = Loader(x, y.astype(np.float32), batch_size=16, seed=7, augment=[*ops(), normalize],
                    device=fake_gpu_or_host, verbose=False)
    want = apply_augment([normalize], x, np.arange(len(x), dtype=np.int64), 7, 0, np)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    got = []

    class Peek(keras.callbacks.Callback):  # loader[i] in a callback of evaluate: what evaluate serves
        def on_test_batch_end(self, batch, logs=None):
            got.append(np.asarray(loader[batch][0]))

    model.evaluate(loader, verbose=0, callbacks=[Peek()])
    assert got[0].dtype == np.float32 and np.array_equal(np.concatenate(got), want)
    np.testing.assert_allclose(model.predict(loader, verbose=0), model(want).numpy(), rtol=1e-5, atol=1e-5)
    trained = np.concatenate([np.asarray(loader[i][0]) for i in range(len(loader))])
    assert trained.dtype == np.float32 and not np.array_equal(np.sort(trained, axis=0), np.sort(want, axis=0))


@pytest.fixture(params=["host", "gpu"])
def fake_gpu_or_host(request):
    """The device a loader is built on: the host, or the stand-in GPU (tests/fake_gpu.py)."""
    if request.param == "gpu":
        request.getfixturevalue("fake_gpu")
    return request.param


def test_a_dict_input_names_the_images_to_augment():
    x, y = images()
    extra = np.arange(N, dtype=np.float32)[:, None]
    loader = Loader({"image": x, "extra": extra}, y, batch_size=16, seed=7, augment={"image": ops()},
                    verbose=False)
    out = {}
    for batch in loader.get_numpy_iterator():
        for image, extra_value, sample in zip(batch[0]["image"], batch[0]["extra"], batch[1]):
            assert float(extra_value[0]) == sample
            out[int(sample)] = np.asarray(image).tobytes()
    assert out == expected(x)


@pytest.mark.parametrize(
    ("x_kind", "value", "message"),
    [
        ("array", {"image": []}, "x is one array"),
        ("dict", [augment.RandomFlip()], "must say which"),
        ("dict", {"missing": [augment.RandomFlip()]}, "which x does not have"),
        ("array", [augment.RandomFlip], "the class RandomFlip, not an op"),
        ("flat", [augment.RandomFlip()], "needs image arrays"),
        ("array", [augment.RandomCrop(padding=8)], "padding"),
    ],
)
def test_bad_augment_arguments_are_refused_at_construction(x_kind, value, message):
    x, y = images()
    data = {"array": x, "dict": {"image": x, "extra": y}, "flat": x.reshape(N, -1)}[x_kind]
    with pytest.raises((TypeError, ValueError), match=message):
        Loader(data, y, batch_size=16, seed=7, augment=value, verbose=False)


@pytest.mark.parametrize(("layer", "fix"), [("RandomFlip", r"gpuloader\.augment\.RandomFlip\(\.\.\.\)"),
                                           ("RandomRotation", "a gpuloader.augment op")])
def test_a_keras_layer_in_augment_is_refused_naming_the_op_to_use_or_the_model(layer, fix):
    import keras

    x, y = images()
    made = keras.layers.RandomFlip("horizontal") if layer == "RandomFlip" else keras.layers.RandomRotation(0.1)
    message = rf"is a Keras layer \({layer}\).*Fix: use {fix}, or put the layer in the model"
    with pytest.raises(TypeError, match=message):
        Loader(x, y, batch_size=16, seed=7, augment=[made], verbose=False)


def test_a_list_of_images_with_augment_is_told_to_stack_them():
    x, y = images()
    with pytest.raises(ValueError, match=r"x is a list of samples.*np\.stack\(images\)"):
        Loader(list(x), y, batch_size=16, augment=ops(), verbose=False)  # y has 120 samples, x[0] 8
    with pytest.raises(TypeError, match=r"x has several inputs \(\[0, 1, 2, \.\.\., 7\]: 8\).*np\.stack"):
        Loader(list(x[:8]), y[:8], batch_size=4, augment=ops(), verbose=False)


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_gpus_under_a_strategy_give_each_sample_its_draws(monkeypatch, layout):
    from fake_gpu import make_runtime

    from gpuloader import placement, replicas

    x, y = images()
    runtime = make_runtime(gpus=2)
    row_bytes = 8 * 8 * 3 + 8
    if layout == "sharded":  # a 1/2 share fits the 0.5 budget, a whole copy does not
        share = N // 2
        runtime.state.free_bytes = 2 * (share * row_bytes + 4 * 8 * row_bytes + 24 * share) + 64
    monkeypatch.setattr(placement, "gpu_runtime", lambda: runtime)
    monkeypatch.setattr(replicas, "strategy_replica_devices", lambda: ["/gpu:0", "/gpu:1"])
    monkeypatch.setattr(replicas, "gpu_ordinals", lambda devices: [0, 1])
    loader = make(x, y, batch_size=16, drop_remainder=True)
    assert loader.plan.layout == layout
    parts = [part for i in range(len(loader)) for part in prepared_parts(loader, i, 0)]
    got = per_sample([(np.from_dlpack(bx), np.from_dlpack(by)) for _, (bx, by) in parts])
    want = expected(x)
    assert len(got) == len(loader) * 16 and all(got[i] == want[i] for i in got)


# ------------------------------------------------------------------ inputs sharing or not sharing draws
def two_inputs(second_ops, image_shape=(8, 8, 3)):
    x, y = images()
    second = x if image_shape == (8, 8, 3) else x[..., 0]
    return x, second, y, {"first": ops(), "second": second_ops}


def test_an_image_and_its_mask_with_equal_ops_get_equal_draws_without_a_warning(recwarn):
    x, mask, y, plan = two_inputs([augment.RandomCrop(padding=2), augment.RandomFlip()], image_shape=(8, 8))
    plan["first"] = [augment.RandomCrop(padding=2), augment.RandomFlip()]
    loader = Loader({"first": x, "second": mask}, y, batch_size=16, seed=7, augment=plan, verbose=False)
    assert not [w for w in recwarn if "same stream" in str(w.message)]
    for batch in loader.get_numpy_iterator():
        inputs = batch[0]
        np.testing.assert_array_equal(np.asarray(inputs["first"])[..., 0], np.asarray(inputs["second"]))


def test_two_views_with_equal_ops_are_warned_about_and_another_stream_draws_anew():
    x, same, y, plan = two_inputs(ops())
    with pytest.warns(UserWarning, match=r"equal ops from the same stream.*augment.Stream\(ops, 1\)"):
        Loader({"first": x, "second": same}, y, batch_size=16, seed=7, augment=plan, verbose=False)
    plan["second"] = augment.Stream(ops(), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = Loader({"first": x, "second": same}, y, batch_size=16, seed=7, augment=plan, verbose=False)
    first, second = {}, {}
    for batch in loader.get_numpy_iterator():
        inputs, ids = batch[0], np.asarray(batch[1])
        first.update(zip(ids.tolist(), np.asarray(inputs["first"])))
        second.update(zip(ids.tolist(), np.asarray(inputs["second"])))
    order = sorted(first)
    ids = np.asarray(order, dtype=np.int64)
    previous, augment._host._FAST_PATH_ENABLED = augment._host._FAST_PATH_ENABLED, False
    try:  # the reference path, with each list's stream
        want_first = apply_augment(ops(), x[ids], ids, 7, 0, np)
        want_second = apply_augment(ops(), x[ids], ids, 7, 0, np, stream=1)
    finally:
        augment._host._FAST_PATH_ENABLED = previous
    np.testing.assert_array_equal(np.stack([first[i] for i in order]), want_first)
    np.testing.assert_array_equal(np.stack([second[i] for i in order]), want_second)
    assert np.mean(np.any(want_first != want_second, axis=(1, 2, 3))) > 0.9


def test_a_stream_on_the_stand_in_gpu_gives_the_hosts_bytes(fake_gpu):
    x, y = images()
    on_gpu = Loader(x, y, batch_size=16, seed=7, augment=augment.Stream(ops(), 3), device="gpu", verbose=False)
    on_host = Loader(x, y, batch_size=16, seed=7, augment=augment.Stream(ops(), 3), verbose=False)
    plain = Loader(x, y, batch_size=16, seed=7, augment=ops(), verbose=False)
    batches = [prepared(on_gpu, i)[1] for i in range(len(on_gpu))]
    gpu = per_sample([(np.asarray(bx), np.asarray(by)) for bx, by in batches])
    assert gpu == served(on_host) != served(plain)


@pytest.mark.parametrize("stream", [-1, 1.5, True, "1"])
def test_a_bad_stream_is_refused_with_the_fix(stream):
    with pytest.raises(ValueError, match=r"Stream\(stream=...\) must be an int >= 0"):
        augment.Stream(ops(), stream)


def test_a_state_names_the_augmentation_and_a_loader_with_other_ops_refuses_it():
    import json

    x, y = images()
    loader = make(x, y)
    served(loader)
    state = json.loads(json.dumps(loader.get_state()))  # JSON as it is
    as_read = [dataclasses.replace(op, data_format="channels_last") for op in ops()]  # the layout they read
    assert state["augment"] == [["x", 0, [repr(op) for op in as_read]]]
    resumed = make(x, y)
    resumed.set_state(state)
    assert served(resumed) == expected(x, epoch=1)
    for other in ([augment.RandomCrop(padding=3), augment.RandomFlip(), augment.Cutout(size=3)],
                  augment.Stream(ops(), 1), [*ops(), Jitter()], None):
        with pytest.raises(ValueError, match="the state was taken from a loader with augment="):
            Loader(x, y, batch_size=16, seed=7, augment=other, verbose=False).set_state(state)
    mine = Loader(x, y, batch_size=16, seed=7, augment=[*ops(), Jitter()], verbose=False).get_state()["augment"]
    assert mine[0][2][-1] == f"{Jitter.__qualname__}(draws=1)"  # no address that differs from process to process
    without = {key: value for key, value in state.items() if key != "augment"}  # cannot say which ops ran
    with pytest.raises(ValueError, match=r"lacks \['augment'\]"):
        make(x, y).set_state(without)


def test_the_plan_says_how_each_input_is_augmented(monkeypatch, tmp_path):
    x, y = images()
    if fused.host_kernel() is not None:
        assert "augment: x: the host kernel, reading the stored images" in make(x, y).plan.reason
        np.save(tmp_path / "x.npy", x)
        on_disk = Loader(str(tmp_path / "x.npy"), y, batch_size=16, augment=ops(), device="disk", verbose=False)
        assert "x.npy'): the host kernel on each gathered batch (images read from disk)" in on_disk.plan.reason
    mine = Loader(x, y, batch_size=16, augment=[*ops(), Jitter()], verbose=False)
    assert "augment: x: op by op on the NumPy path, since the list has an op of your own" in mine.plan.reason
    pair = Loader(x, x[..., 0], batch_size=16, augment={"x": ops(), "y": augment.Same("x", fill=255)},
                  verbose=False)
    assert "; y (x's draws): " in pair.plan.reason
    monkeypatch.setattr(fused, "_HOST_KERNEL_ENABLED", False)
    monkeypatch.setattr(fused, "host_kernel_missing", lambda: "the C extension is not built (for this test)")
    assert "x: op by op on the NumPy path, since the C extension is not built" in make(x, y).plan.reason
    assert "augment" not in Loader(x, y, batch_size=16, verbose=False).plan.reason


def test_the_plan_says_why_built_in_ops_run_op_by_op():
    """It said "the list has an op of your own" of a list of built-in ops whose Normalize reads float16 images."""
    x, _ = images()
    halves = Loader(x.astype(np.float16), batch_size=16, augment=[augment.RandomFlip(), augment.Normalize(1.0, 2.0)],
                    verbose=False)
    assert "op by op on the NumPy path, since the kernel's Normalize reads bool, integer, float32 and float64 " \
           "pixels, not float16" in halves.plan.reason
    many = Loader(x, batch_size=16, augment=[augment.Cutout(2)] * (fused.MAX_FILL_SLOTS + 1), verbose=False)
    assert f"since more than {fused.MAX_FILL_SLOTS} of its ops paint a fill" in many.plan.reason
    assert "op of your own" not in halves.plan.reason + many.plan.reason
