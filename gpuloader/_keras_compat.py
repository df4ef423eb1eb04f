"""The one place gpuloader touches Keras internals (``keras.src``).

Supported: Keras >= 3.7 (``get_data_adapter`` returns a ``DataAdapter`` it is
given untouched, keras PR #20349) and < 3.16, tested with 3.15. Everything
private that the loader relies on is named here:

- ``DataAdapter``: the loader subclasses it, so ``fit`` uses the loader as its
  own adapter and never wraps it in ``tf.data.Dataset.from_generator``.
- The TensorFlow trainer iterates a plain Python iterator step by step when
  ``get_tf_dataset()`` returns a ``tf.distribute.DistributedDataset``
  (``TFEpochIterator``); :func:`tf_batches` builds one.
- The trainers' ``fit``, ``evaluate`` and ``predict`` (TensorFlow, JAX and torch
  backends) hold their arguments and, in ``fit``, the loop variables ``epoch``
  and ``initial_epoch`` (after ``BackupAndRestore`` set it) and the
  ``epoch_iterator`` and ``callbacks``; :func:`keras_call` reads them from the
  innermost such frame, so the loader can follow the epoch Keras trains, find
  the fit's ``BackupAndRestore`` and refuse arguments Keras would silently drop
  for a custom adapter.
- ``EpochIterator._num_batches``: the batches Keras takes from one iterator
  before it makes a new one (read again before every step, and as the epoch's
  length when ``steps_per_epoch`` is None); :func:`set_pass_length` sets it to
  the length of the pass the loader serves, so a pass that starts inside an
  epoch's order ends where that order ends (the TF trainer raises
  ``UnboundLocalError`` on a Python iterator that ends before Keras expects).
- ``BackupAndRestore``: its ``_save_model`` (wrapped by :func:`after_backup_saves`),
  ``_training_metadata_path`` (:func:`backup_metadata`) and ``_current_epoch``.
- ``TFEpochIterator.__init__``'s ``distribute_strategy`` argument, read by
  :func:`strategy_of_caller` from its frame while it calls ``get_tf_dataset``.
- ``Distribution._num_process`` (3.7; public ``num_processes`` in 3.15) and
  ``Distribution._process_id``: :func:`distribution_processes`, the process
  count and index :mod:`gpuloader.sharding` shards by.
- ``PartialBatchList`` (Keras master, PR #23527; not in 3.15): the group of a
  super-batched pass that could not be stacked; :func:`keras_partial_batch_list`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from keras.src.trainers.data_adapters.data_adapter import DataAdapter

__all__ = [
    "DataAdapter", "KerasCall", "after_backup_saves", "backup_metadata", "backups_of", "distribution_processes",
    "keep_backup_epoch", "keras_call", "keras_partial_batch_list", "set_pass_length", "strategy_of_caller",
    "tf_batches",
]

_TRAINER_METHODS = frozenset(("fit", "evaluate", "predict"))
_ARGUMENTS = ("y", "sample_weight", "class_weight", "batch_size", "shuffle")
_MAX_DEPTH = 64


@dataclass(frozen=True)
class KerasCall:
    """The Keras trainer call that is using the loader now.

    Attributes:
        kind: "fit", "evaluate" or "predict" (the innermost one: validation
            inside ``fit`` is "evaluate").
        epoch: the epoch ``fit`` is training, None before its epoch loop
            started (building the model) and outside ``fit``.
        initial_epoch: the epoch this ``fit`` started (or resumed) at.
        steps_per_epoch: ``fit``'s argument.
        token: an object that lives exactly as long as this call (its epoch iterator).
        arguments: the call's arguments the loader checks (see ``_ARGUMENTS``).
        model: the model being trained or evaluated.
        within_fit: an ``evaluate`` run by ``fit`` (validation).
        callbacks: the call's callbacks (a ``CallbackList`` once ``fit`` built it).
    """

    kind: str
    epoch: int | None
    initial_epoch: int
    steps_per_epoch: int | None
    token: Any
    arguments: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    within_fit: bool = False
    callbacks: Any = None


def keras_call(depth: int = 2) -> KerasCall | None:
    """The innermost Keras ``fit``/``evaluate``/``predict`` on the caller's stack, or None.

    Cost: a walk up at most 64 frames comparing names (1 to 4 µs measured here, against ~100 µs for a gather).
    """
    frame = sys._getframe(depth)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name in _TRAINER_METHODS and _is_trainer_module(frame.f_globals.get("__name__", "")):
            local = frame.f_locals
            return KerasCall(
                kind=code.co_name,
                epoch=local.get("epoch") if code.co_name == "fit" else None,
                initial_epoch=int(local.get("initial_epoch") or 0),
                steps_per_epoch=local.get("steps_per_epoch"),
                token=local.get("epoch_iterator", frame),
                arguments={name: local[name] for name in _ARGUMENTS if name in local},
                model=local.get("self"),
                within_fit=code.co_name == "evaluate" and _fit_above(frame.f_back),
                callbacks=local.get("callbacks"),
            )
        frame = frame.f_back
    return None


def set_pass_length(token: Any, length: int) -> None:
    """Tell ``fit``'s epoch iterator (``KerasCall.token``) that the loader's next pass has ``length`` batches."""
    if hasattr(token, "_num_batches") and hasattr(token, "data_adapter"):
        token._num_batches = length


def backups_of(call: KerasCall) -> list[Any]:
    """The ``keras.callbacks.BackupAndRestore`` instances (subclasses included) among ``call``'s callbacks."""
    from keras.callbacks import BackupAndRestore

    callbacks = call.callbacks
    callbacks = getattr(callbacks, "callbacks", callbacks) or []
    return [callback for callback in callbacks if isinstance(callback, BackupAndRestore)]


