"""Run by tests/test_distribute.py in a fresh process: MirroredStrategy over 2 logical CPUs.

``python _mirrored_script.py LAYOUT``, LAYOUT one of:
- ``host``: the data in RAM; each replica's part is gathered and placed on its device;
- ``replicated`` / ``sharded``: two fake GPUs (tests/fake_gpu.py) stand in for the
  replicas' GPUs, logical CPU i playing GPU i, and the loader is built inside the
  strategy's scope, so it keeps a copy of the data (or a share of its rows) on each.
Prints one JSON line: what each replica saw per epoch, where, and fit's history.
"""

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
from fake_gpu import make_runtime  # noqa: E402

import gpuloader  # noqa: E402
from gpuloader import placement, replicas  # noqa: E402

LAYOUT = sys.argv[1] if len(sys.argv) > 1 else "host"


def refuse(*args, **kwargs):
    raise AssertionError("tf.data.Dataset.from_generator was called")


tf.data.Dataset.from_generator = refuse
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
n = 600
x = np.concatenate([rng.normal(size=(n, 8)), np.arange(n)[:, None]], axis=1).astype(np.float32)
y = (x[:, :4].sum(axis=1) > 0).astype(np.float32)

runtime = None
if LAYOUT != "host":
    runtime = make_runtime(gpus=2)
    if LAYOUT == "sharded":  # room for half of the data on each fake GPU, not for all of it
        runtime.state.free_bytes = 2 * (300 * 40 + 4 * 32 * 40 + 24 * 300) + 64
    placement.gpu_runtime = lambda: runtime
    replicas.gpu_ordinals = lambda devices: [int(name.rsplit(":", 1)[1]) for name in devices]
    with strategy.scope():
        loader = gpuloader.Loader(x, y, batch_size=64, seed=3, verbose=False)
else:
    loader = gpuloader.Loader(x, y, batch_size=64, seed=3, verbose=False)

# What each replica receives, read through the same path fit uses.
per_epoch = []
for _ in range(2):
    seen = {0: [], 1: []}
    devices_ok = True
    if runtime is not None:
        runtime.state.gathers_on.clear()
    with strategy.scope():
        batches = loader.get_tf_dataset()
    for value in batches:
        for replica, (bx, _) in enumerate(strategy.experimental_local_results(value)):
            seen[replica].extend(int(v) for v in bx.numpy()[:, -1])
            devices_ok &= bx.device.endswith(f"CPU:{replica}")
    loader.on_epoch_end()
    # Parts are gathered replica 0, replica 1, replica 0, ...: the fake GPUs each replica's parts came from.
    gathered_on = [sorted(set(runtime.state.gathers_on[i::2])) for i in (0, 1)] if runtime else None
    per_epoch.append({"seen": seen, "devices_ok": bool(devices_ok), "gathered_on": gathered_on})

with strategy.scope():
    model = keras.Sequential([
        keras.Input((9,)), keras.layers.Lambda(lambda t: t[:, :-1]), keras.layers.Dense(1, activation="sigmoid")
    ])
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy", metrics=["accuracy"])
history = model.fit(loader, epochs=4, verbose=0).history
print(json.dumps({"epochs": per_epoch, "loss": history["loss"], "accuracy": history["accuracy"],
                  "layout": loader.plan.layout, "plan": str(loader.plan)}))
