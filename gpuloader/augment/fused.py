"""The built-in ops fused with the gather: each augmented image written once, straight from its source.

A list made only of ``RandomCrop``, ``RandomFlip`` and ``Cutout`` is a table
(:class:`FusedOps`) that a kernel traces per output pixel back to its source
pixel or to a fill value (``_pixels.h``, one C text compiled for the host and,
by NVRTC, for the GPU). Per sample the kernel computes its words, traces its
``H`` rows and ``W`` columns, then copies its bytes: on the host whole runs of
columns with ``memcpy`` (``_pixels.c``, without the GIL), on the GPU one block
per sample (``gpuloader._cuda.GatherAugment``). The bytes are those of applying
the ops one by one (``tests/test_augment.py`` checks the host kernel, and its
CUDA byte loop, against the array-API reference for orders of the ops, odd
sizes and dtypes; ``tests/test_augment_fused.py`` runs the CUDA kernel's text
compiled for the host).

Cost on the host: one pass that reads each output pixel's source and writes
it, where the ops one by one (``_host.py``) make four to five passes; read from
the store itself it also replaces the gather's copy of the images. Per sample
``(H + W) x ops`` integer steps for the traces and ``sum(draws)`` hashes.

The host kernel is a C extension built at install (``setup.py``, optional):
without a C compiler the install succeeds, :func:`host_kernel` is None,
:func:`host_kernel_missing` says why and the ops run on their NumPy path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader.augment.keyed import _word_keys
from gpuloader.augment.ops import Cutout, RandomCrop, RandomFlip, _numpy_dtype

# The op kinds of _pixels.h.
_CROP_REFLECT, _CROP_CONSTANT, _FLIP, _CUTOUT = 1, 2, 3, 4
MAX_FILL_SLOTS = 32
"""Ops that write a fill value (Cutout, RandomCrop(mode="constant")) a fused list may hold."""


@dataclass(frozen=True)
class FusedOps:
    """A list of built-in ops as the kernels' table, for images of one dtype and channel count.

    Attributes:
        table: ``(ops, 4)`` int64: kind, padding or size, first word, fill slot (or -1).
        fills: each fill slot's pixel (its value repeated over the channels), as bytes.
        or_slots: the slots that paint when either axis meets them (constant crops).
        and_slots: the slots that paint when both axes meet them (cutouts).
        draws: each op's number of words, in order.
        pixel_bytes: channels x item size.
    """

    table: np.ndarray
    fills: bytes
    or_slots: int
    and_slots: int
    draws: tuple[int, ...]
    pixel_bytes: int

    def keys(self, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
        """The ``(words, 2)`` uint64 round keys (add, xor) of every word, for ``(seed, epoch, stream)``."""
        return _keys(seed, epoch, self.draws, stream)


@functools.lru_cache(maxsize=64)
def _keys(seed: int, epoch: int, draws: tuple[int, ...], stream: int) -> np.ndarray:
    adds, xors = _word_keys(seed, epoch, draws, stream)
    keys = np.empty((len(adds), 2), dtype=np.uint64)
    keys[:, 0], keys[:, 1] = adds, xors
    keys.flags.writeable = False
    return keys


def fused_ops(ops: Any, dtype: Any, channels: int) -> FusedOps | None:
    """The table of ``ops`` for images of ``dtype`` with ``channels`` channels; None if they cannot be fused.

    They can when every op is a built-in one (exactly ``RandomCrop``,
    ``RandomFlip`` or ``Cutout``, not a subclass) and at most
    :data:`MAX_FILL_SLOTS` of them write a fill value.
    """
    ops = tuple(ops)
    if not all(type(op) in (RandomCrop, RandomFlip, Cutout) for op in ops):
        return None
    return _fused_ops(ops, tuple(_exact(op) for op in ops), _numpy_dtype(dtype), int(channels))


def _exact(op: Any) -> tuple[Any, ...]:
    """An op's fields as a cache key that tells apart what ``==`` does not (a fill of -0.0 from 0.0)."""
    return tuple(
        (value, math.copysign(1.0, value)) if isinstance(value, float) else value
        for value in (getattr(op, field.name) for field in dataclasses.fields(op))
    )


def table_for(ops: Any, images: Any) -> FusedOps | None:
    """:func:`fused_ops` for an image array, ``(N, H, W, C)`` or ``(N, H, W)``, of any namespace."""
    return fused_ops(ops, images.dtype, images.shape[3] if images.ndim == 4 else 1)


