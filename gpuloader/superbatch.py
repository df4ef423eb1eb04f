"""Super-batches: ``steps_per_execution`` consecutive batches stacked into one value for Keras.

Keras master (keras-team/keras PR #23527, not in 3.15) runs ``steps_per_execution = N``
on JAX as one ``lax.scan`` and asks every adapter for ``get_*_iterator(super_batch=N)``.
Each item is then N consecutive batches of the pass, every leaf stacked on a new
first axis (``[N, batch, ...]``); a group that cannot be stacked (the last one,
short of N batches, or one holding the smaller last batch) comes as Keras's
``PartialBatchList`` of its batches, which the trainer runs one by one. The loader
serves exactly that: the batches, their order and the epoch are the plain pass's
(:mod:`gpuloader.schedule`), only grouped. ``super_batch=None`` (what Keras up to
3.15 passes, by not passing it) serves the plain pass.

Cost: stacking copies each group once, with the consumer's own ``stack`` (NumPy
for host batches, else JAX, torch or TensorFlow on the batches' device), as Keras's
own adapters do; the gather and the hand-off stay as they are.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gpuloader._keras_compat import keras_partial_batch_list

__all__ = ["PartialBatchList", "check_super_batch", "super_batches"]


class _FallbackPartialBatchList(list):
    """Batches of a group that could not be stacked, run one by one (Keras's class where it has one)."""


#: Keras's own class where it has one (so its trainer recognises the group), else a list subclass of the same role.
PartialBatchList: type = keras_partial_batch_list() or _FallbackPartialBatchList

_STACKS = {"jax": ("jax.numpy", "stack"), "torch": ("torch", "stack"), "tensorflow": ("tensorflow", "stack")}


def check_super_batch(super_batch: Any) -> int | None:
    """``super_batch`` as Keras passes it: None (or 0) for plain batches, else a positive int."""
    if super_batch is None or (isinstance(super_batch, (int, np.integer)) and super_batch == 0):
        return None
    if isinstance(super_batch, bool) or not isinstance(super_batch, (int, np.integer)) or super_batch < 1:
        raise ValueError(
            f"super_batch must be a positive int (the batches Keras stacks per execution, its "
            f"steps_per_execution) or None; received {super_batch!r}."
        )
    return int(super_batch)


def super_batches(batches: Iterator[Any], super_batch: Any, backend: str) -> Iterator[Any]:
    """``batches`` grouped by ``super_batch``: stacked groups, then a ``PartialBatchList`` where they cannot stack.

    ``batches`` is one pass of the consumer's batches (nested tuples and dicts of
    tensors); it is returned as is when ``super_batch`` is None or 0.
    """
    count = check_super_batch(super_batch)
    if count is None:
        return batches
    return _grouped(batches, count, backend)


def _grouped(batches: Iterator[Any], count: int, backend: str) -> Iterator[Any]:
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == count:
            yield _stacked(group, backend) if _same_shapes(group) else PartialBatchList(group)
            group = []
    if group:
        yield PartialBatchList(group)


def _leaves(batch: Any) -> list[Any]:
    if isinstance(batch, dict):
        return [leaf for key in batch for leaf in _leaves(batch[key])]
    if isinstance(batch, (tuple, list)):
        return [leaf for item in batch for leaf in _leaves(item)]
    return [batch]


def _same_shapes(group: list[Any]) -> bool:
    shapes = [[tuple(leaf.shape) for leaf in _leaves(batch)] for batch in group]
    return all(shape == shapes[0] for shape in shapes[1:])


def _stacked(group: list[Any], backend: str) -> Any:
    first = group[0]
    if isinstance(first, dict):
        return {key: _stacked([batch[key] for batch in group], backend) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_stacked([batch[i] for batch in group], backend) for i in range(len(first)))
    return _stack_for(first, backend)(group)


def _stack_for(leaf: Any, backend: str) -> Callable[[list[Any]], Any]:
    if isinstance(leaf, np.ndarray) or backend == "numpy":
        return np.stack
    module, name = _STACKS[backend]
    return getattr(importlib.import_module(module), name)
