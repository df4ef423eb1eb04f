"""Which order each Keras epoch trains on, through fit, on the backend in KERAS_BACKEND.

Run by tests/test_keras_paths.py in a subprocess per backend:
``python _epoch_rule_script.py run DIR`` trains the scenarios and crashes a
BackupAndRestore run at epoch 2; ``python _epoch_rule_script.py resume DIR`` is the new
process that resumes it. Prints one JSON line.

Batches are identified by their sample ids (x[:, 0] is the id); the order a
Keras epoch trained on is found by matching its first training batch against
``permutation(seed, k)`` for k = 0, 1, 2, ...
"""

from __future__ import annotations

import json
import shutil
import sys

import keras
import numpy as np

import gpuloader
from gpuloader import permutation

N, BATCH, SEED = 96, 16, 5


def data():
    x = np.repeat(np.arange(N, dtype=np.float32)[:, None], 4, axis=1)
    y = (np.arange(N) % 2).astype(np.float32)
    return x, y


def order_of(first_ids):
    for k in range(12):
        if np.asarray(permutation(np, N, SEED, k))[:BATCH].tolist() == first_ids:
            return k
    return "input" if first_ids == list(range(BATCH)) else None


class Log:
    """Transform + callback: ids of every prepared batch, cut at each epoch's start."""

    def __init__(self):
        self.epochs: dict[int, list[list[int]]] = {}
        self.current = None

    def transform(self, batch, xp):
        if self.current is not None:
            self.epochs[self.current].append(np.asarray(batch[0])[:, 0].astype(int).tolist())
        return batch

    def callback(self, loader=None, probes=None):
        log = self

        class Mark(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                log.current = epoch
                log.epochs[epoch] = []
                if probes is not None:
                    probes.setdefault(epoch, {})["begin"] = ids(loader[0])

            def on_train_batch_end(self, batch, logs=None):
                if probes is not None and batch == 2:
                    probes.setdefault(log.current, {})["batch"] = ids(loader[0])

            def on_epoch_end(self, epoch, logs=None):
                if probes is not None:
                    probes.setdefault(epoch, {})["end"] = ids(loader[0])
                log.current = None

        return Mark()

    def orders(self):
        return {str(epoch): order_of(batches[0]) if batches else None for epoch, batches in self.epochs.items()}


def ids(batch):
    return np.asarray(keras.ops.convert_to_numpy(batch[0]))[:, 0].astype(int).tolist()[:BATCH]


def model():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile("sgd", "binary_crossentropy")
    return m


def loader(log, **kwargs):
    x, y = data()
    return gpuloader.Loader(x, y, batch_size=BATCH, seed=SEED, transform=log.transform, verbose=False, **kwargs)


class Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated preemption at epoch 2")


def run(directory):
    report = {}
    # A peek before fit does not shift the epochs.
    log = Log()
    train = loader(log)
    train[0]
    model().fit(train, epochs=3, verbose=0, callbacks=[log.callback()])
    report["peek"] = log.orders()
    # The same loader as training and validation data: training orders are not skipped.
    log = Log()
    train = loader(log)
    model().fit(train, validation_data=train, epochs=3, verbose=0, callbacks=[log.callback()])
    report["validation"] = log.orders()
    # Two consecutive fit(epochs=1) calls: two different orders.
    log, orders = Log(), []
    train = loader(log)
    m = model()
    for _ in range(2):
        m.fit(train, epochs=1, verbose=0, callbacks=[log.callback()])
        orders.append(log.orders()["0"])
    report["consecutive"] = orders
    # loader[0] inside callbacks returns the batch of the epoch being trained.
    log, probes = Log(), {}
    train = loader(log)
    train[0]
    model().fit(train, epochs=3, verbose=0, callbacks=[log.callback(train, probes)])
    report["callbacks"] = {str(e): {k: order_of(v) for k, v in p.items()} for e, p in probes.items()}
    # get_state/set_state + initial_epoch.
    log = Log()
    first = loader(log)
    model().fit(first, epochs=2, verbose=0)
    state = json.loads(json.dumps(first.get_state()))
    second = loader(log)
    second.set_state(state)
    model().fit(second, epochs=4, initial_epoch=2, verbose=0, callbacks=[log.callback()])
    report["state"] = {"epoch": state["epoch"], "orders": log.orders()}
    # predict on a shuffled loader: predictions in input order.
    x, _ = data()
    m = model()
    predicted = m.predict(loader(Log()), verbose=0)
    report["predict_in_input_order"] = bool(np.allclose(predicted, keras.ops.convert_to_numpy(m(x)), atol=1e-6))
    # BackupAndRestore: crash at epoch 2, then the same process resumes.
    log = Log()
    train = loader(log)
    backup = keras.callbacks.BackupAndRestore(directory + "/same")
    m = model()
    try:
        m.fit(train, epochs=4, verbose=0, callbacks=[backup, log.callback(), Crash()])
    except KeyboardInterrupt:
        pass
    m.fit(train, epochs=4, verbose=0, callbacks=[backup, log.callback()])
    report["backup_same_process"] = log.orders()
    # ... and a run that a new process resumes.
    log = Log()
    try:
        model().fit(loader(log), epochs=4, verbose=0,
                    callbacks=[keras.callbacks.BackupAndRestore(directory + "/new"), log.callback(), Crash()])
    except KeyboardInterrupt:
        pass
    report["backup_before_crash"] = log.orders()
    # A second training phase (after a warm-up fit of the same model) that crashes, resumed in a new process.
    log = Log()
    m, train = model(), loader(log)
    m.fit(train, epochs=2, verbose=0)
    try:
        m.fit(train, epochs=6, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(directory + "/phase2"), log.callback(), Crash3()])
    except KeyboardInterrupt:
        pass
    report["phase2_before_crash"] = log.orders()
    shutil.copytree(directory + "/phase2", directory + "/phase2_again")  # a second resume starts from here too
    return report


class Crash3(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 3:
            raise KeyboardInterrupt("simulated preemption at epoch 3")


def resume(directory):
    log = Log()
    model().fit(loader(log), epochs=4, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(directory + "/new"), log.callback()])
    report = {"backup_new_process": log.orders()}
    # The second phase resumed straight away, and after re-running the warm-up (a script run from the top).
    for name, warm_up, backup in (("phase2_resumed", False, "phase2"), ("phase2_rerun_resumed", True, "phase2_again")):
        log = Log()
        m, train = model(), loader(log)
        if warm_up:
            m.fit(train, epochs=2, verbose=0)
        m.fit(train, epochs=6, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(f"{directory}/{backup}"), log.callback()])
        report[name] = log.orders()
    return report


if __name__ == "__main__":
    mode, directory = sys.argv[1], sys.argv[2]
    print(json.dumps(run(directory) if mode == "run" else resume(directory)))