@functools.lru_cache(maxsize=64)
def _fused_ops(ops: tuple[Any, ...], exact: tuple[Any, ...], dtype: np.dtype, channels: int) -> FusedOps | None:
    entries, fills, or_slots, and_slots, word = [], [], 0, 0, 0
    for op in ops:
        kind = type(op)
        if kind is RandomCrop:
            constant = op.mode == "constant"
            kind_code, slot = (_CROP_CONSTANT, len(fills)) if constant else (_CROP_REFLECT, -1)
            entries.append((kind_code, op.padding, word, slot))
            if constant:
                or_slots |= 1 << len(fills)
                fills.append(op._fill_value())
        elif kind is RandomFlip:
            entries.append((_FLIP, 0, word, -1))
        elif kind is Cutout:
            entries.append((_CUTOUT, op.size, word, len(fills)))
            and_slots |= 1 << len(fills)
            fills.append(op.fill)
        else:
            return None
        word += op.draws
        if len(fills) > MAX_FILL_SLOTS:
            return None
    table = np.asarray(entries, dtype=np.int64).reshape(len(entries), 4)
    table.flags.writeable = False
    pixels = b"".join(np.full(channels, fill, dtype=dtype).tobytes() for fill in fills)
    return FusedOps(table, pixels, or_slots, and_slots, tuple(op.draws for op in ops), channels * dtype.itemsize)


_HOST_KERNEL_ENABLED = True  # tests switch it off to run the NumPy path
_BYTEWISE = False  # tests switch it on to run the CUDA kernel's byte loop on the host


def host_kernel() -> Any:
    """The compiled host kernel module, or None when it was not built (see :func:`host_kernel_missing`)."""
    if not _HOST_KERNEL_ENABLED:
        return None
    try:
        from gpuloader.augment import _pixels
    except ImportError:
        return None
    return _pixels


def host_kernel_missing() -> str | None:
    """Why the host kernel is unavailable, or None when it is there."""
    try:
        from gpuloader.augment import _pixels  # noqa: F401
    except ImportError as error:
        return (
            f"the C extension gpuloader.augment._pixels is not built ({error}); the built-in augmentation ops run "
            "on their NumPy path (same bytes, about 2.5x slower). Fix: install a C compiler and reinstall gpuloader."
        )
    return None


def gather_augment_host(
    fused: FusedOps,
    source: np.ndarray,
    rows: np.ndarray,
    sample_ids: np.ndarray,
    seed: int,
    epoch: int,
    out: np.ndarray,
    *,
    stream: int = 0,
) -> np.ndarray:
    """Write the augmented images ``source[rows]`` into ``out`` with the host kernel; return ``out``.

    Args:
        fused: the ops' table for ``source``'s dtype and channels.
        source: ``(N, H, W, C)`` or ``(N, H, W)`` C-contiguous images (the store's leaf, or a gathered batch).
        rows: int64 indices into ``source``, one per output image.
        sample_ids: int64 dataset index of each output image (the key of its draws).
        seed, epoch: the keys of the draws (and ``stream``, the list's stream: see ``augment.Stream``).
        out: a writable C-contiguous array of ``len(rows)`` images of ``source``'s shape and dtype,
            not overlapping ``source``.

    Raises:
        RuntimeError: the host kernel is not built (see :func:`host_kernel_missing`).
        ValueError: shapes, dtypes or indices that do not fit (checked before any byte is read).
    """
    kernel = host_kernel()
    if kernel is None:
        raise RuntimeError(host_kernel_missing() or "the host kernel is switched off")
    if out.shape != (len(rows), *source.shape[1:]) or out.dtype != source.dtype:
        raise ValueError(
            f"gather_augment_host: out has shape {out.shape} and dtype {out.dtype}; it must hold {len(rows)} images "
            f"of shape {source.shape[1:]} and dtype {source.dtype}."
        )
    if np.may_share_memory(source, out):
        raise ValueError("gather_augment_host: out overlaps source; pass a fresh buffer.")
    height, width = int(source.shape[1]), int(source.shape[2])
    kernel.gather_augment(
        source,
        np.ascontiguousarray(rows, dtype=np.int64),
        np.ascontiguousarray(sample_ids, dtype=np.int64),
        fused.keys(seed, epoch, stream),
        fused.table,
        fused.fills,
        fused.or_slots,
        fused.and_slots,
        height,
        width,
        fused.pixel_bytes,
        out,
        _BYTEWISE,
    )
    return out
