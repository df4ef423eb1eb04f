"""A list of ``.npy`` shards as one :class:`~gpuloader.sources.base.Source`: their rows concatenated in order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpuloader.sources.base import Source
from gpuloader.sources.npy import NpySource, PathLike, load_npy


class ShardedArray(Source):
    """The rows of several sources (``.npy`` files), concatenated in order, read lazily.

    Every part has the same sample shape and dtype. A read goes part by part,
    and only the parts a read touches are checked for changes.
    """

    def __init__(self, parts: Sequence[Source]) -> None:
        self.parts = list(parts)
        lengths = [len(part) for part in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype

    def mapped_files(self) -> tuple[np.ndarray | None, list[tuple[int, np.ndarray]]]:
        maps = []
        for first, part in zip(self.offsets[:-1].tolist(), self.parts):
            rows, part_maps = part.mapped_files()
            if rows is not None:  # a part that is itself a subset: no flat row map to offer
                return None, []
            maps.extend((int(first) + part_first, mapped) for part_first, mapped in part_maps)
        return None, maps

    def describe(self, name: str) -> str:
        first = getattr(self.parts[0], "path", None)
        return f"{name} ({len(self.parts)} shards from {first!r})" if first else name

    def read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        bounds = np.searchsorted(rows, self.offsets)
        for shard, part in enumerate(self.parts):
            a, b = int(bounds[shard]), int(bounds[shard + 1])
            if a < b:
                part.read_sorted(rows[a:b] - self.offsets[shard], out[a:b])

    def read_range(self, start: int, stop: int) -> np.ndarray:
        start, stop = min(start, len(self)), min(stop, len(self))
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
        for shard, part in enumerate(self.parts):
            low, high = int(self.offsets[shard]), int(self.offsets[shard + 1])
            a, b = max(start, low), min(stop, high)
            if a < b:
                out[a - start : b - start] = part.read_range(a - low, b - low)
        return out

    def shards_of(self, rows: slice | np.ndarray | None) -> list[int]:
        """The shards that ``rows`` (a slice, row indices, or None for all) read from."""
        if rows is None:
            return list(range(len(self.parts)))
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            if start >= stop:
                return []
            first, last = np.searchsorted(self.offsets, [start, stop - 1], side="right") - 1
            return list(range(int(first), int(last) + 1))
        return np.unique(np.searchsorted(self.offsets, rows, side="right") - 1).tolist()

    def check_unchanged(self, rows: slice | np.ndarray | None = None) -> None:
        """Check the shards ``rows`` read from (one ``os.stat`` each), not the others."""
        for shard in self.shards_of(rows):
            self.parts[shard].check_unchanged()

    def advise_random_access(self) -> bool:
        return all([part.advise_random_access() for part in self.parts])


def open_shards(value: Any, name: str) -> ShardedArray | None:
    """A :class:`ShardedArray` for a list of ``.npy`` paths; None for anything that is not a list of paths.

    Raises:
        ValueError: an empty list, shards whose sample shape or dtype differ, or a shard that is no ``.npy``.
        TypeError: a list of strings that are not file names (e.g. string labels).
    """
    if not isinstance(value, list) or not all(isinstance(item, PathLike) for item in value):
        return None
    if not value:
        raise ValueError(
            f"{name} is an empty list; give the data: an array, a list of numbers, or a non-empty list "
            "of .npy paths (shards)."
        )
    if not any(_names_a_file(item) for item in value):
        example = ", ".join(repr(os.fspath(item)) for item in value[:3])
        raise TypeError(
            f"{name} is a list of {len(value)} strings ({example}{', ...' if len(value) > 3 else ''}) "
            "that are neither numeric data nor .npy files (none ends in .npy or exists). Strings "
            "cannot be batched: encode them as integer ids, e.g. names, ids = np.unique(labels, "
            f"return_inverse=True), and pass ids; or, if these are files, pass their paths."
        )
    maps = [load_npy(path, f"{name} shard {i}") for i, path in enumerate(value)]
    _check_shards(maps, value, name)
    return ShardedArray([NpySource(mapped) for mapped in maps])


def _names_a_file(item: Any) -> bool:
    """Whether a list item is meant as a file: a path object, a name ending in .npy, or an existing file."""
    if not isinstance(item, str):
        return True
    return item.lower().endswith(".npy") or os.path.exists(item)


def _check_shards(maps: list[np.ndarray], paths: Sequence[Any], name: str) -> None:
    first = maps[0]
    for path, mapped in zip(paths[1:], maps[1:]):
        if mapped.shape[1:] != first.shape[1:] or mapped.dtype != first.dtype:
            raise ValueError(
                f"{name}: shards must share trailing shape and dtype; {os.fspath(paths[0])!r} has rows of "
                f"shape {first.shape[1:]} and dtype {first.dtype}, {os.fspath(path)!r} has {mapped.shape[1:]} "
                f"and {mapped.dtype}. Re-save the shards with matching rows."
            )
