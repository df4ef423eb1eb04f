"""Inputs as :class:`Source`\\ s: one interface for arrays in memory, ``.npy`` files, shard lists and worker shards.

Every input leaf (an array of ``x``, ``y`` or ``sample_weight``) that lives on
the host becomes a :class:`Source` here, once, at construction; CUDA arrays
stay as they are. The store, the gather, the placement and the disk tier know
sources only through the interface (:mod:`gpuloader.sources.base`): ``shape``
(samples first), ``dtype``, ``nbytes``, ``on_disk``, ``read_sorted(rows, out)``,
``read_range(start, stop)``, ``check_unchanged(rows)``, ``subset(rows)``,
``advise_random_access()`` and ``describe(name)``. This module is the only
place that looks at what kind of value an input is.

The formats, one module each:

- :mod:`~gpuloader.sources.array`: an array in memory (anything ``np.asarray`` takes);
- :mod:`~gpuloader.sources.npy`: a ``.npy`` path or an ``np.memmap``, read through the map, watched for changes;
- :mod:`~gpuloader.sources.shards`: a list of ``.npy`` paths, rows concatenated;
- :mod:`~gpuloader.sources.subset`: some rows of another source (a worker's shard), read lazily;
- :mod:`~gpuloader.sources.arrow`: a fixed-shape numeric ``pyarrow`` column (a ``datasets.Dataset``'s), read where
  Arrow holds it (its memory maps), through an index mapping where given, watched for changes.

**Adding a format is one new module plus its tests.** Write
``gpuloader/sources/<format>.py`` with a subclass of :class:`Source` (set
``shape`` and ``dtype``, implement ``read_sorted``; override ``read_range`` if
contiguous rows can be had cheaper, ``check_unchanged`` if what it reads can
change under it, ``on_disk = False`` if its rows are in memory) and a function
``open_<format>(value, name) -> Source | None`` that recognises its inputs and
returns None for anything else; add that function to :data:`OPENERS`; test it
in ``tests/test_sources_<format>.py`` (``tests/test_sources.py`` has the
checks every source must pass). A :class:`Source` instance is also accepted as
an input as it is, so a format can be tried out before it is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuloader.sources.array import ArraySource, open_array
from gpuloader.sources.arrow import ArrowSource, open_arrow
from gpuloader.sources.base import Source, SourceChangedError, check_source_shape, read_rows_sorted
from gpuloader.sources.npy import NpySource, open_npy
from gpuloader.sources.shards import ShardedArray, open_shards
from gpuloader.sources.subset import RowSubset

__all__ = [
    "OPENERS",
    "ArraySource",
    "ArrowSource",
    "NpySource",
    "RowSubset",
    "ShardedArray",
    "Source",
    "SourceChangedError",
    "is_disk_leaf",
    "open_source",
    "read_rows_sorted",
]

#: The formats tried in order, before an array in memory: ``opener(value, name)`` returns a Source or None.
OPENERS: list[Callable[[Any, str], Source | None]] = [open_npy, open_shards, open_arrow]


def open_source(value: Any, name: str) -> Source:
    """The :class:`Source` of one host input: the first of :data:`OPENERS` that takes it, else an array in memory.

    A :class:`Source` is returned as it is. Nothing is read but file headers;
    every file opened is remembered, to be checked before its rows are read.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a readable ``.npy`` (truncated, another
            format, object dtype), shards whose trailing shape or dtype differ,
            an empty list, or a value NumPy cannot read as an array.
        TypeError: a list of strings that are not file names (e.g. string labels),
            or a Source whose shape or dtype break the interface.
        SourceChangedError: a memory map whose file is already shorter than the map.
    """
    if isinstance(value, Source):
        check_source_shape(value)
        return value
    for opener in OPENERS:
        source = opener(value, name)
        if source is not None:
            return source
    return open_array(value, name)


def is_disk_leaf(leaf: Any) -> bool:
    """Whether a stored leaf is read from its files batch by batch (a :class:`Source` on disk)."""
    return isinstance(leaf, Source) and leaf.on_disk
