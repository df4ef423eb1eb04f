"""The baseline: the seed document's ``CustomDataloader``, re-implemented as a ``PyDataset``.

The seed (shared/seed/custom-dataloader-preload.txt) keeps ``x`` and ``y`` in
RAM, reshuffles an index array with ``np.random.shuffle`` at every epoch end,
and returns ``x[indices[i*b:(i+1)*b]], y[...]`` as NumPy arrays. Two changes,
neither of which alters the per-batch work:

- it subclasses ``keras.utils.PyDataset`` (Keras 3's ``Sequence``) and passes
  the PyDataset keyword arguments on, so Keras does not warn;
- ``__init__`` calls ``on_epoch_end()`` once, so ``indices`` exists before the
  first ``__getitem__`` even outside ``fit`` (the seed relies on Keras calling
  ``on_epoch_end`` first).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np


class SeedSequence(keras.utils.PyDataset):
    """Batches of preloaded ``x``, ``y`` in a per-epoch shuffled order, as NumPy arrays."""

    def __init__(
        self, x_set: np.ndarray, y_set: np.ndarray, batch_size: int, shuffle: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.x, self.y = x_set, y_set
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.indices = np.arange(len(self.x))
        if self.shuffle:
            np.random.shuffle(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        indices = self.indices[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[indices], self.y[indices]