def backup_metadata(backup: Any) -> dict[str, Any] | None:
    """What ``backup`` wrote with its last checkpoint (``{"epoch", "batch"}``), or None if there is none."""
    path = getattr(backup, "_training_metadata_path", None)
    if path is None or not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def after_backup_saves(backup: Any, key: str, action: Callable[[], None]) -> None:
    """Run ``action()`` each time ``backup`` has written its checkpoint (once per ``key``).

    Wraps the instance's ``_save_model`` (Keras 3.7 to 3.15), which writes the
    weights and then ``{"epoch", "batch"}`` at every save, whatever ``save_freq``.
    """
    actions = backup.__dict__.get("_gpuloader_after_save")
    if actions is None:
        actions = backup.__dict__["_gpuloader_after_save"] = {}
        save = backup._save_model

        @functools.wraps(save)
        def save_then_record(*args: Any, **kwargs: Any) -> Any:
            result = save(*args, **kwargs)
            for after in list(actions.values()):
                after()
            return result

        backup._save_model = save_then_record
    actions[key] = action


def keep_backup_epoch(backup: Any, epoch: int) -> None:
    """Make ``backup`` name ``epoch`` in its mid-epoch saves (it keeps 0 until an epoch ends in this process)."""
    backup._current_epoch = epoch


def _fit_above(frame: Any) -> bool:
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return False
        if frame.f_code.co_name == "fit" and _is_trainer_module(frame.f_globals.get("__name__", "")):
            return True
        frame = frame.f_back
    return False


def _is_trainer_module(name: str) -> bool:
    return name.startswith("keras.src.backend.") and name.endswith(".trainer")


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

            def __getattr__(self, name: str) -> Any:
                if name.startswith("_"):
                    raise AttributeError(name)
                raise AttributeError(
                    f"get_tf_dataset() returns an iterable of batches for Keras's TF trainer (a "
                    f"tf.distribute.DistributedDataset), not a tf.data.Dataset, so it has no {name!r}. Iterate "
                    "it (for batch in loader.get_tf_dataset()), or take the first batches with itertools.islice."
                )

        _tf_batches_class = _TFBatches
    return _tf_batches_class(make_iterator)


def strategy_of_caller() -> Any:
    """The ``tf.distribute`` strategy Keras's TF trainer iterates the loader under.

    ``TFEpochIterator.__init__`` receives the model's strategy and calls the
    adapter's ``get_tf_dataset`` before it stores it: the strategy is read from
    the innermost such frame on the caller's stack, however many calls (a
    subclass's ``get_tf_dataset``, a wrapper) lie between. Outside that frame
    (a ``get_tf_dataset()`` called by hand), the strategy in scope
    (``tf.distribute.get_strategy()``). Cost: a walk up at most 64 frames.
    """
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            break
        if (
            frame.f_code.co_name == "__init__"
            and frame.f_globals.get("__name__") == "keras.src.backend.tensorflow.trainer"
            and frame.f_locals.get("distribute_strategy") is not None
        ):
            return frame.f_locals["distribute_strategy"]
        frame = frame.f_back
    tf = sys.modules.get("tensorflow")
    return tf.distribute.get_strategy() if tf is not None else None


def distribution_processes() -> tuple[int, int]:
    """``(processes, this process's index)`` of the active Keras distribution; ``(1, 0)`` without one.

    ``keras.distribution.distribution()`` is public, the process count is the
    public ``num_processes`` in Keras 3.15 (``_num_process`` in 3.7, with no
    public name), and the index is private in both (``_process_id``). Raises when a
    distribution spans several processes but this one's index cannot be read,
    rather than letting every worker serve shard 0.
    """
    keras = sys.modules.get("keras")
    distribution = keras.distribution.distribution() if keras is not None else None
    if distribution is None:
        return 1, 0
    count = getattr(distribution, "num_processes", None)
    if count is None:
        count = getattr(distribution, "_num_processes", getattr(distribution, "_num_process", 1))
    count = int(count or 1)
    if count == 1:
        return 1, 0
    index = getattr(distribution, "_process_id", None)
    if index is None:
        raise RuntimeError(
            f"the Keras distribution spans {count} processes but gpuloader cannot read this process's index from "
            f"it (Keras {getattr(keras, '__version__', '?')}); pass num_shards={count} and shard_index=<this "
            "process's index> to the Loader."
        )
    return count, int(index)


def keras_partial_batch_list() -> type | None:
    """Keras's ``PartialBatchList`` (a super-batch group its trainer runs batch by batch), or None before it existed."""
    try:
        from keras.src.trainers.data_adapters.data_adapter_utils import PartialBatchList
    except ImportError:
        return None
    return PartialBatchList
