"""The built-in ops fused with the gather: each augmented image written once, straight from its source.

A list made only of ``RandomCrop``, ``RandomFlip`` and ``Cutout`` is a table
(:class:`FusedOps`) that a kernel traces per output pixel back to its source
pixel or to a fill value (``_pixels.h``, one C text compiled for the host and,
by NVRTC, for the GPU). Per sample the kernel computes its words, traces its
``H`` rows and ``W`` columns, then copies its bytes: on the host whole runs of
columns with ``memcpy`` (``_pixels.c``, without the GIL), on the GPU one block
per sample (``gpuloader._cuda.GatherAugment``). Inputs that follow the images'
draws (``augment.Same``: a mask) are written in the same call from the same
words and traces (``followers``: each its own pixel size, dtype, fills and
output). The bytes are those of applying
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader.augment.keyed import _word_keys
from gpuloader.augment.normalize import Normalize
from gpuloader.augment.ops import CHANNELS_FIRST, Cutout, RandomCrop, RandomFlip, _numpy_dtype

# The codes of _pixels.h, written here once (tests/test_augment_fused.py checks them against its #defines):
# an op table row's kind, and the value kinds of Normalize's input (the stored images) and output.
OP_CODES = {"GL_CROP_REFLECT": 1, "GL_CROP_CONSTANT": 2, "GL_FLIP": 3, "GL_CUTOUT": 4, "GL_OP_FIELDS": 4}
VALUE_KINDS = {
    "GL_VALUE_U8": 1, "GL_VALUE_I8": 2, "GL_VALUE_U16": 3, "GL_VALUE_I16": 4, "GL_VALUE_U32": 5,
    "GL_VALUE_I32": 6, "GL_VALUE_U64": 7, "GL_VALUE_I64": 8, "GL_VALUE_F32": 9, "GL_VALUE_F64": 10,
    "GL_VALUE_F16": 11, "GL_VALUE_BF16": 12,
}
_INPUT_KINDS = {
    "bool": "GL_VALUE_U8", "uint8": "GL_VALUE_U8", "int8": "GL_VALUE_I8", "uint16": "GL_VALUE_U16",
    "int16": "GL_VALUE_I16", "uint32": "GL_VALUE_U32", "int32": "GL_VALUE_I32", "uint64": "GL_VALUE_U64",
    "int64": "GL_VALUE_I64", "float32": "GL_VALUE_F32", "float64": "GL_VALUE_F64",
}
_OUTPUT_KINDS = {"float32": "GL_VALUE_F32", "float16": "GL_VALUE_F16", "bfloat16": "GL_VALUE_BF16"}
MAX_FILL_SLOTS = 32
"""Ops that write a fill value (Cutout, RandomCrop(mode="constant")) a fused list may hold."""


@dataclass(frozen=True)
class FusedOps:
    """A list of built-in ops as the kernels' table, for images of one dtype and channel count.

    Attributes:
        table: ``(ops, 4)`` int64: kind, padding or size, first word, fill slot (or -1) of each geometric op.
        fills: each fill slot's pixel (its value repeated over the pixel's channels), as bytes.
        or_slots: the slots that paint when either axis meets them (constant crops).
        and_slots: the slots that paint when both axes meet them (cutouts).
        draws: each op's number of words, in order.
        pixel_bytes: the bytes of a pixel of a plane: channels x item size (channels-last), item size
            (channels-first).
        planes: 1 (channels-last), or the channels (channels-first: a plane per channel).
        in_kind, out_kind: a final ``Normalize``'s value kinds (``VALUE_KINDS``); ``out_kind`` 0 without one.
        norm: a final ``Normalize``'s float32 (mean, scale) per channel, as bytes (empty without one).
        output_dtype: the dtype of the images written.
        channels_first: whether the images are ``(N, C, H, W)``.
    """

    table: np.ndarray
    fills: bytes
    or_slots: int
    and_slots: int
    draws: tuple[int, ...]
    pixel_bytes: int
    planes: int = 1
    in_kind: int = 0
    out_kind: int = 0
    norm: bytes = b""
    output_dtype: Any = None
    channels_first: bool = False

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


def fused_ops(ops: Any, dtype: Any, channels: int, data_format: str | None = None) -> FusedOps | None:
    """The table of ``ops`` for images of ``dtype`` with ``channels`` channels; None if they cannot be fused.

    They can when every op is a built-in one (exactly ``RandomCrop``,
    ``RandomFlip``, ``Cutout`` or a final ``Normalize``, not a subclass), at most
    :data:`MAX_FILL_SLOTS` of them write a fill value, and a ``Normalize``'s input
    is of a kind the kernel reads (bool, integers, float32, float64: not float16).
    ``data_format``: the list's (default: its ops').
    """
    ops = tuple(ops)
    if not all(type(op) in _ENCODERS for op in ops):
        return None
    if any(type(op) is Normalize for op in ops[:-1]):
        return None
    if data_format is None:
        from gpuloader.augment.apply import data_format_of

        data_format = data_format_of(ops) if ops else "channels_last"
    return _fused_ops(ops, tuple(_exact(op) for op in ops), _numpy_dtype(dtype), int(channels), data_format)


def _exact(op: Any) -> tuple[Any, ...]:
    """An op's fields as a cache key that tells apart what ``==`` does not (a fill of -0.0 from 0.0)."""
    return tuple(
        (value, math.copysign(1.0, value)) if isinstance(value, float) else value
        for value in (getattr(op, field.name) for field in dataclasses.fields(op))
    )


