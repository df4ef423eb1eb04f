"""Other Keras backends: batches reach torch and JAX through their own DLPack import.

Keras picks its backend once per process, so each case runs in a subprocess
with KERAS_BACKEND set. CI installs both (torch from the machine's CPU wheel,
``jax[cpu]`` from the ``test`` extra); elsewhere a missing one is skipped with
the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gpuloader.gather import aligned_empty
from gpuloader.handoff import hand_off

FIT_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, keras, gpuloader
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) > 0).astype(np.float32)
    train = gpuloader.Loader(x, y, batch_size=32, seed=0, verbose=False)
    val = gpuloader.Loader(x, y, batch_size=100, shuffle=False, verbose=False)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=3, verbose=0).history
    predictions = model.predict(gpuloader.Loader(x, batch_size=100, shuffle=False, verbose=False), verbose=0)
    print(json.dumps({
        "batch_type": type(train[0][0]).__module__,
        "loss": history["loss"], "val_accuracy": history["val_accuracy"],
        "predictions": list(predictions.shape), "epoch": train.epoch,
    }))
    """
)


AUGMENT_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, keras, gpuloader
    from gpuloader import augment
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(256, 12, 10, 3), dtype=np.uint8)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype(np.float32)
    ops = [augment.RandomCrop(padding=2), augment.RandomFlip(), augment.Cutout(size=4)]
    train = gpuloader.Loader(x, y, batch_size=32, seed=3, augment=ops, workers=2, verbose=False)
    served = {}
    for i in range(len(train)):  # loader[i]: the backend's tensors of a training pass (epoch 0)
        images, labels = train[i]
        for image, label_row in zip(keras.ops.convert_to_numpy(images), train.pipeline.rows(i, 0, True)):
            served[int(label_row)] = image
    augment._host._FAST_PATH_ENABLED = False  # the array-API reference path
    try:
        want = augment.apply_augment(ops, x, np.arange(256, dtype=np.int64), 3, 0, np)
    finally:
        augment._host._FAST_PATH_ENABLED = True
    same = all(np.array_equal(served[i], want[i]) for i in range(256))
    train.on_epoch_end()
    model = keras.Sequential([keras.Input((12, 10, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    history = model.fit(train, epochs=2, verbose=0).history
    print(json.dumps({"batch_type": type(images).__module__, "same_as_reference": same,
                      "served": len(served), "loss": history["loss"]}))
    """
)


SCAN_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, jax, jax.numpy as jnp, gpuloader
    n = 50
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1)
    y = np.arange(n, dtype=np.int32)
    loader = gpuloader.Loader(x, y, batch_size=4, seed=2, verbose=False)  # 13 batches, the last of 2 samples
    loader.set_epoch(1)
    plain = [np.asarray(labels).tolist() for _, labels in loader.get_jax_iterator()]

    @jax.jit
    def steps(total, stacked):  # Keras master's steps_per_execution on JAX: one lax.scan over the stacked steps
        def step(carry, batch):
            features, labels = batch
            return carry + jnp.sum(features[:, 0]), labels
        return jax.lax.scan(step, total, stacked)

    loader.set_epoch(1)
    total, order, kinds = jnp.float32(0), [], []
    for item in loader.get_jax_iterator(super_batch=4):  # the call Keras master's epoch iterator makes
        if isinstance(item, list):  # a PartialBatchList: Keras runs its batches one by one
            kinds.append(f"partial {len(item)}")
            for features, labels in item:
                total = total + jnp.sum(jnp.asarray(features)[:, 0])
                order.append(np.asarray(labels).tolist())
        else:
            kinds.append(f"scan {item[0].shape[0]}")
            total, labels = steps(total, item)
            order.extend(np.asarray(labels).tolist())
    print(json.dumps({"total": float(total), "same_order": order == plain, "kinds": kinds}))
    """
)


def run_with_backend(backend: str, script: str = FIT_SCRIPT) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_fit_evaluate_predict_on_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed here; the {backend} backend test needs it")
    report = run_with_backend(backend)
    assert report["batch_type"].startswith({"torch": "torch", "jax": "numpy"}[backend])
    assert report["loss"][-1] < report["loss"][0]
    assert report["val_accuracy"][-1] > 0.8
    assert report["predictions"] == [512, 1]
    assert report["epoch"] == 3


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_augmented_batches_reach_the_backend_with_the_reference_bytes_and_fit_runs(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed here; the {backend} backend test needs it")
    report = run_with_backend(backend, AUGMENT_SCRIPT)
    assert report["batch_type"].startswith({"torch": "torch", "jax": "numpy"}[backend])
    assert report["served"] == 256 and report["same_as_reference"]
    assert all(np.isfinite(report["loss"]))


def test_super_batches_run_as_one_jax_scan_like_keras_master_asks():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed here; the JAX backend test needs it")
    report = run_with_backend("jax", SCAN_SCRIPT)
    assert report["kinds"] == ["scan 4", "scan 4", "scan 4", "partial 1"]
    assert report["same_order"] and report["total"] == sum(range(50))


def test_torch_hand_off_is_zero_copy():
    torch = pytest.importorskip("torch", reason="torch is not installed here")
    array = aligned_empty((64, 32), np.float32)
    array[:] = 1.5
    tensor = hand_off(array, "torch")
    assert isinstance(tensor, torch.Tensor)
    assert tensor.data_ptr() == array.ctypes.data
    assert float(tensor.sum()) == 1.5 * 64 * 32
