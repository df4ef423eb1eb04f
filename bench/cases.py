"""One benchmark case, run alone in a fresh process; prints one JSON line.

Usage: ``python bench/cases.py CASE DATASET MODE [--rows N] [--epochs E]``;
disk mode: ``python bench/cases.py CASE npy disk --disk-dir DIR [--epochs E] [--batches B]``;
digits mode: ``python bench/cases.py CASE digits digits [--epochs E] [--digits-file NPZ]``

``bench/run.py`` (``runner.py``) starts one process per case and round (the
list of cases and their targets: ``host.py``): once a ``tf.data``
pipeline has run in a process, later work in that process runs about 2x slower
(shared/notes/pitfalls.md, item 5), so no two cases ever share a process.

Every case generates its data (``synthetic.make``), builds its loader or
pipeline, runs one warm-up epoch, then ``E`` timed epochs (``time.perf_counter``).
Every epoch serves all ``n`` rows in shuffled batches of 256 (the last one
smaller) and every case reads each batch's ``shape``, so nothing is skipped
lazily; a case that serves a different number of rows fails.

Mode ``epoch``: seconds to hand one epoch of batches to the consumer, reshuffle
included, without training. Mode ``fit``: seconds per epoch of ``model.fit`` on
a one-Dense-layer model, measured between consecutive ``on_epoch_end`` calls; a
case named ``NAME@spe32`` is case ``NAME`` compiled with ``steps_per_execution=32``.

Two tf.data peers: ``tfdata`` is the common idiom (every row through a
full-size ``shuffle`` buffer); ``tfdata_fast`` is what a careful user writes and
what Keras's own array adapter does: shuffle the indices (one
``tf.random.shuffle`` per epoch), slice them into batches and ``tf.gather`` the
rows of tensors made once (``map`` with ``AUTOTUNE`` parallelism, then
``prefetch``).

Mode ``digits``: a real dataset that ships inside scikit-learn's wheel
(``load_digits``, ``bench/digits.py``): a small model trained for ``E`` epochs
through each case, then the held-out accuracy (the same ``model.evaluate`` on
the same test arrays for every case) and the seconds per epoch.

Mode ``disk``: the data is a pair of ``.npy`` files already written by
``bench/host.py`` (``synthetic.write_npy``: ``x.npy`` of float32 rows of 3072
values and ``y.npy`` of int32 labels in ``--disk-dir``), read batch by batch
from memory maps. Each case runs a short warm-up (``min(B, 20)`` batches), then
``E`` timed epochs of the first ``B`` shuffled batches of a new epoch order (the
same amount for every case; ``bench/host.py`` passes a full epoch). Like for
like: ``seed`` and ``gpuloader1`` read with one thread, ``seed_workers`` (the
seed's PyDataset with ``workers=4``, prefetched by Keras's own enqueuer) and
``gpuloader`` with 4.
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

EPOCH_CASES = ("gather", "seed", "tfdata", "tfdata_fast", "gpuloader")
FIT_BASE_CASES = ("seed", "arrays", "tfdata", "tfdata_fast", "gpuloader")
SPE = 32  # the steps_per_execution of the ``@spe32`` fit cases
FIT_CASES = (*FIT_BASE_CASES, *(f"{case}@spe{SPE}" for case in FIT_BASE_CASES))
DISK_CASES = ("seed", "seed_workers", "tfdata", "gpuloader1", "gpuloader")
DIGITS_CASES = ("seed", "arrays", "tfdata", "gpuloader")
MODES = {"epoch": EPOCH_CASES, "fit": FIT_CASES, "disk": DISK_CASES, "digits": DIGITS_CASES}
DISK_DATASET = "npy"  # the disk mode's only dataset: the files synthetic.write_npy wrote
DIGITS_DATASET = "digits"  # the digits mode's only dataset: scikit-learn's load_digits
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
    return _time_tf_epochs(idiom_tf_dataset(x, y), len(x), epochs)


def fast_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = synthetic.BATCH_SIZE) -> Any:
    """The strong tf.data form, as Keras's array adapter builds it: shuffled indices, batched, rows gathered.

    ``x`` and ``y`` become tensors once; every pass draws a new permutation with
    one ``tf.random.shuffle`` (unseeded: a fresh order per epoch, as the other
    cases), slices it into batches of indices and ``tf.gather``s each batch's
    rows in a parallel ``map``; ``prefetch`` overlaps it with the consumer.
    """
    import tensorflow as tf

    n = len(x)
    x_t, y_t = tf.constant(x), tf.constant(y)
    batches = -(-n // batch_size)

    def batches_of(order: Any) -> Any:
        return tf.data.Dataset.range(batches).map(
            lambda i: order[i * batch_size : tf.minimum((i + 1) * batch_size, n)]
        )

    return (
        tf.data.Dataset.range(1)
        .map(lambda _: tf.random.shuffle(tf.range(n, dtype=tf.int64)))
        .flat_map(batches_of)
        .map(lambda rows: (tf.gather(x_t, rows), tf.gather(y_t, rows)), num_parallel_calls=tf.data.AUTOTUNE)
        .apply(tf.data.experimental.assert_cardinality(batches))  # as Keras's adapter: fit knows the steps
        .prefetch(tf.data.AUTOTUNE)
    )


def idiom_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = synthetic.BATCH_SIZE) -> Any:
    """The common tf.data idiom: ``from_tensor_slices((x, y)).shuffle(n).batch(b).prefetch(AUTOTUNE)``."""
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=SEED)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def epoch_tfdata_fast(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """tfdata_fast: one pass over :func:`fast_tf_dataset` per epoch (indices shuffled, rows gathered)."""
    return _time_tf_epochs(fast_tf_dataset(x, y), len(x), epochs)


def _epoch_timer(marks: list[float]) -> Any:
    """A Keras callback appending ``time.perf_counter()`` at the start of training and after every epoch."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            marks.append(time.perf_counter())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            marks.append(time.perf_counter())

    return EpochTimer()


