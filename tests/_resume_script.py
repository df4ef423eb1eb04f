"""Resumed runs against uninterrupted ones, through fit, on the backend in KERAS_BACKEND.

Run by tests/test_resume.py, each mode in its own process:

- ``python _resume_script.py reference DIR CASE...``: the uninterrupted runs;
- ``python _resume_script.py crash DIR CASE``: the same run, killed (SIGKILL) at a step;
- ``python _resume_script.py resume DIR CASE...``: a new process that resumes the killed runs.

Every training step's sample ids are appended to ``DIR/<CASE>-<mode>.jsonl`` (one
line per step) by an eager layer that reads the id column of x, so the files
say, step for step, which samples each run trained. Warnings the loader gave are
written to ``DIR/<CASE>-<mode>-warnings.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path

import keras
import numpy as np

import gpuloader

N, BATCH, SEED = 40, 4, 11  # 10 batches per epoch
LOG: dict[str, object] = {"file": None}


@keras.saving.register_keras_serializable(package="gpuloader_resume_test")
class Record(keras.layers.Layer):
    """Writes the sample ids (last column of x) of every training step, then drops the column."""

    def call(self, inputs, training=None):
        if training and LOG["file"] is not None:
            ids = np.asarray(keras.ops.convert_to_numpy(inputs[:, -1]), dtype=np.float64).astype(int).tolist()
            LOG["file"].write(json.dumps(ids) + "\n")
            LOG["file"].flush()
        return inputs[:, :-1]


class Kill(keras.callbacks.Callback):
    """SIGKILL this process after its ``at``-th training step (after the callbacks before it saved)."""

    def __init__(self, at):
        super().__init__()
        self.at, self.count = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def data(scale=1.0):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(N, 3)).astype(np.float32) * scale
    x = np.concatenate([features, np.arange(N, dtype=np.float32)[:, None]], axis=1)
    y = (features.sum(axis=1) > 0).astype(np.float32)
    return x, y


def loader(scale=1.0):
    x, y = data(scale)
    return gpuloader.Loader(x, y, batch_size=BATCH, seed=SEED, verbose=False)


def model(activation="sigmoid", loss="binary_crossentropy", learning_rate=0.1):
    m = keras.Sequential([keras.Input((4,)), Record(), keras.layers.Dense(1, activation=activation)])
    m.compile(keras.optimizers.SGD(learning_rate), loss, run_eagerly=True)
    return m


def fit(m, train, directory, case, mode, backup=None, kill=None, **kwargs):
    """``m.fit(train, ...)``: the steps recorded, the kill and the backup as the mode says."""
    callbacks = [] if backup is None else [backup]
    if mode == "crash" and kill is not None:
        callbacks.append(Kill(kill))
    with open(Path(directory) / f"{case}-{mode}.jsonl", "a") as log:
        LOG["file"] = log
        try:
            return m.fit(train, verbose=0, callbacks=callbacks, **kwargs)
        finally:
            LOG["file"] = None


# ------------------------------------------------------------------ the cases
def finetune(directory, mode):
    """A loaded model whose optimizer already stepped 30 times; BackupAndRestore; killed in epoch 2."""
    pretrained = Path(directory) / "pretrained.keras"
    if not pretrained.exists():
        m = model()
        x, y = data(0.5)
        m.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)  # 30 optimizer steps
        m.save(pretrained)
    m = keras.models.load_model(pretrained)
    assert int(keras.ops.convert_to_numpy(m.optimizer.iterations)) == 30
    backup = keras.callbacks.BackupAndRestore(str(Path(directory) / "backup-finetune"))
    fit(m, loader(), directory, "finetune", mode, backup, kill=23, epochs=4)


def mixed(directory, mode):
    """mixed_float16 (its LossScaleOptimizer skips the steps that overflow), second phase killed in epoch 1."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        # Large inputs and an unbounded loss: the first scaled gradients overflow float16, and those steps are skipped.
        m, train = model(None, "mse", 1e-6), loader(scale=100.0)
        if mode != "resume":
            fit(m, train, directory, "mixed-phase1", mode, epochs=2)
            steps = int(keras.ops.convert_to_numpy(m.optimizer.iterations))
            (Path(directory) / f"mixed-{mode}-optimizer-steps.json").write_text(json.dumps(steps))
        backup = keras.callbacks.BackupAndRestore(str(Path(directory) / "backup-mixed"))
        fit(m, train, directory, "mixed", mode, backup, kill=13, epochs=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def first_epoch(directory, mode, backup_class=None, case="first_epoch"):
    """A second phase checkpointed every 3 steps (save_freq=3), killed after 5 steps of its first epoch."""
    backup_class = backup_class or gpuloader.BackupAndRestore
    m, train = model(), loader()
    if mode != "resume":
        fit(m, train, directory, f"{case}-phase1", mode, epochs=2)
    backup = backup_class(str(Path(directory) / f"backup-{case}"), save_freq=3)
    fit(m, train, directory, case, mode, backup, kill=5, epochs=3)


def first_epoch_keras(directory, mode):
    """The same with Keras's own callback: it resumes the epoch from its start."""
    first_epoch(directory, mode, keras.callbacks.BackupAndRestore, "first_epoch_keras")


def later_epoch(directory, mode):
    """gpuloader.BackupAndRestore(save_freq=3) killed in the middle of epoch 1: resumed in the middle."""
    m, train = model(), loader()
    backup = gpuloader.BackupAndRestore(str(Path(directory) / "backup-later_epoch"), save_freq=3)
    fit(m, train, directory, "later_epoch", mode, backup, kill=17, epochs=3)


def uneven_steps(directory, mode):
    """steps_per_epoch=4 over 10 batches, second phase killed just after a pass boundary."""
    m, train = model(), loader()
    if mode != "resume":
        fit(m, train, directory, "uneven_steps-phase1", mode, epochs=3, steps_per_epoch=4)
    backup = keras.callbacks.BackupAndRestore(str(Path(directory) / "backup-uneven_steps"))
    fit(m, train, directory, "uneven_steps", mode, backup, kill=11, epochs=6, steps_per_epoch=4)


def partial_fits(directory, mode):
    """Six fit(epochs=1, steps_per_epoch=4) calls in a loop, one log line per step; fits separated by []."""
    m, train = model(), loader()
    for _ in range(6):
        fit(m, train, directory, "partial_fits", mode, epochs=1, steps_per_epoch=4)
        with open(Path(directory) / f"partial_fits-{mode}.jsonl", "a") as log:
            log.write("[]\n")


CASES = {
    "finetune": finetune, "mixed": mixed, "first_epoch": first_epoch, "first_epoch_keras": first_epoch_keras,
    "later_epoch": later_epoch, "uneven_steps": uneven_steps, "partial_fits": partial_fits,
}


def main(mode, directory, cases):
    for case in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CASES[case](directory, mode)
        said = [str(w.message) for w in caught if str(w.message).startswith("gpuloader")]
        (Path(directory) / f"{case}-{mode}-warnings.json").write_text(json.dumps(said))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
