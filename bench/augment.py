"""Host benchmark of keyed augmentation (issue 12): gpuloader.augment against tf.data and Keras layers.

Usage: ``python bench/augment.py [--mode all|epoch|fit] [--rounds N] [--epochs E] [--tf-epochs E] [--rows N]
[--fit-samples N] [--fit-epochs E] [--cases a,b,...] [--out DIR]``

The default run (both modes, 2 rounds, fit on 10000 samples) takes about 3 to 4
minutes on a 2-core machine. ``--fit-samples 50000`` fits on the full CIFAR-10
size (about 5x the fit time); ``--mode epoch`` or ``--mode fit`` runs one half.

Data: the synthetic CIFAR-10 stand-in (``bench/synthetic.py``), 50000 x 32 x 32
x 3 uint8 and int32 labels (``--rows``, ``--fit-samples``); batches of 512 in a
new shuffled order every epoch. gpuloader's augmentation is
``RandomCrop(padding=4, mode="reflect")``, ``RandomFlip()``, ``Cutout(size=8)``.

Epoch cases (``--mode epoch``: the first four, plus the loader pair when
``gpuloader.Loader`` takes ``augment``, read from its source):

- ``plain``: the host gathered epoch, no augmentation: per batch the loader's
  own host gather (``gpuloader.gather.HostGather``: x and y into one aligned
  block) at the epoch's permutation. No TensorFlow in the process.
- ``augment``: what the loader does on the host with images in RAM: per batch
  the same gather block, y copied by the gather and x written by the fused
  kernel (``gpuloader.augment.fused.gather_augment_host``) straight from the
  stored images at the epoch's permutation. No TensorFlow in the process.
- ``tfdata``: ``from_tensor_slices((ids, x_padded, y)).shuffle(n).map(crop,
  flip, num_parallel_calls=AUTOTUNE).batch(512).prefetch(AUTOTUNE)``, the map
  being ``tf.image.stateless_random_crop`` back to 32 x 32 and
  ``tf.image.stateless_random_flip_left_right`` keyed by the sample id;
  ``x_padded`` is x reflect-padded by 4 once, outside the timing. No cutout,
  so it does less work than ``augment``.
- ``keras``: per batch a NumPy gather (``x[rows]``), then Keras 3 layers
  ``RandomTranslation(4/32, 4/32, fill_mode="reflect")`` and
  ``RandomFlip("horizontal")`` called on it (``training=True``, TensorFlow
  backend, on the host). No cutout.
- ``loader_plain`` / ``loader_augment``: the product itself: ``loader[i]`` for
  every batch, then ``on_epoch_end()``, of ``gpuloader.Loader(x, y,
  batch_size=512, seed=0, workers=1, device="host")`` without and with
  ``augment=[crop, flip, cutout]`` (``loader[i]`` outside ``fit`` is a training
  pass, so it is augmented). Batches come back as TensorFlow tensors.
- ``loader_normalize``: ``loader_augment`` with ``augment.Normalize(mean,
  std, dtype="float32")`` (CIFAR-10's channel means and deviations) as a final
  op: the fused kernel writes float32 batches in its one pass (issue 18).
- ``loader_normalize_transform``: today's way to the same batches: the fused
  crop + flip + cutout, then ``transform=`` doing the same normalisation in
  its strongest NumPy form (a cast into a 64-byte aligned float32 buffer, so
  the hand-off needs no copy, then ``subtract`` and ``multiply`` in place:
  three passes over the batch).
- ``tfdata_normalize``: tf.data doing the same four ops: the ``fit_tfdata``
  pipeline (crop, flip, cutout of tf ops per sample) with the normalisation
  applied to each batch (``(cast(x, float32) - mean) * (1 / std)``, one
  vectorised op on the batch, after ``batch``), ``prefetch(AUTOTUNE)``.
- ``keras_normalize``: per batch a NumPy gather, then Keras 3 layers
  ``RandomTranslation`` (reflect), ``RandomFlip``, ``RandomErasing`` as an 8 x
  8 cutout and ``Normalization(mean, variance)`` on it (``training=True``).
- ``augment_unfused``, ``augment_numpy``, ``augment_generic`` (only with
  ``--cases``): the plain gather, then ``apply_augment(..., overwrite=True)``
  on the gathered batch through the kernel (the loader's path for on-disk
  images), through the NumPy path (an install without a C compiler), or
  through the array-API reference path.

Fit cases (``--mode fit``): ``model.fit`` for one warm-up epoch plus
``--fit-epochs`` timed epochs (default 2) of a small conv net: uint8 input ->
``Rescaling(1/255)`` -> [augmentation layers, ``fit_keras`` only] ->
``Conv2D(16, 3)`` -> ``MaxPooling2D`` -> ``Conv2D(32, 3)`` ->
``GlobalAveragePooling2D`` -> ``Dense(10)``, SGD, ``jit_compile=False`` for all
(Keras turns XLA off on CPU-only machines anyway, and its random image layers
cannot be jit-compiled). An epoch is the time between consecutive
``on_epoch_end`` calls.

- ``fit_gpuloader``: ``fit(gpuloader.Loader(x, y, ..., augment=[crop 4, flip,
  cutout 8]))``, the ``loader_augment`` loader.
- ``fit_tfdata``: ``fit`` on tf.data doing the same three ops per sample:
  ``stateless_random_crop`` of the reflect-padded image,
  ``stateless_random_flip_left_right``, and a cutout written in tf ops (an 8 x
  8 square of zeros centred at a random pixel, clipped at the border, through
  ``tf.where``), keyed by ``Dataset.random(rerandomize_each_iteration=True)``
  zipped with the shuffled samples so every epoch draws anew; ``map`` with
  AUTOTUNE, ``batch(512)``, ``prefetch(AUTOTUNE)``.
- ``fit_keras``: ``fit(x, y, batch_size=512, shuffle=True)`` (Keras's own
  array path) with the augmentation as layers inside the model, after the
  ``Rescaling``: ``RandomTranslation(4/32, 4/32, fill_mode="reflect")``,
  ``RandomFlip("horizontal")``, and ``RandomErasing(factor=(1, 1),
  scale=(1/16, 1/16), fill_value=0)`` for the cutout: Keras 3 has no Cutout
  layer, and ``RandomErasing`` set so erases one 8 x 8 square per image (always
  inside the image, where Cutout clips at the border).
- ``fit_plain``: ``fit_gpuloader`` without ``augment``: the cost of the model
  and the feed alone, for reference.

Every case runs in a process of its own, and the cases are interleaved across
rounds (round 1: A B C D, round 2: A B C D, ...), as in ``bench/run.py``: after
``tf.data`` has run in a process, later work there runs slower. A case's figure
for a round is the median of its timed epochs (after a warm-up: one epoch, or
the first 10 batches of one for the TensorFlow epoch cases); its reported figure
is the median over rounds. Ratios are of those medians, from the same run. The
summary prints each target as met or MISSED: ``augment / plain <= 2`` and
``loader_augment / loader_plain <= 2``; ``tfdata`` and ``keras`` at least 3x
``augment`` and ``loader_augment``; ``loader_normalize_transform`` at least
1.5x ``loader_normalize``, and ``tfdata_normalize`` and ``keras_normalize`` at
least 20x it (issue 18); and the fit ratios (``fit_tfdata`` and
``fit_keras`` over ``fit_gpuloader``, ``fit_gpuloader / fit_plain``) as figures
with no target. Wall-clock seconds; each case's CPU seconds (all its threads:
tf.data uses several) and the load average around it are recorded too, since
this machine's 2 cores are shared.

Writes ``<out>/augment.json`` (default ``bench/results``). Exit status 0 when
every case ran, whether or not the targets are met; 1 when a case failed.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import synthetic  # noqa: E402

BATCH_SIZE = 512
PADDING = 4
CUTOUT = 8
SEED = 0
# CIFAR-10's per-channel pixel mean and standard deviation (0..255), the usual normalisation.
MEAN, STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
DEFAULT_CASES = ("plain", "augment", "tfdata", "keras")
LOADER_CASES = ("loader_plain", "loader_augment")
NORMALIZE_CASES = ("loader_normalize", "loader_normalize_transform", "tfdata_normalize", "keras_normalize")
FIT_DEFAULT_CASES = ("fit_gpuloader", "fit_tfdata", "fit_keras", "fit_plain")
OPTIONAL_CASES = ("augment_unfused", "augment_numpy", "augment_generic", *LOADER_CASES, *NORMALIZE_CASES)
TF_CASES = ("tfdata", "keras", *LOADER_CASES, *NORMALIZE_CASES)
#: The TensorFlow cases that take seconds an epoch, timed over ``--tf-epochs``; the loader cases (tens of
#: milliseconds) get ``--epochs`` like the NumPy ones: with one timed epoch their figure was whatever the
#: process's first full epoch met (300 ms instead of 40 ms for ``loader_plain`` in some runs).
SLOW_TF_CASES = ("tfdata", "keras", "tfdata_normalize", "keras_normalize")
TF_WARMUP_BATCHES = 10
CASE_TIMEOUT_S = 600
FIT_SAMPLES = 10000  # the default fit run; --fit-samples 50000 for the CIFAR-10 size
# (numerator, denominator, kind, bound): augment at most 2x plain; the baselines at least 3x augment.
# Kind "figure": a ratio printed for information, with no target.
TARGETS = (
    ("augment", "plain", "max", 2.0),
    ("tfdata", "augment", "min", 3.0),
    ("keras", "augment", "min", 3.0),
    ("loader_augment", "loader_plain", "max", 2.0),
    ("tfdata", "loader_augment", "min", 3.0),
    ("keras", "loader_augment", "min", 3.0),
    ("loader_normalize_transform", "loader_normalize", "min", 1.5),
    ("tfdata_normalize", "loader_normalize", "min", 20.0),
    ("keras_normalize", "loader_normalize", "min", 20.0),
    ("fit_tfdata", "fit_gpuloader", "figure", None),
    ("fit_keras", "fit_gpuloader", "figure", None),
    ("fit_gpuloader", "fit_plain", "figure", None),
)


def _ops() -> list[Any]:
    from gpuloader import augment

    return [augment.RandomCrop(padding=PADDING, mode="reflect"), augment.RandomFlip(), augment.Cutout(size=CUTOUT)]


def _normalize() -> Any:
    from gpuloader import augment

    return augment.Normalize(MEAN, STD, dtype="float32", data_format="channels_last")


def loader_takes_normalize() -> bool:
    """Whether ``gpuloader.augment`` has ``Normalize``, read from its source (no import of Keras here)."""
    spec = importlib.util.find_spec("gpuloader.augment")
    return spec is not None and "Normalize" in Path(spec.origin).read_text()


def loader_takes_augment() -> bool:
    """Whether ``gpuloader.Loader.__init__`` has an ``augment`` parameter, read from its source.

    Reading the source rather than ``inspect.signature(gpuloader.Loader)`` keeps Keras and TensorFlow out
    of the driver process (their start-up log ignores ``TF_CPP_MIN_LOG_LEVEL`` in TensorFlow 2.21).
    """
    try:
        spec = importlib.util.find_spec("gpuloader.loader")
        tree = ast.parse(Path(spec.origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "Loader":
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        params = [*item.args.posonlyargs, *item.args.args, *item.args.kwonlyargs]
                        return "augment" in {param.arg for param in params}
        return False
    except Exception:  # a loader being edited must not stop the benchmark
        return False


# ------------------------------------------------------------------ cases (each in its own process)
EpochFn = Callable[..., int]  # run(epoch, batches=None) -> rows served


def case_plain(x: np.ndarray, y: np.ndarray) -> EpochFn:
    from gpuloader.gather import HostGather
    from gpuloader.permutation import permutation

    gather = HostGather([x, y])  # the loader's store keeps one per store, its block layouts computed once

    def run(epoch: int, batches: int | None = None) -> int:
        order = permutation(np, len(x), SEED, epoch)
        served = 0
        for start in list(range(0, len(x), BATCH_SIZE))[:batches]:
            rows = order[start : start + BATCH_SIZE]
            xb, yb = gather(rows)
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def case_augment(x: np.ndarray, y: np.ndarray, path: str = "fused") -> EpochFn:
    """The host augmented epoch through one path (see the module docstring)."""
    from gpuloader import augment
    from gpuloader.augment import fused
    from gpuloader.gather import HostGather
    from gpuloader.permutation import permutation

    ops = augment.check_augment(_ops(), x.shape, x.dtype, "x")
    augment._host._FAST_PATH_ENABLED = path != "generic"
    fused._HOST_KERNEL_ENABLED = path in ("fused", "unfused")
    table = fused.fused_ops(ops, x.dtype, x.shape[3])
    if path in ("fused", "unfused") and fused.host_kernel() is None:
        raise RuntimeError(fused.host_kernel_missing())
    gather = HostGather([x, y])

    def run(epoch: int, batches: int | None = None) -> int:
        order = permutation(np, len(x), SEED, epoch)
        served = 0
        for start in list(range(0, len(x), BATCH_SIZE))[:batches]:
            rows = order[start : start + BATCH_SIZE]
            if path == "fused":  # what the loader does: the kernel reads the stored images, the gather copies y
                write = functools.partial(fused.gather_augment_host, table, x, rows, rows, SEED, epoch)
                xb, yb = gather(rows, {0: write})
            else:
                xb, yb = gather(rows)
                xb = augment.apply_augment(ops, xb, rows, SEED, epoch, np, overwrite=True)
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def case_tfdata(x: np.ndarray, y: np.ndarray) -> EpochFn:
    import tensorflow as tf

    height, width, channels = x.shape[1:]
    padded = np.pad(x, ((0, 0), (PADDING, PADDING), (PADDING, PADDING), (0, 0)), mode="reflect")
    ids = np.arange(len(x), dtype=np.int64)

    def augment(sample: tf.Tensor, image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.image.stateless_random_crop(image, (height, width, channels), seed=tf.stack([sample, 0]))
        image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([sample, 1]))
        return image, label

    dataset = (
        tf.data.Dataset.from_tensor_slices((ids, padded, y))
        .shuffle(len(x), seed=SEED)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )

    def run(epoch: int, batches: int | None = None) -> int:
        served = 0
        for xb, yb in dataset.take(-1 if batches is None else batches):
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def case_keras(x: np.ndarray, y: np.ndarray) -> EpochFn:
    import keras

    height, width = x.shape[1:3]
    layers = keras.Sequential(
        [
            keras.layers.RandomTranslation(PADDING / height, PADDING / width, fill_mode="reflect", seed=SEED),
            keras.layers.RandomFlip("horizontal", seed=SEED),
        ]
    )
    rng = np.random.default_rng(SEED)

    def run(epoch: int, batches: int | None = None) -> int:
        order = rng.permutation(len(x))
        served = 0
        for start in list(range(0, len(x), BATCH_SIZE))[:batches]:
            rows = order[start : start + BATCH_SIZE]
            xb = layers(x[rows], training=True)
            yb = y[rows]
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def normalise_transform() -> Callable[[tuple[Any, ...], Any], tuple[Any, ...]]:
    """``transform(batch, xp)``: x to float32 then ``(x - mean) * (1 / std)``, in place after the cast."""
    mean = np.asarray(MEAN, dtype=np.float32)
    scale = (1.0 / np.asarray(STD, dtype=np.float64)).astype(np.float32)

    def transform(batch: tuple[Any, ...], xp: Any) -> tuple[Any, ...]:
        from gpuloader.gather import aligned_empty

        x, *rest = batch
        values = aligned_empty(x.shape, np.float32)  # 64-byte aligned: the hand-off to TF takes it without a copy
        np.copyto(values, x)
        np.subtract(values, mean, out=values)
        np.multiply(values, scale, out=values)
        return (values, *rest)

    return transform


def case_loader(x: np.ndarray, y: np.ndarray, augmented: bool, normalize: str | None = None) -> EpochFn:
    """``loader[i]`` over an epoch; ``normalize``: "op" (a final Normalize) or "transform" (after the ops)."""
    import gpuloader

    extra: dict[str, Any] = {"augment": _ops()} if augmented else {}
    if normalize == "op":
        extra["augment"] = [*_ops(), _normalize()]
    elif normalize == "transform":
        extra["transform"] = normalise_transform()
    loader = gpuloader.Loader(
        x, y, batch_size=BATCH_SIZE, shuffle=True, seed=SEED, verbose=False, workers=1, device="host", **extra
    )

    def run(epoch: int, batches: int | None = None) -> int:
        served = 0
        for index in list(range(len(loader)))[:batches]:
            xb, yb = loader[index]
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        loader.on_epoch_end()
        return served

    return run


def case_tfdata_normalize(x: np.ndarray, y: np.ndarray) -> EpochFn:
    import tensorflow as tf

    mean = tf.constant(MEAN, tf.float32)
    scale = tf.constant((1.0 / np.asarray(STD)).astype(np.float32))
    dataset = tf_augment_dataset(x, y, prefetch=False).map(
        lambda xb, yb: ((tf.cast(xb, tf.float32) - mean) * scale, yb), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)

    def run(epoch: int, batches: int | None = None) -> int:
        served = 0
        for xb, yb in dataset.take(-1 if batches is None else batches):
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0] and xb.dtype == tf.float32
        return served

    return run


def case_keras_normalize(x: np.ndarray, y: np.ndarray) -> EpochFn:
    import keras

    layers = keras.Sequential(
        [
            *keras_augment_layers(value_range=(0, 255)),
            keras.layers.Normalization(mean=MEAN, variance=np.square(STD)),
        ]
    )
    rng = np.random.default_rng(SEED)

    def run(epoch: int, batches: int | None = None) -> int:
        order = rng.permutation(len(x))
        served = 0
        for start in list(range(0, len(x), BATCH_SIZE))[:batches]:
            rows = order[start : start + BATCH_SIZE]
            xb = layers(x[rows].astype(np.float32), training=True)
            yb = y[rows]
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


CASES: dict[str, Callable[[np.ndarray, np.ndarray], EpochFn]] = {
    "plain": case_plain,
    "augment": case_augment,
    "tfdata": case_tfdata,
    "keras": case_keras,
    "augment_unfused": lambda x, y: case_augment(x, y, "unfused"),
    "augment_numpy": lambda x, y: case_augment(x, y, "numpy"),
    "augment_generic": lambda x, y: case_augment(x, y, "generic"),
    "loader_plain": lambda x, y: case_loader(x, y, augmented=False),
    "loader_augment": lambda x, y: case_loader(x, y, augmented=True),
    "loader_normalize": lambda x, y: case_loader(x, y, augmented=True, normalize="op"),
    "loader_normalize_transform": lambda x, y: case_loader(x, y, augmented=True, normalize="transform"),
    "tfdata_normalize": case_tfdata_normalize,
    "keras_normalize": case_keras_normalize,
}


# ------------------------------------------------------------------ fit cases (each in its own process)
def build_conv_net(augment_layers: list[Any] | None = None) -> Any:
    """uint8 images -> Rescaling(1/255) -> [augment_layers] -> Conv2D(16, 3) -> MaxPool -> Conv2D(32, 3)
    -> GlobalAveragePooling -> Dense(10, softmax); SGD, sparse categorical cross-entropy, no XLA."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input(shape=synthetic.SPECS["cifar"].sample_shape, dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            *(augment_layers or []),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(synthetic.NUM_CLASSES, activation="softmax"),
        ]
    )
    # XLA off for every peer: Keras's "auto" turns it off on CPU-only machines anyway, and its random
    # image layers cannot be jit-compiled, so this keeps the three models compiled the same way.
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=False)
    return model