def _time_tf_epochs(dataset: Any, n: int, epochs: int) -> tuple[float, list[float], dict[str, Any]]:
    """Time full passes over a tf.data pipeline of (x, y) batches."""

    def run_epoch() -> int:
        rows = 0
        for xb, yb in dataset:
            rows += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return rows

    return (*_time_epochs(run_epoch, n, epochs), {})


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


def build_model(name: str, sample_shape: tuple[int, ...], steps_per_execution: int = 1) -> Any:
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
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", steps_per_execution=steps_per_execution)
    return model


def fit_epochs(
    data: Any, sample_shape: tuple[int, ...], epochs: int, model: str = "dense", steps_per_execution: int = 1,
    **fit_kwargs: Any,
) -> tuple[float, list[float]]:
    """``model.fit(data, epochs=1 + epochs)`` on :func:`build_model`'s ``model``, SGD.

    Returns the warm-up epoch (from ``on_train_begin``, tracing included) and
    the timed epochs, each the wall time between consecutive ``on_epoch_end``
    calls, so work Keras does between epochs (e.g. a reshuffle) is counted.
    """

    network = build_model(model, sample_shape, steps_per_execution)
    marks: list[float] = []
    timer = _epoch_timer(marks)

    network.fit(data, epochs=1 + epochs, verbose=0, callbacks=[timer], **fit_kwargs)
    times = [later - earlier for earlier, later in itertools.pairwise(marks)]
    if len(times) != 1 + epochs:
        raise RuntimeError(f"fit ran {len(times)} epochs, expected {1 + epochs}")
    return times[0], times[1:]


