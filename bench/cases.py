"""One benchmark case, run alone in a fresh process; prints one JSON line.

Usage: ``python bench/cases.py CASE DATASET MODE [--rows N] [--epochs E]``

``bench/run.py`` starts one process per case and round: once a ``tf.data``
pipeline has run in a process, later work in that process runs about 2x slower
(shared/notes/pitfalls.md, item 5), so no two cases ever share a process.

Every case generates its data (``synthetic.make``), builds its loader or
pipeline, runs one warm-up epoch, then ``E`` timed epochs (``time.perf_counter``).
Every epoch serves all ``n`` rows in shuffled batches of 256 (the last one
smaller) and every case reads each batch's ``shape``, so nothing is skipped
lazily; a case that serves a different number of rows fails.

Mode ``epoch``: seconds to hand one epoch of batches to the consumer, reshuffle
included, without training. Mode ``fit``: seconds per epoch of ``model.fit`` on
a one-Dense-layer model, measured between consecutive ``on_epoch_end`` calls.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import synthetic

import gpuloader

EPOCH_CASES = ("seed", "tfdata", "gather", "gpuloader")
FIT_CASES = ("seed", "arrays", "tfdata", "gpuloader")
MODES = {"epoch": EPOCH_CASES, "fit": FIT_CASES}
SEED = 0


# --------------------------------------------------------------- epoch mode
def _time_epochs(run_epoch: Callable[[], int], n: int, epochs: int) -> tuple[float, list[float]]:
    """Run one warm-up epoch and ``epochs`` timed ones; each must serve ``n`` rows."""
    times = []
    for _ in range(1 + epochs):
        start = time.perf_counter()
        rows = run_epoch()
        times.append(time.perf_counter() - start)
        if rows != n:
            raise RuntimeError(f"an epoch served {rows} rows, expected {n}")
    return times[0], times[1:]


def epoch_seed(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """seed: the seed's Sequence (NumPy fancy-index per batch), each array through ``tf.convert_to_tensor``.

    ``on_epoch_end`` (a fresh ``np.arange`` shuffled with ``np.random.shuffle``)
    runs at the end of every epoch, inside the timing.
    """
    import tensorflow as tf
    from seed_sequence import SeedSequence

    sequence = SeedSequence(x, y, synthetic.BATCH_SIZE, shuffle=True)

    def run_epoch() -> int:
        rows = 0
        for i in range(len(sequence)):
            xb, yb = sequence[i]
            xt, yt = tf.convert_to_tensor(xb), tf.convert_to_tensor(yb)
            rows += xt.shape[0]
            assert yt.shape[0] == xt.shape[0]
        sequence.on_epoch_end()
        return rows

    return (*_time_epochs(run_epoch, len(x), epochs), {})


def epoch_tfdata(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """tfdata: ``from_tensor_slices((x, y)).shuffle(n).batch(256).prefetch(AUTOTUNE)``, one pass per epoch.

    A full-size shuffle buffer, so the order is a global shuffle like the
    others'; it is reshuffled at every iteration (the tf.data default).
    """
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=SEED)
        .batch(synthetic.BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )

    def run_epoch() -> int:
        rows = 0
        for xb, yb in dataset:
            rows += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return rows

    return (*_time_epochs(run_epoch, len(x), epochs), {})


def epoch_gather(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """gather: the limit. ``x[perm[i:i+256]], y[...]`` in NumPy with a fresh permutation per epoch; no TF.

    This process never imports TensorFlow: it is the cost of the copies alone.
    """
    rng = np.random.default_rng(SEED)
    n, size = len(x), synthetic.BATCH_SIZE

    def run_epoch() -> int:
        order = rng.permutation(n)
        rows = 0
        for start in range(0, n, size):
            rows_index = order[start : start + size]
            xb, yb = x[rows_index], y[rows_index]
            rows += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return rows

    return (*_time_epochs(run_epoch, n, epochs), {})


def epoch_gpuloader(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """gpuloader: ``loader[i]`` for every i (tf.Tensors through DLPack), then ``loader.on_epoch_end()``.

    ``device="host"``: this is the host benchmark; GPU figures are the device rows.
    """
    loader = _make_loader(x, y)

    def run_epoch() -> int:
        rows = 0
        for i in range(len(loader)):
            xb, yb = loader[i]
            rows += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        loader.on_epoch_end()
        return rows

    return (*_time_epochs(run_epoch, len(x), epochs), _loader_info(loader))


def _make_loader(x: np.ndarray, y: np.ndarray) -> Any:
    return gpuloader.Loader(
        x, y, batch_size=synthetic.BATCH_SIZE, shuffle=True, seed=SEED, verbose=False, workers=1, device="host"
    )


def _loader_info(loader: Any) -> dict[str, Any]:
    return {"placement": loader.placement, "plan": str(loader.plan), "workers": loader.workers}


# ----------------------------------------------------------------- fit mode
def _fit(data: Any, sample_shape: tuple[int, ...], epochs: int, **fit_kwargs: Any) -> tuple[float, list[float]]:
    """``model.fit(data, epochs=1 + epochs)`` on Input -> Flatten -> Dense(10, softmax), SGD.

    Returns the warm-up epoch (from ``on_train_begin``, tracing included) and
    the timed epochs, each the wall time between consecutive ``on_epoch_end``
    calls, so work Keras does between epochs (e.g. a reshuffle) is counted.
    """
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input(shape=sample_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(synthetic.NUM_CLASSES, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")

    marks: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            marks.append(time.perf_counter())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            marks.append(time.perf_counter())

    model.fit(data, epochs=1 + epochs, verbose=0, callbacks=[EpochTimer()], **fit_kwargs)
    times = [later - earlier for earlier, later in itertools.pairwise(marks)]
    if len(times) != 1 + epochs:
        raise RuntimeError(f"fit ran {len(times)} epochs, expected {1 + epochs}")
    return times[0], times[1:]


def fit_seed(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """seed: ``fit(SeedSequence(x, y, 256, shuffle=True))``; Keras wraps it in ``from_generator``.

    ``fit``'s default ``shuffle=True`` also shuffles the order of the batches, as for any PyDataset.
    """
    from seed_sequence import SeedSequence

    sequence = SeedSequence(x, y, synthetic.BATCH_SIZE, shuffle=True)
    return (*_fit(sequence, x.shape[1:], epochs), {})


def fit_arrays(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """arrays: ``fit(x, y, batch_size=256, shuffle=True)``, Keras's own array path."""
    return (*_fit(x, x.shape[1:], epochs, y=y, batch_size=synthetic.BATCH_SIZE, shuffle=True), {})