def why_not_fused(ops: Any, dtype: Any) -> str:
    """Why :func:`fused_ops` gives no table for ``ops`` on images of ``dtype``, in words for ``loader.plan``."""
    ops = tuple(ops)
    if not all(type(op) in _ENCODERS for op in ops):
        return "the list has an op of your own"
    name = _numpy_dtype(dtype).name
    if ops and type(ops[-1]) is Normalize and name not in _INPUT_KINDS:
        return (f"the kernel's Normalize reads bool, integer, float32 and float64 pixels, not {name} (store the "
                "images as float32 or uint8 for the kernel)")
    return f"more than {MAX_FILL_SLOTS} of its ops paint a fill"


def table_for(ops: Any, images: Any) -> FusedOps | None:
    """:func:`fused_ops` for an image array, ``(N, H, W, C)``, ``(N, C, H, W)`` or ``(N, H, W)``, of any namespace."""
    from gpuloader.augment.apply import data_format_of

    data_format = data_format_of(ops) if ops else "channels_last"
    channels = 1 if images.ndim == 3 else images.shape[1] if data_format == CHANNELS_FIRST else images.shape[3]
    return fused_ops(ops, images.dtype, channels, data_format)


def _crop_row(op: RandomCrop, word: int, fills: list[float]) -> tuple[tuple[int, int, int, int], str | None]:
    if op.mode == "constant":
        return (OP_CODES["GL_CROP_CONSTANT"], op.padding, word, len(fills)), "or"
    return (OP_CODES["GL_CROP_REFLECT"], op.padding, word, -1), None


def _flip_row(op: RandomFlip, word: int, fills: list[float]) -> tuple[tuple[int, int, int, int], str | None]:
    return (OP_CODES["GL_FLIP"], 0, word, -1), None


def _cutout_row(op: Cutout, word: int, fills: list[float]) -> tuple[tuple[int, int, int, int], str | None]:
    return (OP_CODES["GL_CUTOUT"], op.size, word, len(fills)), "and"


# Each geometric built-in op's table row: (kind, parameter, first word, fill slot) and how its slot paints
# ("or": when either axis meets it, "and": when both do, None: it writes no fill). Normalize has no row.
_ENCODERS: dict[type, Any] = {RandomCrop: _crop_row, RandomFlip: _flip_row, Cutout: _cutout_row, Normalize: None}


