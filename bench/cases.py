"""One benchmark case, run alone in a fresh process; prints one JSON line.

Usage: ``python bench/cases.py CASE DATASET MODE [--rows N] [--epochs E]``;
disk mode: ``python bench/cases.py CASE npy disk --disk-dir DIR [--epochs E] [--batches B]``

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

Mode ``disk``: the data is a pair of ``.npy`` files already written by
``bench/run.py`` (``synthetic.write_npy``: ``x.npy`` of float32 rows of 3072
values and ``y.npy`` of int32 labels in ``--disk-dir``), read batch by batch
from memory maps. Each case runs a short warm-up (``min(B, 20)`` batches), then
``E`` timed epochs of the first ``B`` shuffled batches of a new epoch order (the
same amount for every case: a full epoch from a cold cache would be long).
Before every epoch (warm-up included), outside the timing, the files' pages are
evicted from the page cache (``pagecache.evict``: ``POSIX_FADV_DONTNEED``), so
every epoch reads from storage. Around every epoch the case records what stayed
cached after the eviction (``mincore``), the bytes read from storage
(``/proc/self/io``), CPU seconds (user, system) and page faults of the whole
process (``getrusage``), the peak ``RssAnon`` sampled after every batch above
the figure before the epoch, and ``VmHWM`` (reset before the epoch when the
kernel allows it; it counts mapped file pages too).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pagecache
import synthetic

import gpuloader

EPOCH_CASES = ("seed", "tfdata", "gather", "gpuloader")
FIT_CASES = ("seed", "arrays", "tfdata", "gpuloader")
DISK_CASES = ("seed", "tfdata", "gpuloader", "gpuloader1")
MODES = {"epoch": EPOCH_CASES, "fit": FIT_CASES, "disk": DISK_CASES}
DISK_DATASET = "npy"  # the disk mode's only dataset: the files synthetic.write_npy wrote
DISK_WORKERS = 4
DISK_MAX_QUEUE = 8
DISK_WARMUP_BATCHES = 20
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
MODELS = ("dense", "conv")


def build_model(name: str, sample_shape: tuple[int, ...]) -> Any:
    """``dense``: Input -> Flatten -> Dense(10, softmax), where feeding the data is most of a step.
    ``conv``: two small convolutions, pooling, Dense(10), where the model does real work too."""
    import keras

    keras.utils.set_random_seed(SEED)
    if name == "dense":
        layers = [keras.layers.Flatten()]
    elif name == "conv":
        layers = [
            keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        ]
    else:
        raise ValueError(f"model must be one of {MODELS}; received {name!r}")
    model = keras.Sequential(
        [keras.Input(shape=sample_shape), *layers, keras.layers.Dense(synthetic.NUM_CLASSES, activation="softmax")]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def fit_epochs(
    data: Any, sample_shape: tuple[int, ...], epochs: int, model: str = "dense", **fit_kwargs: Any
) -> tuple[float, list[float]]:
    """``model.fit(data, epochs=1 + epochs)`` on :func:`build_model`'s ``model``, SGD.

    Returns the warm-up epoch (from ``on_train_begin``, tracing included) and
    the timed epochs, each the wall time between consecutive ``on_epoch_end``
    calls, so work Keras does between epochs (e.g. a reshuffle) is counted.
    """
    import keras

    network = build_model(model, sample_shape)
    marks: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            marks.append(time.perf_counter())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            marks.append(time.perf_counter())

    network.fit(data, epochs=1 + epochs, verbose=0, callbacks=[EpochTimer()], **fit_kwargs)
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
    return (*fit_epochs(sequence, x.shape[1:], epochs), {})


def fit_arrays(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """arrays: ``fit(x, y, batch_size=256, shuffle=True)``, Keras's own array path."""
    return (*fit_epochs(x, x.shape[1:], epochs, y=y, batch_size=synthetic.BATCH_SIZE, shuffle=True), {})