def fit_tfdata(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """tfdata: ``fit`` on the same pipeline as the epoch mode's tfdata case."""
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=SEED)
        .batch(synthetic.BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return (*_fit(dataset, x.shape[1:], epochs), {})


def fit_gpuloader(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """gpuloader: ``fit(gpuloader.Loader(x, y, batch_size=256, ..., workers=1, device="host"))``."""
    loader = _make_loader(x, y)
    return (*_fit(loader, x.shape[1:], epochs), _loader_info(loader))


CASES: dict[tuple[str, str], Callable[[np.ndarray, np.ndarray, int], tuple[float, list[float], dict[str, Any]]]] = {
    ("epoch", "seed"): epoch_seed,
    ("epoch", "tfdata"): epoch_tfdata,
    ("epoch", "gather"): epoch_gather,
    ("epoch", "gpuloader"): epoch_gpuloader,
    ("fit", "seed"): fit_seed,
    ("fit", "arrays"): fit_arrays,
    ("fit", "tfdata"): fit_tfdata,
    ("fit", "gpuloader"): fit_gpuloader,
}


def run_case(case: str, dataset: str, mode: str, rows: int | None, epochs: int) -> dict[str, Any]:
    """Generate the data, run one case and return its figures (seconds)."""
    if (mode, case) not in CASES:
        raise ValueError(f"no case {case!r} in mode {mode!r}; cases: {', '.join(MODES.get(mode, ()))}")
    np.random.seed(SEED)  # the seed Sequence shuffles with the global NumPy RNG
    start = time.perf_counter()
    x, y = synthetic.make(dataset, rows)
    data_s = time.perf_counter() - start
    warmup_s, epoch_s, info = CASES[mode, case](x, y, epochs)
    n = len(x)
    return {
        "case": case,
        "dataset": dataset,
        "mode": mode,
        "rows": n,
        "batch_size": synthetic.BATCH_SIZE,
        "batches": -(-n // synthetic.BATCH_SIZE),
        "data_s": data_s,
        "warmup_s": warmup_s,
        "epoch_s": epoch_s,
        "median_s": statistics.median(epoch_s),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "info": info,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted({case for cases in MODES.values() for case in cases}))
    parser.add_argument("dataset", choices=sorted(synthetic.SPECS))
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--rows", type=int, default=None, help="samples (default: the dataset's full size)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after the warm-up (default 5)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    result = run_case(args.case, args.dataset, args.mode, args.rows, args.epochs)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
