"""Flatten nested inputs into named leaves and rebuild the same structure.

A batch is a tuple ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``; each part
may be an array or a nested tuple, list or dict of arrays. The store keeps a
flat list of leaves; a :class:`Structure` remembers how to put them back.
Dicts keep their keys (in insertion order); lists and tuples come back as
tuples, which is what Keras expects of a batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Structure:
    """The shape of a nest: ``kind`` is "leaf", "tuple" or "dict"."""

    kind: str
    children: tuple[Structure, ...] = ()
    keys: tuple[Any, ...] = ()

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(child.num_leaves for child in self.children)

    def rebuild(self, leaves: Sequence[Any]) -> Any:
        """Put ``leaves`` (in flatten order) back into this structure."""
        if self.kind == "tuple" and all(child.kind == "leaf" for child in self.children):
            return tuple(leaves)  # the common (x, y) case, on the per-batch path
        return self._rebuild(iter(leaves))

    def _rebuild(self, leaves: Any) -> Any:
        if self.kind == "leaf":
            return next(leaves)
        values = [child._rebuild(leaves) for child in self.children]
        if self.kind == "dict":
            return dict(zip(self.keys, values))
        return tuple(values)


def flatten(nest: Any, name: str) -> tuple[Structure, list[Any], list[str]]:
    """Split ``nest`` into its structure, its leaves and a readable name per leaf.

    ``None`` is refused: a missing part is expressed by leaving it out of the
    batch, not by a hole inside it.
    """
    leaves: list[Any] = []
    names: list[str] = []
    structure = _flatten(nest, name, leaves, names)
    return structure, leaves, names


def _flatten(nest: Any, name: str, leaves: list[Any], names: list[str]) -> Structure:
    if isinstance(nest, Mapping):
        if not nest:
            raise ValueError(f"{name} is an empty dict; give at least one array in it.")
        keys = tuple(nest.keys())
        children = tuple(_flatten(nest[k], f"{name}[{k!r}]", leaves, names) for k in keys)
        return Structure("dict", children, keys)
    if isinstance(nest, (list, tuple)) and not nest:
        raise ValueError(
            f"{name} is an empty {type(nest).__name__}; give the data: an array, a list of numbers, or a "
            "non-empty list of .npy paths (shards)."
        )
    if isinstance(nest, (list, tuple)) and not _looks_like_array_data(nest):
        children = tuple(
            _flatten(item, f"{name}[{i}]", leaves, names) for i, item in enumerate(nest)
        )
        return Structure("tuple", children)
    if nest is None:
        raise ValueError(f"{name} is None; pass an array, or leave the argument out.")
    leaves.append(nest)
    names.append(name)
    return Structure("leaf")


def _looks_like_array_data(nest: Sequence[Any]) -> bool:
    """Whether a list or tuple is one input's data rather than a structure of inputs.

    Data: a list or tuple of numbers (Python or NumPy scalars, ``[1, 2, 3]``);
    a list whose items are numbers or (nested) lists/tuples of numbers, read
    with ``np.asarray`` (``[[0., .5], [1., 1.5]]`` is one array of 2 rows);
    a list of strings or paths (``.npy`` shards; strings that name no file are
    refused later as non-numeric). A list holding arrays is a structure of
    inputs, as in Keras; so is a tuple of lists (``(x_list, y_list)``).
    """
    if isinstance(nest, list) and all(isinstance(item, (str, os.PathLike)) for item in nest):
        return True
    if isinstance(nest, list):
        return all(_is_number(item) or _is_nested_numbers(item) for item in nest)
    return all(_is_number(item) for item in nest)


_NUMBER_TYPES = (int, float, complex, np.number, np.bool_)  # bool is an int
_PLAIN_NUMBERS = {int, float, bool}


def _is_number(item: Any) -> bool:
    """A Python or NumPy number (a 0-d numeric array counts as one)."""
    if isinstance(item, _NUMBER_TYPES):
        return True
    return isinstance(item, np.ndarray) and item.ndim == 0 and item.dtype.kind in "biufc"


def _is_nested_numbers(item: Any) -> bool:
    """A non-empty list or tuple whose items are numbers or such lists, at any depth."""
    if not isinstance(item, (list, tuple)) or not item:
        return False
    if set(map(type, item)) <= _PLAIN_NUMBERS:  # the common row of Python numbers, checked at C speed
        return True
    return all(_is_number(value) or _is_nested_numbers(value) for value in item)
