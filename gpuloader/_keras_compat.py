"""The one place gpuloader touches Keras internals (``keras.src``).

Supported: Keras >= 3.7 (``get_data_adapter`` returns a ``DataAdapter`` it is
given untouched, keras PR #20349) and < 3.16, tested with 3.15. Everything
private that the loader relies on is named here:

- ``DataAdapter``: the loader subclasses it, so ``fit`` uses the loader as its
  own adapter and never wraps it in ``tf.data.Dataset.from_generator``.
- The TensorFlow trainer iterates a plain Python iterator step by step when
  ``get_tf_dataset()`` returns a ``tf.distribute.DistributedDataset``
  (``TFEpochIterator``); :func:`tf_batches` builds one.
- ``EpochIterator.__init__`` holds the ``class_weight`` given to ``fit``;
  :func:`class_weight_given_to_fit` reads it so the loader can refuse it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

from keras.src.trainers.data_adapters.data_adapter import DataAdapter

__all__ = ["DataAdapter", "class_weight_given_to_fit", "strategy_of_caller", "tf_batches"]

_EPOCH_ITERATOR_MODULE = "keras.src.trainers.epoch_iterator"
_tf_batches_class: type | None = None


def tf_batches(make_iterator: Callable[[], Iterator[Any]]) -> Any:
    """A ``tf.distribute.DistributedDataset`` whose iteration calls ``make_iterator``."""
    global _tf_batches_class
    if _tf_batches_class is None:
        import tensorflow as tf

        class _TFBatches(tf.distribute.DistributedDataset):
            """Batches already on their device, handed to the TF trainer one by one."""

            def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
                self._make = make

            def __iter__(self) -> Iterator[Any]:
                return self._make()

        _tf_batches_class = _TFBatches
    return _tf_batches_class(make_iterator)


def class_weight_given_to_fit(depth: int = 2) -> Any:
    """The ``class_weight`` Keras's ``EpochIterator`` was built with, if the caller is one.

    Called from the loader's ``num_batches``, which ``EpochIterator.__init__``
    reads right after choosing the adapter. Returns None when the caller is not
    an ``EpochIterator`` or no class weight was given.
    """
    frame = sys._getframe(depth)
    if frame.f_code.co_name != "__init__" or frame.f_globals.get("__name__") != _EPOCH_ITERATOR_MODULE:
        return None
    return frame.f_locals.get("class_weight")


def strategy_of_caller(depth: int = 2) -> Any:
    """The ``tf.distribute`` strategy Keras's TF trainer iterates the loader under.

    ``TFEpochIterator.__init__`` receives the model's strategy and calls
    ``get_tf_dataset`` before storing it; read it from that frame, else use the
    strategy in scope (``tf.distribute.get_strategy()``).
    """
    frame = sys._getframe(depth)
    if frame.f_code.co_name == "__init__" and "distribute_strategy" in frame.f_locals:
        strategy = frame.f_locals["distribute_strategy"]
        if strategy is not None:
            return strategy
    tf = sys.modules.get("tensorflow")
    return tf.distribute.get_strategy() if tf is not None else None