def fit_epochs(model: Any, data: Any, epochs: int, **fit_kwargs: Any) -> tuple[float, list[float], list[float]]:
    """``model.fit(data, epochs=1 + epochs)``: the warm-up epoch (from ``on_train_begin``, tracing
    included), then each timed epoch's wall and CPU seconds, between consecutive ``on_epoch_end`` calls
    (so work done between epochs, a reshuffle, is counted)."""
    import keras

    marks: list[tuple[float, float]] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            marks.append((time.perf_counter(), time.process_time()))

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            marks.append((time.perf_counter(), time.process_time()))

    model.fit(data, epochs=1 + epochs, verbose=0, callbacks=[EpochTimer()], **fit_kwargs)
    if len(marks) != 2 + epochs:
        raise RuntimeError(f"fit ran {len(marks) - 1} epochs, expected {1 + epochs}")
    wall = [later[0] - earlier[0] for earlier, later in itertools.pairwise(marks)]
    cpu = [later[1] - earlier[1] for earlier, later in itertools.pairwise(marks)]
    return wall[0], wall[1:], cpu[1:]


def fit_loader(x: np.ndarray, y: np.ndarray, epochs: int, augmented: bool) -> tuple[float, list[float], list[float]]:
    import gpuloader

    extra = {"augment": _ops()} if augmented else {}
    loader = gpuloader.Loader(
        x, y, batch_size=BATCH_SIZE, shuffle=True, seed=SEED, verbose=False, workers=1, device="host", **extra
    )
    return fit_epochs(build_conv_net(), loader, epochs)


