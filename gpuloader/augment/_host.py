"""The NumPy fast path of the built-in ops: the same bytes as the array-API path, fewer passes."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np


# ------------------------------------------------- the built-in ops on NumPy
def _crop_numpy(
    images: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    pad: int,
    reflect: bool,
    fill: float,
    out: np.ndarray | None = None,
    flip: np.ndarray | None = None,
    flip_first: bool = False,
) -> np.ndarray:
    """The crop on the host, and a flip just before or after it: whole rows by ``take``, columns by slices.

    1. The samples are sorted by (flipped, horizontal offset) so that each
       group is one slice, and one ``take`` of whole image rows (``W x C``
       values each) applies the vertical shift.
    2. The flipped samples are mirrored at once: reversing their flat values
       channel by channel (one long strided pass per channel) rotates each by
       180 degrees and reverses their order, which views with reversed sample
       and row axes undo. A flipped sample's crop is the mirrored image's crop
       at the opposite horizontal offset (after the crop) or the same one
       (before it), since reflecting or constant padding is symmetric.
    3. Per group, one slice copy moves the kept ``W - |dx|`` pixels of every
       row; the ``|dx|`` border columns are ``fill``, forward runs of the
       unflipped image (for flipped samples) or reflected pixels copied one
       column at a time (the only pixel-sized copies).
    4. A ``take`` restores the batch order into ``out`` (default: a new
       64-byte-aligned buffer; it may be ``images``: the steps above read it first).
    """
    n, height, width, channels = images.shape
    if out is None:
        out = _aligned_empty(images.shape, images.dtype)
    if n == 0:
        return out
    span = 2 * pad + 1
    if flip is None:
        offset, group = dx, dx + pad
    else:
        offset = dx if flip_first else np.where(flip, -dx, dx)  # the offset applied to the (mirrored) image
        group = offset + pad + span * flip
    order = np.argsort(group, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(group, minlength=span if flip is None else 2 * span))))
    kept = int(bounds[span])  # the samples that are not flipped come first
    # Source row of each output row for each vertical offset, then for each sample (in sorted order).
    table = np.arange(height, dtype=np.int64) + np.arange(-pad, pad + 1, dtype=np.int64)[:, None]
    outside = (table < 0) | (table >= height)
    table = _reflect(table, height, np) if reflect else np.clip(table, 0, height - 1)
    vertical = dy[order] + pad
    rows = order[:, None] * height + table[vertical]
    source = np.ascontiguousarray(images).reshape(n * height, width * channels)
    shifted = _scratch(0, (n * height, width * channels), images.dtype)
    np.take(source, rows.reshape(-1), axis=0, out=shifted, mode="clip")
    if not reflect and outside.any():
        shifted[outside[vertical].reshape(-1)] = fill
    shifted = shifted.reshape(n, height, width, channels)
    mirrored = None
    if kept < n:
        rotated = _scratch(2, (n - kept, height, width, channels), images.dtype)
        flat_in, flat_out = shifted[kept:].reshape(-1), rotated.reshape(-1)
        for channel in range(channels):
            flat_out[channel::channels] = flat_in[channel::channels][::-1]
        mirrored = rotated[::-1, ::-1]  # mirrored[j] is shifted[kept + j] flipped horizontally
    sorted_out = _scratch(1, (n, height, width, channels), images.dtype)
    cells_out, cells_in = _cells(sorted_out), _cells(shifted)
    for index in range(len(bounds) - 1):
        start, stop = int(bounds[index]), int(bounds[index + 1])
        if start == stop:
            continue
        is_flipped, shift = index >= span, index % span - pad
        dst = sorted_out[start:stop]
        src = mirrored[start - kept : stop - kept] if is_flipped else shifted[start:stop]
        lost = abs(shift)
        if shift >= 0:
            dst[:, :, : width - lost] = src[:, :, lost:]
        else:
            dst[:, :, lost:] = src[:, :, : width - lost]
        if lost == 0:
            continue
        border = slice(width - lost, width) if shift > 0 else slice(0, lost)
        if not reflect:
            dst[:, :, border] = fill
        elif is_flipped:  # the mirrored image's reflection is a forward run of the unflipped one
            runs = slice(1, 1 + lost) if shift > 0 else slice(width - 1 - lost, width - 1)
            dst[:, :, border] = shifted[start:stop, :, runs]
        elif shift > 0:  # output column width - lost + k reads column width - 2 - k
            for k in range(lost):
                cells_out[start:stop, :, width - lost + k] = cells_in[start:stop, :, width - 2 - k]
        else:  # output column k reads column lost - k
            for k in range(lost):
                cells_out[start:stop, :, k] = cells_in[start:stop, :, lost - k]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    np.take(sorted_out, inverse, axis=0, out=out, mode="clip")
    return out


def _cells(images: np.ndarray) -> np.ndarray:
    """A ``(n, H, W)`` view of C-contiguous ``(n, H, W, C)`` images with one opaque element per pixel.

    Copying a pixel column through it is one strided loop over the rows instead of a loop of ``C`` values per pixel.
    """
    n, height, width, channels = images.shape
    return images.view(np.dtype((np.void, channels * images.dtype.itemsize))).reshape(n, height, width)


def _flip_numpy(images: np.ndarray, flip: np.ndarray, owned: bool) -> np.ndarray:
    """The flip on the host: the flipped images reversed with one long strided pass per channel.

    Reversing the flat values of ``k`` images channel by channel turns each into
    its 180-degree rotation, in reverse order; writing them back with their rows
    reversed leaves the horizontal flip.
    """
    out = images if owned and _writable_buffer(images) else _copy(images, np)
    index = np.flatnonzero(flip)
    if index.size == 0:
        return out
    shape = (index.size, *out.shape[1:])
    chosen = _scratch(2, shape, out.dtype)
    np.take(out, index, axis=0, out=chosen, mode="clip")
    rotated = _scratch(3, shape, out.dtype)
    channels = shape[3]
    flat_in, flat_out = chosen.reshape(-1), rotated.reshape(-1)
    for channel in range(channels):
        flat_out[channel::channels] = flat_in[channel::channels][::-1]
    out[index[::-1]] = rotated[:, ::-1]
    return out


def _cutout_numpy(
    images: np.ndarray, cy: np.ndarray, cx: np.ndarray, size: int, fill: float, owned: bool
) -> np.ndarray:
    """Cutout on the host: each clipped square written as four overlapping blocks of one fixed size.

    A clipped side ``[a0, a1)`` is at least ``m = min(side, size - size // 2)``
    and at most ``2m`` pixels long, so ``[a0, a0 + m)`` and ``[a1 - m, a1)``
    cover it exactly; the four corners' ``m_rows x m_cols`` blocks cover the
    square. One indexed write through a view of blocks starting at every pixel.
    """
    out = images if owned and _writable_buffer(images) else _copy(images, np)
    n, height, width, channels = out.shape
    if size == 0 or n == 0:
        return out
    half = size // 2
    block_rows, block_cols = min(height, size - half), min(width, size - half)
    top, left = np.maximum(cy - half, 0), np.maximum(cx - half, 0)
    bottom = np.minimum(cy - half + size, height) - block_rows
    right = np.minimum(cx - half + size, width) - block_cols
    rows = np.stack([top, top, bottom, bottom], axis=1) + (np.arange(n) * height)[:, None]  # (n, 4)
    starts = rows * width + np.stack([left, right, left, right], axis=1)  # first pixel of each block
    item = out.itemsize
    blocks = np.lib.stride_tricks.as_strided(
        out.reshape(-1),
        shape=(n * height * width - (block_rows - 1) * width - block_cols + 1, block_rows, block_cols * channels),
        strides=(channels * item, width * channels * item, item),
    )
    blocks[starts.reshape(-1)] = fill
    return out


def _reflect(index: Any, size: int, xp: Any) -> Any:
    """Reflect out-of-range indices once about the edges (``-1 -> 1``, ``size -> size - 2``)."""
    index = xp.where(index < 0, -index, index)
    return xp.where(index >= size, 2 * (size - 1) - index, index)


# ------------------------------------------------- whose buffer a result is; the NumPy path's switch (apply.py)


def _writable_buffer(array: np.ndarray) -> bool:
    return bool(array.flags.c_contiguous and array.flags.writeable)


def _fresh(result: Any, images: Any, xp: Any) -> bool:
    """Whether a user op's result can be returned as is (not the caller's memory, as far as we can tell)."""
    if xp is np:
        return not np.may_share_memory(result, images)
    return result is not images


def _copy(array: Any, xp: Any) -> Any:
    if xp is np:
        out = _aligned_empty(array.shape, array.dtype)
        np.copyto(out, array)
        return out
    return xp.asarray(array, copy=True)


def _numpy_fast_path(xp: Any) -> bool:
    """Whether the built-in ops take their NumPy path (tests switch it off to compare with the reference)."""
    return xp is np and _FAST_PATH_ENABLED


_FAST_PATH_ENABLED = True


# ------------------------------------------------- aligned and per-thread scratch buffers
def _aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    from gpuloader.gather import aligned_empty

    return aligned_empty(tuple(shape), dtype)


_SCRATCH = threading.local()
_SCRATCH_LIMIT = 256 << 20  # bytes per buffer kept between batches; larger ones are allocated each time


def _scratch(slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread work buffer, reused from batch to batch (fresh pages cost more than the copies here).

    Holds intermediate results only: what an op returns is never a scratch buffer.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _SCRATCH_LIMIT:
        return np.empty(shape, dtype)
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = buffers[slot] = np.empty(max(nbytes, 1), np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)