def fit_tfdata(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """tfdata: ``fit`` on the same pipeline as the epoch mode's tfdata case."""
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=SEED)
        .batch(synthetic.BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return (*fit_epochs(dataset, x.shape[1:], epochs), {})


def fit_gpuloader(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """gpuloader: ``fit(gpuloader.Loader(x, y, batch_size=256, ..., workers=1, device="host"))``."""
    loader = _make_loader(x, y)
    return (*fit_epochs(loader, x.shape[1:], epochs), _loader_info(loader))


# ---------------------------------------------------------------- disk mode
# run_epoch(epoch, batches, after_batch) -> rows: the first ``batches`` batches of
# epoch ``epoch``'s order, calling ``after_batch()`` once each batch is in hand.
DiskEpoch = Callable[[int, int, Callable[[], None]], int]


def disk_seed(x_path: Path, y_path: Path) -> tuple[DiskEpoch, dict[str, Any]]:
    """seed: the seed's Sequence over ``np.load(path, mmap_mode="r")``: ``x[indices]`` on the memory map.

    Each batch goes through ``tf.convert_to_tensor``; ``on_epoch_end`` (a fresh
    shuffled ``np.arange``) ends every epoch, inside the timing.
    """
    import tensorflow as tf
    from seed_sequence import SeedSequence

    x, y = np.load(x_path, mmap_mode="r"), np.load(y_path, mmap_mode="r")
    sequence = SeedSequence(x, y, synthetic.BATCH_SIZE, shuffle=True)

    def run_epoch(epoch: int, batches: int, after_batch: Callable[[], None]) -> int:
        rows = 0
        for i in range(batches):
            xb, yb = sequence[i]
            xt, yt = tf.convert_to_tensor(xb), tf.convert_to_tensor(yb)
            rows += xt.shape[0]
            assert yt.shape[0] == xt.shape[0]
            after_batch()
        sequence.on_epoch_end()
        return rows

    return run_epoch, {"source": "np.load(mmap_mode='r'), x[indices] per batch"}


def disk_tfdata(x_path: Path, y_path: Path) -> tuple[DiskEpoch, dict[str, Any]]:
    """tfdata: ``Dataset.from_generator`` over the memory maps, ``.prefetch(AUTOTUNE)``.

    The generator draws a new permutation at every pass (``default_rng(0)``) and
    yields ``x[rows], y[rows]`` for its consecutive batches, in shuffled (not
    sorted) row order, with an ``output_signature``.
    """
    import tensorflow as tf

    x, y = np.load(x_path, mmap_mode="r"), np.load(y_path, mmap_mode="r")
    rng = np.random.default_rng(SEED)
    size = synthetic.BATCH_SIZE
    limit = [0]  # batches per pass, set before each epoch

    def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = rng.permutation(len(x))
        for i in range(limit[0]):
            rows = order[i * size : (i + 1) * size]
            yield x[rows], y[rows]

    signature = (
        tf.TensorSpec(shape=(None, *x.shape[1:]), dtype=tf.as_dtype(x.dtype)),
        tf.TensorSpec(shape=(None,), dtype=tf.as_dtype(y.dtype)),
    )
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(tf.data.AUTOTUNE)

    def run_epoch(epoch: int, batches: int, after_batch: Callable[[], None]) -> int:
        limit[0] = batches
        rows = 0
        for xb, yb in dataset:
            rows += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
            after_batch()
        return rows

    return run_epoch, {"source": "tf.data.Dataset.from_generator over np.load(mmap_mode='r')"}


def disk_gpuloader(x_path: Path, y_path: Path, workers: int = DISK_WORKERS) -> tuple[DiskEpoch, dict[str, Any]]:
    """gpuloader: ``Loader(x_path, y_path, device="disk", workers=..., max_queue_size=8)``.

    Iterated through ``loader.get_tf_dataset()``, the path ``fit`` takes (the
    only one where ``workers`` prepare batches ahead). An epoch cut after its
    first batches does not move the order on (``on_epoch_end`` only does after
    a full pass), so ``set_epoch`` selects each epoch's order. Closing the
    iterator (cancelling the batches prepared ahead, joining the threads) is
    inside the timing.
    """
    loader = gpuloader.Loader(
        str(x_path),
        str(y_path),
        batch_size=synthetic.BATCH_SIZE,
        shuffle=True,
        seed=SEED,
        verbose=False,
        device="disk",
        workers=workers,
        max_queue_size=DISK_MAX_QUEUE,
    )
    if loader.placement != "disk":
        raise RuntimeError(f"the loader placed the data on {loader.placement!r}, not 'disk'")

    def run_epoch(epoch: int, batches: int, after_batch: Callable[[], None]) -> int:
        loader.set_epoch(epoch)
        iterator = iter(loader.get_tf_dataset())
        rows = 0
        try:
            for _ in range(batches):
                xb, yb = next(iterator)
                rows += xb.shape[0]
                assert yb.shape[0] == xb.shape[0]
                after_batch()
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        loader.on_epoch_end()
        return rows

    return run_epoch, {**_loader_info(loader), "max_queue_size": DISK_MAX_QUEUE}


DISK: dict[str, Callable[[Path, Path], tuple[DiskEpoch, dict[str, Any]]]] = {
    "seed": disk_seed,
    "tfdata": disk_tfdata,
    "gpuloader": disk_gpuloader,
    "gpuloader1": lambda x_path, y_path: disk_gpuloader(x_path, y_path, workers=1),
}


class _Peaks:
    """``after_batch`` of the disk mode: the highest ``RssAnon`` and ``RssFile`` seen after any batch."""

    def __init__(self, probe: pagecache.MemoryProbe) -> None:
        self.probe = probe
        figures = probe.read()
        self.anon, self.file = figures["RssAnon"], figures["RssFile"]

    def __call__(self) -> None:
        figures = self.probe.read()
        self.anon = max(self.anon, figures["RssAnon"])
        self.file = max(self.file, figures["RssFile"])


def _time_disk_epochs(
    run_epoch: DiskEpoch, paths: list[Path], epochs: int, batches: int
) -> tuple[float, list[dict[str, Any]]]:
    """A short warm-up, then ``epochs`` timed epochs of ``batches`` batches, each after an eviction."""
    pagecache.evict(paths)  # the warm-up reads cold too, as the timed epochs will
    start = time.perf_counter()
    run_epoch(0, min(batches, DISK_WARMUP_BATCHES), lambda: None)
    warmup_s = time.perf_counter() - start
    probe = pagecache.MemoryProbe()
    records = []
    for epoch in range(1, 1 + epochs):
        pagecache.evict(paths)
        cached_after_eviction = sum(pagecache.resident_bytes(path)[0] for path in paths)
        peak_reset = probe.reset_peak()
        before = probe.read()
        peaks = _Peaks(probe)
        read_before = pagecache.storage_read_bytes()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        rows = run_epoch(epoch, batches, peaks)
        seconds = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        read_bytes = pagecache.storage_read_bytes() - read_before
        after = probe.read()
        if rows != batches * synthetic.BATCH_SIZE:
            raise RuntimeError(f"an epoch served {rows} rows, expected {batches * synthetic.BATCH_SIZE}")
        records.append(
            {
                "seconds": seconds,
                "cached_after_eviction_bytes": cached_after_eviction,
                "cached_after_epoch_bytes": sum(pagecache.resident_bytes(path)[0] for path in paths),
                "storage_read_bytes": read_bytes,
                "cpu_user_s": usage.ru_utime - usage_before.ru_utime,
                "cpu_sys_s": usage.ru_stime - usage_before.ru_stime,
                "major_faults": usage.ru_majflt - usage_before.ru_majflt,
                "minor_faults": usage.ru_minflt - usage_before.ru_minflt,
                "rss_anon_before_bytes": before["RssAnon"],
                "peak_rss_anon_bytes": peaks.anon,
                "peak_rss_anon_delta_bytes": peaks.anon - before["RssAnon"],
                "peak_rss_file_bytes": peaks.file,
                "vm_hwm_bytes": after["VmHWM"],
                "vm_hwm_reset": peak_reset,
            }
        )
    probe.close()
    return warmup_s, records


def run_disk_case(case: str, disk_dir: Path, epochs: int, batches: int) -> dict[str, Any]:
    """Open the ``.npy`` pair in ``disk_dir``, run one disk case and return its figures."""
    if case not in DISK:
        raise ValueError(f"no case {case!r} in mode 'disk'; cases: {', '.join(DISK_CASES)}")
    np.random.seed(SEED)  # the seed Sequence shuffles with the global NumPy RNG
    paths = [disk_dir / name for name in synthetic.DISK_FILES]
    rows = int(np.load(paths[0], mmap_mode="r").shape[0])
    if not 1 <= batches <= rows // synthetic.BATCH_SIZE:
        raise ValueError(f"--batches must be in [1, {rows // synthetic.BATCH_SIZE}] for {rows} rows")
    start = time.perf_counter()
    run_epoch, info = DISK[case](*paths)
    setup_s = time.perf_counter() - start
    warmup_s, records = _time_disk_epochs(run_epoch, paths, epochs, batches)
    epoch_s = [record["seconds"] for record in records]
    return {
        "case": case,
        "dataset": DISK_DATASET,
        "mode": "disk",
        "rows": rows,
        "file_bytes": sum(path.stat().st_size for path in paths),
        "batch_size": synthetic.BATCH_SIZE,
        "batches": batches,
        "data_s": setup_s,
        "warmup_batches": min(batches, DISK_WARMUP_BATCHES),
        "warmup_s": warmup_s,
        "epoch_s": epoch_s,
        "median_s": statistics.median(epoch_s),
        "page_cache": pagecache.METHOD + " before each epoch",
        "epochs": records,
        "peak_rss_anon_delta_bytes": max(record["peak_rss_anon_delta_bytes"] for record in records),
        "vm_hwm_bytes": max(record["vm_hwm_bytes"] for record in records),
        "storage_read_bytes": statistics.median(record["storage_read_bytes"] for record in records),
        "cached_after_eviction_bytes": max(record["cached_after_eviction_bytes"] for record in records),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "info": info,
    }


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
    parser.add_argument("dataset", choices=[*sorted(synthetic.SPECS), DISK_DATASET])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--rows", type=int, default=None, help="samples (default: the dataset's full size)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after the warm-up (default 5)")
    parser.add_argument("--disk-dir", type=Path, default=None, help="disk mode: folder holding x.npy and y.npy")
    parser.add_argument("--batches", type=int, default=300, help="disk mode: timed batches per epoch (default 300)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if (args.mode == "disk") != (args.dataset == DISK_DATASET):
        parser.error(f"mode 'disk' goes with dataset {DISK_DATASET!r}, and only it")
    if args.mode == "disk":
        if args.disk_dir is None:
            parser.error("mode 'disk' needs --disk-dir (bench/run.py writes the files)")
        if args.case not in DISK_CASES:
            parser.error(f"no case {args.case!r} in mode 'disk'; cases: {', '.join(DISK_CASES)}")
        result = run_disk_case(args.case, args.disk_dir, args.epochs, args.batches)
    else:
        result = run_case(args.case, args.dataset, args.mode, args.rows, args.epochs)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