def tf_augment_dataset(x: np.ndarray, y: np.ndarray, prefetch: bool = True) -> Any:
    """tf.data doing gpuloader's three ops: crop of the reflect-padded image, flip, cutout, per sample.

    ``Dataset.random(rerandomize_each_iteration=True)`` zipped with the shuffled samples gives each
    sample a fresh key every epoch; the ops are ``stateless_random_crop``,
    ``stateless_random_flip_left_right`` and a cutout of tf ops (a ``size x size`` square of zeros centred
    at a ``stateless_random_uniform`` pixel, clipped at the border, through ``tf.where``); ``map`` with
    AUTOTUNE, ``batch``, ``prefetch(AUTOTUNE)``. ``x_padded`` is made once, before any timing.
    """
    import tensorflow as tf

    height, width, channels = x.shape[1:]
    padded = np.pad(x, ((0, 0), (PADDING, PADDING), (PADDING, PADDING), (0, 0)), mode="reflect")
    rows, cols = tf.range(height), tf.range(width)

    def augment(key: tf.Tensor, sample: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = sample
        image = tf.image.stateless_random_crop(image, (height, width, channels), seed=tf.stack([key, 0]))
        image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([key, 1]))
        centre = tf.random.stateless_uniform([], tf.stack([key, 2]), 0, height * width, dtype=tf.int32)
        top, left = centre // width - CUTOUT // 2, centre % width - CUTOUT // 2
        inside = ((rows >= top) & (rows < top + CUTOUT))[:, None] & ((cols >= left) & (cols < left + CUTOUT))[None]
        image = tf.where(inside[:, :, None], tf.zeros_like(image), image)
        return image, label

    keys = tf.data.Dataset.random(seed=SEED, rerandomize_each_iteration=True)
    samples = tf.data.Dataset.from_tensor_slices((padded, y)).shuffle(len(x), seed=SEED, reshuffle_each_iteration=True)
    batches = tf.data.Dataset.zip(keys, samples).map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH_SIZE)
    return batches.prefetch(tf.data.AUTOTUNE) if prefetch else batches