def fit_seed(x: np.ndarray, y: np.ndarray, epochs: int, spe: int = 1) -> tuple[float, list[float], dict[str, Any]]:
    """seed: ``fit(SeedSequence(x, y, 256, shuffle=True))``; Keras wraps it in ``from_generator``.

    ``fit``'s default ``shuffle=True`` also shuffles the order of the batches, as for any PyDataset.
    """
    from seed_sequence import SeedSequence

    sequence = SeedSequence(x, y, synthetic.BATCH_SIZE, shuffle=True)
    return (*fit_epochs(sequence, x.shape[1:], epochs, steps_per_execution=spe), {})


def fit_arrays(x: np.ndarray, y: np.ndarray, epochs: int, spe: int = 1) -> tuple[float, list[float], dict[str, Any]]:
    """arrays: ``fit(x, y, batch_size=256, shuffle=True)``, Keras's own array path."""
    times = fit_epochs(
        x, x.shape[1:], epochs, steps_per_execution=spe, y=y, batch_size=synthetic.BATCH_SIZE, shuffle=True
    )
    return (*times, {})


def fit_tfdata(x: np.ndarray, y: np.ndarray, epochs: int, spe: int = 1) -> tuple[float, list[float], dict[str, Any]]:
    """tfdata: ``fit`` on the same pipeline as the epoch mode's tfdata case (the idiom)."""
    return (*fit_epochs(idiom_tf_dataset(x, y), x.shape[1:], epochs, steps_per_execution=spe), {})


def fit_tfdata_fast(
    x: np.ndarray, y: np.ndarray, epochs: int, spe: int = 1
) -> tuple[float, list[float], dict[str, Any]]:
    """tfdata_fast: ``fit`` on :func:`fast_tf_dataset` (indices shuffled and batched, rows gathered)."""
    return (*fit_epochs(fast_tf_dataset(x, y), x.shape[1:], epochs, steps_per_execution=spe), {})


def fit_gpuloader(
    x: np.ndarray, y: np.ndarray, epochs: int, spe: int = 1
) -> tuple[float, list[float], dict[str, Any]]:
    """gpuloader: ``fit(gpuloader.Loader(x, y, batch_size=256, ..., workers=1, device="host"))``."""
    loader = _make_loader(x, y)
    return (*fit_epochs(loader, x.shape[1:], epochs, steps_per_execution=spe), _loader_info(loader))


# ---------------------------------------------------------------- disk mode
# run_epoch(epoch, batches, after_batch[, first]) -> rows: the first ``batches`` batches (from ``first``) of
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

    def run_epoch(epoch: int, batches: int, after_batch: Callable[[], None], first: int = 0) -> int:
        rows = 0
        for i in range(first, first + batches):
            xb, yb = sequence[i]
            xt, yt = tf.convert_to_tensor(xb), tf.convert_to_tensor(yb)
            rows += xt.shape[0]
            assert yt.shape[0] == xt.shape[0]
            after_batch()
        sequence.on_epoch_end()
        return rows

    return run_epoch, {"source": "np.load(mmap_mode='r'), x[indices] per batch"}


