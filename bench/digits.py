"""A real dataset for the benchmark: scikit-learn's handwritten digits, read from its wheel.

``sklearn.datasets.load_digits`` reads ``digits.csv.gz``, which ships inside the
scikit-learn package: nothing is downloaded at run time. 1797 images of 8 x 8
pixels (values 0-16), 10 classes. The split is fixed: a permutation by
``default_rng(0)``, the first 1438 samples (80 %) for training, the other 359
held out. Pixels are scaled to [0, 1] as float32, labels are int32.

A small task: an epoch is 45 batches of 32, so its seconds per epoch measure
per-step overhead more than data movement; the point of this mode is that
every loader trains the same model to the same held-out accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BATCH_SIZE = 32
TEST_FRACTION = 0.2
SEED = 0


def load(cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: float32 images of shape (8, 8, 1) in [0, 1], int32 labels.

    With ``cache``, read the split from that ``.npz`` (written by :func:`write_cache`)
    instead of importing scikit-learn (and SciPy) again in every case process.
    """
    if cache is not None:
        with np.load(cache) as saved:
            return saved["x_train"], saved["y_train"], saved["x_test"], saved["y_test"]
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(SEED).permutation(len(x))
    cut = len(x) - round(TEST_FRACTION * len(x))
    train, test = order[:cut], order[cut:]
    return np.ascontiguousarray(x[train]), y[train], np.ascontiguousarray(x[test]), y[test]


def write_cache(path: Path) -> Path:
    """Load the split once and save it to ``path`` (an ``.npz``) for the case processes."""
    x_train, y_train, x_test, y_test = load()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    partial.replace(path)
    return path


def build_model() -> Any:
    """A small convolutional network, the same initial weights for every case (``set_random_seed(0)``)."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