def fit_tfdata(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], list[float]]:
    return fit_epochs(build_conv_net(), tf_augment_dataset(x, y), epochs)


def keras_augment_layers(value_range: tuple[float, float] = (0, 1)) -> list[Any]:
    """The same augmentation as layers: ``RandomTranslation(4/32, 4/32, fill_mode="reflect")``,
    ``RandomFlip("horizontal")`` and, for the cutout, ``RandomErasing`` made to erase one 8 x 8 square
    (Keras 3 has no Cutout layer: ``factor=(1, 1)`` erases every image, ``scale`` the square's area as a
    share of the image's, so a side of 8 on 32, ``fill_value=0``; the square always lies inside the
    image, where gpuloader's Cutout is clipped at the border)."""
    import keras

    height, width = synthetic.SPECS["cifar"].sample_shape[:2]
    area = CUTOUT * CUTOUT / (height * width)
    return [
        keras.layers.RandomTranslation(PADDING / height, PADDING / width, fill_mode="reflect", seed=SEED),
        keras.layers.RandomFlip("horizontal", seed=SEED),
        keras.layers.RandomErasing(
            factor=(1.0, 1.0), scale=(area, area), fill_value=0.0, value_range=value_range, seed=SEED
        ),
    ]


def fit_keras(x: np.ndarray, y: np.ndarray, epochs: int) -> tuple[float, list[float], list[float]]:
    return fit_epochs(build_conv_net(keras_augment_layers()), x, epochs, y=y, batch_size=BATCH_SIZE, shuffle=True)