@functools.lru_cache(maxsize=64)
def _fused_ops(
    ops: tuple[Any, ...], exact: tuple[Any, ...], dtype: np.dtype, channels: int, data_format: str
) -> FusedOps | None:
    entries: list[tuple[int, int, int, int]] = []
    fills: list[float] = []
    or_slots, and_slots, word = 0, 0, 0
    normalize = ops[-1] if ops and type(ops[-1]) is Normalize else None
    for op in ops[:-1] if normalize is not None else ops:
        row, paints = _ENCODERS[type(op)](op, word, fills)
        entries.append(row)
        if paints is not None:
            if paints == "or":
                or_slots |= 1 << len(fills)
            else:
                and_slots |= 1 << len(fills)
            fills.append(op._fill_value() if type(op) is RandomCrop else op.fill)
        word += op.draws
        if len(fills) > MAX_FILL_SLOTS:
            return None
    table = np.asarray(entries, dtype=np.int64).reshape(len(entries), 4)
    table.flags.writeable = False
    first = data_format == CHANNELS_FIRST
    pixel_values = 1 if first else channels
    pixels = b"".join(np.full(pixel_values, fill, dtype=dtype).tobytes() for fill in fills)
    in_kind = out_kind = 0
    norm = b""
    output_dtype = dtype
    if normalize is not None:
        if dtype.name not in _INPUT_KINDS or normalize.channels() not in (1, channels):
            return None
        in_kind = VALUE_KINDS[_INPUT_KINDS[dtype.name]]
        out_kind = VALUE_KINDS[_OUTPUT_KINDS[normalize.dtype]]
        norm = normalize.constants(channels).tobytes()
        output_dtype = normalize.output_dtype
    return FusedOps(
        table, pixels, or_slots, and_slots, tuple(op.draws for op in ops), pixel_values * dtype.itemsize,
        channels if first else 1, in_kind, out_kind, norm, output_dtype, first,
    )


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
    followers: Sequence[tuple[FusedOps, np.ndarray, np.ndarray]] = (),
) -> np.ndarray:
    """Write the augmented images ``source[rows]`` into ``out`` with the host kernel; return ``out``.

    Args:
        fused: the ops' table for ``source``'s dtype and channels.
        source: ``(N, H, W, C)``, ``(N, C, H, W)`` or ``(N, H, W)`` C-contiguous images (the store's leaf, or a
            gathered batch).
        rows: int64 indices into ``source``, one per output image.
        sample_ids: int64 dataset index of each output image (the key of its draws).
        seed, epoch: the keys of the draws (and ``stream``, the list's stream: see ``augment.Stream``).
        out: a writable C-contiguous array of ``len(rows)`` images of ``source``'s shape and the table's
            output dtype (``fused.output_dtype``: the source's, or a final ``Normalize``'s), not overlapping
            ``source``.
        followers: ``(table, source, out)`` of each input that follows ``source``'s draws (``augment.Same``),
            written in the same pass from the same rows: each sample's words and traces are computed once for
            all of them. Each table must trace as ``fused`` does (:func:`shares_draws`) and each source have
            ``source``'s height and width; its pixels, dtype, fills and data format are its own.

    Raises:
        RuntimeError: the host kernel is not built (see :func:`host_kernel_missing`).
        ValueError: shapes, dtypes, tables or indices that do not fit (checked before any byte is read).
    """
    kernel = host_kernel()
    if kernel is None:
        raise RuntimeError(host_kernel_missing() or "the host kernel is switched off")
    height, width = _checked_target(fused, source, out, len(rows), "")
    sources = [source]
    targets = []
    for position, (table, follower_source, follower_out) in enumerate(followers):
        where = f" (follower {position})"
        if not shares_draws(fused, table):
            raise ValueError(f"gather_augment_host{where}: its ops do not trace as the leader's (another table or "
                             "other draws); it needs a pass of its own.")
        if _checked_target(table, follower_source, follower_out, len(rows), where) != (height, width):
            raise ValueError(f"gather_augment_host{where}: its images are not {height} x {width} as the leader's.")
        sources.append(follower_source)
        targets.append((follower_source, follower_out, table.fills, table.or_slots, table.and_slots, table.planes,
                        table.pixel_bytes, table.in_kind, table.out_kind, table.norm))
    outs = [out, *(target[1] for target in targets)]
    for position, written in enumerate(outs):
        if any(np.may_share_memory(written, other) for other in [*sources, *outs[:position]]):
            raise ValueError("gather_augment_host: an out overlaps a source or another out; pass fresh buffers.")
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
        fused.planes,
        fused.pixel_bytes,
        out,
        _BYTEWISE,
        fused.in_kind,
        fused.out_kind,
        fused.norm,
        targets,
    )
    return out


def shares_draws(leader: FusedOps, follower: FusedOps) -> bool:
    """Whether ``follower``'s table traces every sample as ``leader``'s: the same op rows (kinds, parameters,
    words, fill slots and how they paint) and its words a prefix of the leader's. Its pixels, fills and output
    may differ: one pass can then write both from one trace."""
    return (
        np.array_equal(leader.table, follower.table)
        and leader.draws[: len(follower.draws)] == follower.draws
        and (leader.or_slots, leader.and_slots) == (follower.or_slots, follower.and_slots)
    )


def _checked_target(fused: FusedOps, source: np.ndarray, out: np.ndarray, count: int, where: str) -> tuple[int, int]:
    """``(height, width)`` of ``source``'s images, once ``out`` is checked to hold ``count`` of them augmented."""
    expected = source.dtype if fused.output_dtype is None else fused.output_dtype
    if out.shape != (count, *source.shape[1:]) or out.dtype != expected:
        raise ValueError(
            f"gather_augment_host{where}: out has shape {out.shape} and dtype {out.dtype}; it must hold {count} "
            f"images of shape {source.shape[1:]} and dtype {expected}."
        )
    spatial = source.shape[2:4] if fused.channels_first and source.ndim == 4 else source.shape[1:3]
    return int(spatial[0]), int(spatial[1])