def disk_seed_workers(x_path: Path, y_path: Path) -> tuple[DiskEpoch, dict[str, Any]]:
    """seed_workers: the seed's Sequence as a PyDataset with ``workers=4``, through Keras's own enqueuer.

    What ``fit`` does with a PyDataset whose ``workers > 1``: Keras's
    ``PyDatasetAdapter`` starts an ``OrderedEnqueuer`` (a thread pool of 4,
    ``max_queue_size=8`` as gpuloader's) that computes the next batches in order
    while the consumer works. Batches are taken from the adapter's NumPy
    iterator and passed through ``tf.convert_to_tensor``, as in ``seed``;
    ``on_epoch_begin``/``on_epoch_end`` of the adapter bracket every epoch
    (the latter reshuffles, inside the timing). The adapter is private Keras API
    (``keras.src``), which a benchmark may use.
    """
    import tensorflow as tf
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    from seed_sequence import SeedSequence

    x, y = np.load(x_path, mmap_mode="r"), np.load(y_path, mmap_mode="r")
    sequence = SeedSequence(
        x, y, synthetic.BATCH_SIZE, shuffle=True, workers=DISK_WORKERS, max_queue_size=DISK_MAX_QUEUE
    )

    def run_epoch(epoch: int, batches: int, after_batch: Callable[[], None]) -> int:
        # A fresh adapter per epoch: after an epoch cut short (the warm-up), Keras's enqueuer would go on
        # from where it stopped, so the next "epoch" would span two (its start costs a few ms, timed).
        adapter = PyDatasetAdapter(sequence, shuffle=False)
        adapter.on_epoch_begin()
        rows = 0
        iterator = adapter.get_numpy_iterator()
        try:
            for _ in range(batches):
                xb, yb = next(iterator)
                xt, yt = tf.convert_to_tensor(xb), tf.convert_to_tensor(yb)
                rows += xt.shape[0]
                assert yt.shape[0] == xt.shape[0]
                after_batch()
        finally:
            iterator.close()
            adapter.on_epoch_end()  # stops the enqueuer (joins its threads), then the seed reshuffles
        return rows

    info = {
        "source": "np.load(mmap_mode='r'); keras PyDatasetAdapter + OrderedEnqueuer",
        "workers": DISK_WORKERS,
        "max_queue_size": DISK_MAX_QUEUE,
    }
    return run_epoch, info


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

    def run_epoch(epoch: int, batches: int, after_batch: Callable[[], None], first: int = 0) -> int:
        if first:  # a pass over the rest of the epoch from batch ``first``, as after a resume there
            loader.set_state({**loader.get_state(), "epoch": epoch, "position": first})
        else:
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
    "seed_workers": disk_seed_workers,
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
    total_rows = int(np.load(paths[0], mmap_mode="r").shape[0])
    expected_rows = min(batches * synthetic.BATCH_SIZE, total_rows)  # a full epoch ends on a partial batch
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
        if rows != expected_rows:
            raise RuntimeError(f"an epoch served {rows} rows, expected {expected_rows}")
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
    full = -(-rows // synthetic.BATCH_SIZE)
    if batches == 0:
        batches = full
    if not 1 <= batches <= full:
        raise ValueError(f"--batches must be in [1, {full}] (0: a full epoch) for {rows} rows")
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
        "full_epoch": batches == full,
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


# ------------------------------------------------------------- digits mode
def run_digits_case(case: str, epochs: int, cache: Path | None = None) -> dict[str, Any]:
    """Train ``digits.build_model`` for ``epochs`` epochs through ``case``; held-out accuracy and s/epoch.

    Every case: the same split, the same initial weights (``set_random_seed``),
    batch ``digits.BATCH_SIZE``, shuffled every epoch; the held-out accuracy is
    ``model.evaluate`` on the same test arrays for every case. Epoch times are
    from ``on_train_begin``/``on_epoch_end`` marks; the first epoch (tracing)
    is reported apart and left out of the median.
    """
    import digits

    np.random.seed(SEED)
    start = time.perf_counter()
    x, y, x_test, y_test = digits.load(cache)
    data_s = time.perf_counter() - start
    size = digits.BATCH_SIZE
    fit_kwargs: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if case == "seed":
        from seed_sequence import SeedSequence

        data: Any = SeedSequence(x, y, size, shuffle=True)
    elif case == "arrays":
        data, fit_kwargs = x, {"y": y, "batch_size": size, "shuffle": True}
    elif case == "tfdata":
        data = idiom_tf_dataset(x, y, size)
    elif case == "gpuloader":
        data = gpuloader.Loader(x, y, batch_size=size, shuffle=True, seed=SEED, verbose=False, device="host")
        info = _loader_info(data)
    else:
        raise ValueError(f"no case {case!r} in mode 'digits'; cases: {', '.join(DIGITS_CASES)}")
    model = digits.build_model()
    marks: list[float] = []
    timer = _epoch_timer(marks)

    history = model.fit(data, epochs=epochs, verbose=0, callbacks=[timer], **fit_kwargs).history
    times = [later - earlier for earlier, later in itertools.pairwise(marks)]
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=len(x_test), verbose=0)
    return {
        "case": case,
        "dataset": DIGITS_DATASET,
        "mode": "digits",
        "rows": len(x),
        "test_rows": len(x_test),
        "batch_size": size,
        "batches": -(-len(x) // size),
        "data_s": data_s,
        "warmup_s": times[0],
        "epoch_s": times[1:],
        "median_s": statistics.median(times[1:]),
        "epochs": epochs,
        "train_accuracy": float(history["accuracy"][-1]),
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "info": info,
    }


CASES: dict[tuple[str, str], Callable[..., tuple[float, list[float], dict[str, Any]]]] = {
    ("epoch", "seed"): epoch_seed,
    ("epoch", "tfdata"): epoch_tfdata,
    ("epoch", "tfdata_fast"): epoch_tfdata_fast,
    ("epoch", "gather"): epoch_gather,
    ("epoch", "gpuloader"): epoch_gpuloader,
    ("fit", "seed"): fit_seed,
    ("fit", "arrays"): fit_arrays,
    ("fit", "tfdata"): fit_tfdata,
    ("fit", "tfdata_fast"): fit_tfdata_fast,
    ("fit", "gpuloader"): fit_gpuloader,
}


def split_case(case: str) -> tuple[str, int]:
    """``"arrays@spe32"`` -> ``("arrays", 32)``; a plain name -> ``(name, 1)``."""
    base, _, spe = case.partition("@spe")
    return base, int(spe) if spe else 1


def run_case(case: str, dataset: str, mode: str, rows: int | None, epochs: int) -> dict[str, Any]:
    """Generate the data, run one case and return its figures (seconds)."""
    base, spe = split_case(case)
    if (mode, base) not in CASES or case not in MODES[mode]:
        raise ValueError(f"no case {case!r} in mode {mode!r}; cases: {', '.join(MODES.get(mode, ()))}")
    np.random.seed(SEED)  # the seed Sequence shuffles with the global NumPy RNG
    start = time.perf_counter()
    x, y = synthetic.make(dataset, rows)
    data_s = time.perf_counter() - start
    run = CASES[mode, base]
    warmup_s, epoch_s, info = run(x, y, epochs, spe) if spe != 1 else run(x, y, epochs)
    n = len(x)
    return {
        "steps_per_execution": spe,
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
    parser.add_argument("dataset", choices=[*sorted(synthetic.SPECS), DISK_DATASET, DIGITS_DATASET])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--rows", type=int, default=None, help="samples (default: the dataset's full size)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after the warm-up (default 5)")
    parser.add_argument("--disk-dir", type=Path, default=None, help="disk mode: folder holding x.npy and y.npy")
    parser.add_argument("--digits-file", type=Path, default=None, help="digits mode: the split saved by host.py")
    parser.add_argument(
        "--batches", type=int, default=0, help="disk mode: timed batches per epoch (default 0: a full epoch)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if (args.mode == "disk") != (args.dataset == DISK_DATASET):
        parser.error(f"mode 'disk' goes with dataset {DISK_DATASET!r}, and only it")
    if (args.mode == "digits") != (args.dataset == DIGITS_DATASET):
        parser.error(f"mode 'digits' goes with dataset {DIGITS_DATASET!r}, and only it")
    if args.case not in MODES[args.mode]:
        parser.error(f"no case {args.case!r} in mode {args.mode!r}; cases: {', '.join(MODES[args.mode])}")
    if args.mode == "digits":
        result = run_digits_case(args.case, args.epochs, args.digits_file)
    elif args.mode == "disk":
        if args.disk_dir is None:
            parser.error("mode 'disk' needs --disk-dir (bench/host.py writes the files)")
        result = run_disk_case(args.case, args.disk_dir, args.epochs, args.batches)
    else:
        result = run_case(args.case, args.dataset, args.mode, args.rows, args.epochs)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