FitFn = Callable[[np.ndarray, np.ndarray, int], tuple[float, list[float], list[float]]]
FIT_CASES: dict[str, FitFn] = {
    "fit_gpuloader": lambda x, y, epochs: fit_loader(x, y, epochs, augmented=True),
    "fit_tfdata": fit_tfdata,
    "fit_keras": fit_keras,
    "fit_plain": lambda x, y, epochs: fit_loader(x, y, epochs, augmented=False),
}
ALL_CASES = (*CASES, *FIT_CASES)


def run_case(name: str, rows: int | None, epochs: int) -> dict[str, Any]:
    """Build the case, warm it up, time ``epochs`` epochs; each must serve every row."""
    x, y = synthetic.make("cifar", rows)
    if name in FIT_CASES:
        build_start = time.perf_counter()
        warmup_s, wall, cpu = FIT_CASES[name](x, y, epochs)
        return {
            "case": name,
            "rows": len(x),
            "batches": -(-len(x) // BATCH_SIZE),
            "build_and_warmup_s": time.perf_counter() - build_start - sum(wall),
            "warmup_s": warmup_s,
            "epoch_s": wall,
            "epoch_cpu_s": cpu,
            "median_s": statistics.median(wall),
            "median_cpu_s": statistics.median(cpu),
        }
    build_start = time.perf_counter()
    run = CASES[name](x, y)
    build_s = time.perf_counter() - build_start
    warmup_start = time.perf_counter()
    run(0, TF_WARMUP_BATCHES if name in TF_CASES else None)
    warmup_s = time.perf_counter() - warmup_start
    wall, cpu = [], []
    for epoch in range(1, epochs + 1):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        served = run(epoch)
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
        if served != len(x):
            raise RuntimeError(f"{name}: an epoch served {served} rows, expected {len(x)}")
    return {
        "case": name,
        "rows": len(x),
        "batches": -(-len(x) // BATCH_SIZE),
        "build_s": build_s,
        "warmup_s": warmup_s,
        "epoch_s": wall,
        "epoch_cpu_s": cpu,
        "median_s": statistics.median(wall),
        "median_cpu_s": statistics.median(cpu),
    }


# ------------------------------------------------------------------ the driver
def case_env() -> dict[str, str]:
    try:
        import runner

        return runner.case_env()
    except Exception:  # the main harness being edited must not stop this benchmark
        env = dict(os.environ)
        env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
        return env


def machine_info() -> dict[str, Any]:
    try:
        import report as harness

        return harness.machine_info()
    except Exception:
        import platform

        return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def load_average() -> list[float]:
    try:
        return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def spawn(name: str, rows: int | None, epochs: int) -> dict[str, Any]:
    """Run one case in a fresh process; its JSON, or ``{"error": ...}``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--epochs", str(epochs)]
    if rows is not None:
        command += ["--rows", str(rows)]
    load_before = load_average()
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=case_env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"exit status {done.returncode}:\n{tail}"}
    result = json.loads(lines[-1])
    result.update(process_s=time.perf_counter() - start, load_before=load_before, load_after=load_average())
    return result


def summarise(names: list[str], raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for name in names:
        good = [result for result in raw[name] if "error" not in result]
        row: dict[str, Any] = {"rounds_ok": len(good), "errors": [r["error"] for r in raw[name] if "error" in r]}
        if good:
            per_round = [result["median_s"] for result in good]
            row.update(
                per_round_s=per_round,
                median_s=statistics.median(per_round),
                min_s=min(per_round),
                max_s=max(per_round),
                median_cpu_s=statistics.median(result["median_cpu_s"] for result in good),
                rows=good[0]["rows"],
                batches=good[0]["batches"],
            )
        summary[name] = row
    return summary


def check_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for numerator, denominator, kind, bound in TARGETS:
        top, bottom = summary.get(numerator, {}), summary.get(denominator, {})
        if "median_s" not in top or "median_s" not in bottom:
            continue
        ratio = top["median_s"] / bottom["median_s"]
        if kind == "figure":
            target, passed = "none", None
        elif kind == "max":
            target, passed = f"<= {bound}", ratio <= bound
        else:
            target, passed = f">= {bound}", ratio >= bound
        checks.append({"ratio": f"{numerator} / {denominator}", "value": ratio, "target": target, "met": passed})
    return checks


def _case_table(summary: dict[str, dict[str, Any]], names: list[str], unit: str) -> list[str]:
    """One line per case: medians over rounds of the per-process median epoch, in ms or s."""
    scale, digits = (1e3, 1) if unit == "ms" else (1.0, 2)
    header = f"{'case':<16}{'epoch (median)':>16}{'min':>10}{'max':>10}{'CPU s':>10}{'batches/s':>12}{'rows':>8}"
    lines = [header + "  rounds"]
    for name in names:
        row = summary[name]
        if "median_s" not in row:
            lines.append(f"{name:<16}  failed: {row['errors'][-1].splitlines()[-1] if row['errors'] else '?'}")
            continue
        low, median, high = (f"{row[key] * scale:.{digits}f} {unit}" for key in ("min_s", "median_s", "max_s"))
        lines.append(
            f"{name:<16}{median:>16}{low:>10}{high:>10}{row['median_cpu_s']:>10.3f}"
            f"{row['batches'] / row['median_s']:>12.1f}{row['rows']:>8}  {row['rounds_ok']}"
        )
    return lines


def format_report(summary: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The epoch table (ms), the fit table (s), then every target as met / MISSED and the fit ratios."""
    lines: list[str] = []
    epoch_names = [name for name in summary if name in CASES]
    fit_names = [name for name in summary if name in FIT_CASES]
    if epoch_names:
        lines += ["Host epochs (gather, plus augmentation where named; no model):"]
        lines += [*_case_table(summary, epoch_names, "ms"), ""]
    if fit_names:
        lines += ["fit of the small conv net, seconds per epoch (after a warm-up epoch):"]
        lines += [*_case_table(summary, fit_names, "s"), ""]
    lines.append(f"{'targets (ratio of medians)':<34}   {'value':>6}   {'target':<8} verdict")
    for check in checks:
        verdict = "figure, no target" if check["met"] is None else "met" if check["met"] else "MISSED"
        lines.append(f"{check['ratio']:<34} = {check['value']:6.2f}   {check['target']:<8} {verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every case (default 2)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per NumPy or Loader case (default 5)")
    parser.add_argument(
        "--tf-epochs", type=int, default=1, help="timed epochs per tf.data or Keras-layers case process (default 1)"
    )
    parser.add_argument("--rows", type=int, default=None, help="samples of the epoch cases (default: 50000, CIFAR-10)")
    parser.add_argument(
        "--mode",
        choices=("all", "epoch", "fit"),
        default="all",
        help="default cases to run: the host epochs, the fit cases, or both (default all); --cases overrides",
    )
    parser.add_argument(
        "--fit-samples",
        type=int,
        default=FIT_SAMPLES,
        help=f"samples of the fit cases (default {FIT_SAMPLES}; 50000 for the CIFAR-10 size)",
    )
    parser.add_argument(
        "--fit-epochs", type=int, default=2, help="timed epochs per fit process, after one warm-up epoch (default 2)"
    )
    parser.add_argument(
        "--cases",
        default=None,
        help=f"comma-separated from {', '.join(ALL_CASES)} (default: {', '.join(DEFAULT_CASES)}, "
        f"the loader cases when the Loader takes augment, and {', '.join(FIT_DEFAULT_CASES)})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/results)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if min(args.rounds, args.epochs, args.tf_epochs, args.fit_epochs) < 1:
        parser.error("--rounds, --epochs, --tf-epochs and --fit-epochs must be at least 1")
    if args.fit_samples < 1 or (args.rows is not None and args.rows < 1):
        parser.error("--rows and --fit-samples must be at least 1")
    takes_augment = loader_takes_augment()
    if args.cases is None:
        args.cases = []
        if args.mode in ("all", "epoch"):
            args.cases += list(DEFAULT_CASES) + (list(LOADER_CASES) if takes_augment else [])
            args.cases += list(NORMALIZE_CASES) if takes_augment and loader_takes_normalize() else []
        if args.mode in ("all", "fit"):
            args.cases += [name for name in FIT_DEFAULT_CASES if takes_augment or name != "fit_gpuloader"]
    else:
        args.cases = [name.strip() for name in args.cases.split(",") if name.strip()]
        unknown = [name for name in args.cases if name not in ALL_CASES]
        if unknown or not args.cases:
            parser.error(f"--cases: unknown or empty {unknown or args.cases}; choose from {', '.join(ALL_CASES)}")
    return args


def case_budget(name: str, args: argparse.Namespace) -> tuple[int | None, int]:
    """(samples, timed epochs) of one case process: the fit cases', the TensorFlow epoch cases', the others'."""
    if name in FIT_CASES:
        return args.fit_samples, args.fit_epochs
    return args.rows, args.tf_epochs if name in SLOW_TF_CASES else args.epochs


def _figure(name: str, result: dict[str, Any]) -> str:
    return f"{result['median_s']:.2f} s/epoch" if name in FIT_CASES else f"{result['median_s'] * 1e3:.1f} ms/epoch"


# ------------------------------------------------------------------ as a suite of bench/run.py (bench/suite.py)
SUITE_ARGS = {"quick": ["--mode", "epoch", "--epochs", "3", "--rounds", "2"], "full": ["--rounds", "3"]}
#: Left to the full profile: tf.data and Keras's layers doing the four ops with Normalize take 15 to 50 s an
#: epoch here; quick keeps their crop + flip rows (tfdata, keras) and the fused-vs-transform Normalize ratio.
FULL_ONLY_CASES = ("tfdata_normalize", "keras_normalize")


def plan(run_args: argparse.Namespace) -> Any:
    """The cases ``make bench`` runs (quick: the epoch rows, 2 rounds; full: the fit rows too, 3 rounds).

    The cases that use TensorFlow may be forked from ``bench/zygote.py`` (quick); the others never import it.
    """
    from suite import Case, Plan

    if run_args.profile not in SUITE_ARGS:
        return Plan("augment", [], 0, skipped=f"{run_args.profile} profile")
    args = parse_args([*SUITE_ARGS[run_args.profile], "--out", str(run_args.out)])
    args.rounds = run_args.rounds or args.rounds
    if run_args.profile == "quick":
        args.cases = [name for name in args.cases if name not in FULL_ONLY_CASES]
    found = []
    for name in args.cases:
        rows, epochs = case_budget(name, args)
        argv = ("--case", name, "--epochs", str(epochs), *(("--rows", str(rows)) if rows is not None else ()))
        kind, tensorflow = "fit" if name in FIT_CASES else "epoch", name in TF_CASES or name in FIT_CASES
        found.append(Case(name, "augment.py", argv, label=f"{kind:<6} {name}", forkable=tensorflow))
    about = [f"cifar, batch {BATCH_SIZE}: {', '.join(args.cases)}"]
    return Plan("augment", found, args.rounds, about=about, options=args)


def progress_figure(case: Any, result: dict[str, Any]) -> str:
    return _figure(case.name, result)


def report(plan: Any, results: dict[str, list[dict[str, Any]]]) -> Any:
    """This benchmark's tables and targets (a target whose case failed: MISSING)."""
    from suite import Report, Target

    summary = summarise(plan.options.cases, results)
    checks = check_targets(summary)
    shown = {check["ratio"] for check in checks}
    targets = [
        Target("augment", "fit" if check["ratio"].startswith("fit_") else "epoch", check["ratio"],
               f"{check['value']:.2f}x", "" if check["target"] == "none" else check["target"],
               "figure" if check["met"] is None else "met" if check["met"] else "MISSED")
        for check in checks
    ]
    for top, bottom, kind, bound in TARGETS:
        if {top, bottom} <= set(plan.options.cases) and f"{top} / {bottom}" not in shown:
            bound_text = "" if kind == "figure" else f"{'<=' if kind == 'max' else '>='} {bound}"
            targets.append(Target("augment", "", f"{top} / {bottom}", "n/a", bound_text, "MISSING"))
    keys = ("rounds", "epochs", "tf_epochs", "fit_samples", "fit_epochs", "cases")
    config = {key: getattr(plan.options, key) for key in keys}
    data = {"config": {**config, "batch_size": BATCH_SIZE}, "summary": summary, "targets": checks, "raw": results}
    return Report(format_report(summary, checks), targets, data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.rows, args.epochs)))
        return 0
    start = time.perf_counter()
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in args.cases}
    for round_index in range(args.rounds):
        for name in args.cases:
            result = spawn(name, *case_budget(name, args))
            figure = _figure(name, result) if "error" not in result else "FAILED"
            raw[name].append(result)
            print(f"round {round_index + 1}/{args.rounds} {name:<16} {figure}", flush=True)
    summary = summarise(args.cases, raw)
    checks = check_targets(summary)
    report = format_report(summary, checks)
    print()
    print(report)
    elapsed = time.perf_counter() - start
    print(f"\n{args.rounds} rounds in {elapsed:.0f} s; load average now {load_average()}")
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "augment",
        "machine": machine_info(),
        "config": {
            "dataset": "cifar (synthetic, bench/synthetic.py)",
            "rows": args.rows or synthetic.SPECS["cifar"].rows,
            "batch_size": BATCH_SIZE,
            "gpuloader_ops": [repr(op) for op in _ops()],
            "baselines_do": "crop (pad 4, reflect) + horizontal flip, no cutout",
            "normalize_cases_do": f"crop + flip + cutout + normalise to float32 (mean {MEAN}, std {STD}) on every side",
            "fit_baselines_do": "tf.data: crop + flip + cutout of tf ops; keras: RandomTranslation + RandomFlip + "
            "RandomErasing as an 8 x 8 cutout, inside the model",
            "fit_model": "uint8 -> Rescaling(1/255) -> Conv2D(16,3) -> MaxPool -> Conv2D(32,3) -> GAP -> Dense(10); "
            "SGD, jit_compile=False",
            "fit_samples": args.fit_samples,
            "fit_epochs": args.fit_epochs,
            "rounds": args.rounds,
            "epochs": args.epochs,
            "tf_epochs": args.tf_epochs,
            "cases": args.cases,
        },
        "summary": summary,
        "targets": checks,
        "raw": raw,
        "elapsed_s": elapsed,
    }
    target = args.out / "augment.json"
    target.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {target}")
    return 0 if all(row["rounds_ok"] == args.rounds for row in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
