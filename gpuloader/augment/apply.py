"""Applying a list of ops to a gathered batch: validation at construction, dispatch per batch."""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader.augment._host import (
    _aligned_empty,
    _copy,
    _crop_numpy,
    _cutout_numpy,
    _flip_numpy,
    _fresh,
    _numpy_fast_path,
    _writable_buffer,
)
from gpuloader.augment.fused import fused_ops, gather_augment_host, host_kernel
from gpuloader.augment.keyed import _PROTOCOL, _words
from gpuloader.augment.normalize import Normalize
from gpuloader.augment.ops import (
    CHANNELS_FIRST,
    CHANNELS_LAST,
    GEOMETRIC,
    AugmentOp,
    RandomCrop,
    RandomFlip,
    _numpy_dtype,
    as_planes,
    keras_data_format,
    looks_like_other_format,
)
from gpuloader.gather import is_aligned

_BUILTIN = (*GEOMETRIC, Normalize)
_BUILT_IN_NAMES = {kind.__name__ for kind in _BUILTIN}


@dataclass(frozen=True)
class Stream:
    """A list of ops that draws from a stream of random words of its own.

    Inputs given equal lists get equal draws for each sample: an image and its
    mask get the same crop and flip. Another stream gives other draws, for
    example two views of the same images::

        augment={"view1": ops, "view2": augment.Stream(ops, 1)}

    Args:
        ops: the list of ops.
        stream: an int >= 0; every plain list draws from stream 0.
    """

    ops: Any
    stream: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.stream, bool) or not isinstance(self.stream, numbers.Integral) or self.stream < 0:
            raise ValueError(
                f"Stream(stream=...) must be an int >= 0; received {self.stream!r}. Fix: e.g. Stream(ops, 1)."
            )
        object.__setattr__(self, "stream", int(self.stream))


def ops_and_stream(value: Any) -> tuple[Any, int]:
    """The list and the stream of an ``augment`` value: a :class:`Stream`, or a plain list (stream 0)."""
    return (value.ops, value.stream) if isinstance(value, Stream) else (value, 0)


def describe_augment(targets: list[tuple[int, list[Any], int]], names: list[str]) -> list[list[Any]]:
    """The augmentation of a loader as JSON values, for its state: ``[[input, stream, [op, ...]], ...]``.

    A built-in op is its repr (every field); an op of your own its class name and ``draws``
    (its other settings are unknown here, and a default repr would differ from process to process).
    """

    def describe(op: Any) -> str:
        return repr(op) if type(op) in _BUILTIN else f"{type(op).__qualname__}(draws={op.draws})"

    return [[names[index], stream, [describe(op) for op in ops]] for index, ops, stream in targets]


def data_format_of(ops: Any) -> str:
    """The data format of a list: its ops' ``data_format`` (they must agree); Keras's setting when none has one.

    Raises:
        ValueError: two ops name different formats.
    """
    formats = {getattr(op, "data_format", None) for op in ops} - {None}
    if len(formats) > 1:
        named = ", ".join(f"{op!r}" for op in ops if getattr(op, "data_format", None) is not None)
        raise ValueError(
            f"augment ops of one list must share a data_format (one input has one layout); received {named}. "
            "Fix: pass the same data_format= to every op, or leave it out to follow keras.config.image_data_format()."
        )
    return formats.pop() if formats else keras_data_format()


def output_dtype(ops: Any, input_dtype: Any) -> np.dtype:
    """The dtype of the batches ``ops`` write for input images of ``input_dtype``: a final :class:`Normalize`'s
    dtype (``ml_dtypes.bfloat16`` for ``"bfloat16"``), else the input's. The pipeline allocates the augmented
    leaf with it."""
    if ops and type(ops[-1]) is Normalize:
        return ops[-1].output_dtype
    return _numpy_dtype(input_dtype)


def output_shape(ops: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the batches ``ops`` write for input images of ``input_shape``: the same (no op resizes)."""
    return tuple(int(size) for size in input_shape)


def check_augment(
    ops: Any, leaf_shape: tuple[int, ...], leaf_dtype: Any, name: str, *, warn_layout: bool = True
) -> list[Any]:
    """Validate an ``augment`` list for one input at construction; return it as a new list.

    Args:
        ops: the list (or tuple) of ops.
        leaf_shape: the whole input's shape, ``(n, H, W)`` or ``(n, H, W, C)``.
        leaf_dtype: its dtype (anything ``numpy.dtype`` takes, or an array-API dtype).
        name: the input's name in messages (e.g. ``"x"`` or ``"x['image']"``).
        warn_layout: warn when the shape looks like the other data format (the Loader warns itself,
            naming its own ``data_format``, and passes False).

    Raises:
        TypeError: ``ops`` is not a list or tuple, an item is not an op, or the dtype is not numeric.
        ValueError: the input is not an image array, or an op refuses it (its rule, value and fix).
    """
    if not isinstance(ops, (list, tuple)):
        raise TypeError(
            f"augment for {name} must be a list of ops, applied in order; received {ops!r}. "
            f"Fix: wrap it in a list, e.g. augment=[{ops!r}]."
            if _is_op(ops)
            else f"augment for {name} must be a list of ops, applied in order; received {type(ops).__name__} "
            f"{ops!r}. Fix: e.g. augment=[augment.RandomCrop(padding=4), augment.RandomFlip()]."
        )
    for position, op in enumerate(ops):
        if isinstance(op, type) and issubclass(op, AugmentOp):
            raise TypeError(
                f"augment[{position}] for {name} is the class {op.__name__}, not an op. "
                f"Fix: create one, e.g. {op.__name__}(...)."
            )
        if not _is_op(op):
            if type(op).__name__ == "Same":  # augment.Same (not imported here: targets imports this module's peers)
                raise TypeError(
                    f"augment[{position}] for {name} is {op!r} inside a list; augment.Same takes the place of the "
                    f"whole list. Fix: augment={{..., {name!r}: {op!r}}}, not [{op!r}]."
                )
            if any(kind.__name__ == "Layer" and kind.__module__.startswith("keras") for kind in type(op).__mro__):
                kind = type(op).__name__
                ours = f"gpuloader.augment.{kind}(...)" if kind in _BUILT_IN_NAMES else "a gpuloader.augment op"
                raise TypeError(
                    f"augment[{position}] for {name} is a Keras layer ({kind}); augment= takes gpuloader's ops, "
                    f"which the loader runs on its keyed draws before the batch reaches the model. Fix: use "
                    f"{ours}, or put the layer in the model."
                )
            raise TypeError(f"augment[{position}] for {name} is not an op: {op!r}; {_PROTOCOL}.")
        if isinstance(op, AugmentOp) and type(op).apply is AugmentOp.apply:
            raise TypeError(
                f"augment[{position}] for {name} is a {type(op).__name__}, which does not define "
                f"apply(self, images, bits, xp) (AugmentOp's own only raises). Fix: define apply in "
                f"{type(op).__name__} (check its spelling); see gpuloader.augment."
            )
    for position, op in enumerate(ops[:-1]):
        if type(op) is Normalize:
            raise ValueError(
                f"augment[{position}] for {name} is {op!r}, which must be the last op of its list (the ops before "
                "it work on the stored pixels, it writes the floats). Fix: move it to the end."
            )
    data_format = data_format_of(ops)
    shape = tuple(int(size) for size in leaf_shape)
    if len(shape) not in (3, 4):
        layout = "(n, C, H, W)" if data_format == CHANNELS_FIRST else "(n, H, W, C)"
        raise ValueError(
            f"augment needs image arrays, (n, H, W) or {data_format} {layout}; {name} has shape {shape} "
            f"({len(shape)} dimensions). Fix: reshape {name} to images, or give augment only for image inputs."
        )
    if warn_layout and looks_like_other_format(shape, data_format):
        other = CHANNELS_LAST if data_format == CHANNELS_FIRST else CHANNELS_FIRST
        warnings.warn(
            f"augment for {name}: shape {shape} looks {other} but the ops' data_format is {data_format!r}, so "
            f"they would move axis {1 if data_format == CHANNELS_LAST else 3} as if it were "
            f"{'height' if data_format == CHANNELS_LAST else 'width'}. Fix: pass data_format={other!r} to the ops "
            "(or keras.config.set_image_data_format), or transpose the images.",
            stacklevel=3,
        )
    if 0 in shape[1:]:
        raise ValueError(f"augment needs non-empty images; {name} has shape {shape}. Fix: drop augment for {name}.")
    dtype = _numpy_dtype(leaf_dtype)
    if dtype.kind not in "biuf":
        raise TypeError(
            f"augment needs numeric images (bool, integer or floating); {name} has dtype {dtype}. "
            f"Fix: convert {name}, e.g. to uint8 or float32."
        )
    for op in ops:
        check = getattr(op, "check", None)
        if callable(check):
            check(shape, dtype, name)
    return list(ops)


def _is_op(op: Any) -> bool:
    draws = getattr(op, "draws", None)
    return (
        not isinstance(op, type)
        and callable(getattr(op, "apply", None))
        and isinstance(draws, numbers.Integral)
        and not isinstance(draws, bool)
        and draws >= 0
    )


# ------------------------------------------------------------------ the pipeline
def apply_augment(
    ops: Any,
    images: Any,
    sample_ids: Any,
    seed: int,
    epoch: int,
    xp: Any,
    *,
    overwrite: bool = False,
    stream: int = 0,
) -> Any:
    """Apply ``ops`` in order to a batch of images; return the augmented batch, same shape and dtype.

    Args:
        ops: a list checked by :func:`check_augment`.
        images: ``(n, H, W, C)`` or ``(n, H, W)`` array in namespace ``xp`` (a gathered batch).
        sample_ids: 1-d integer array of ``n`` global dataset indices, one per row, in ``xp``.
        seed: the loader's seed, in [0, 2**64).
        epoch: the epoch, >= 0.
        xp: the array namespace (``numpy``, ``cupy``, ``array_api_strict``).
        overwrite: ``False`` (default): ``images`` is left untouched and the
            result is a new array. ``True``: the ops may write into ``images``
            and return it (for a freshly gathered batch nobody else holds: on
            the host it saves allocating a second batch buffer).
        stream: the list's stream of random words (see :class:`Stream`).

    Each row's result depends only on its pixels and ``(seed, epoch,
    sample_ids[row], stream)``. On the host the result is C-contiguous and 64-byte
    aligned when ``images`` is. Cost: see the module docstring.
    """
    shape = tuple(images.shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"apply_augment needs (n, H, W) or (n, H, W, C) images; received shape {shape}.")
    n = shape[0]
    if tuple(sample_ids.shape) != (n,):
        raise ValueError(
            f"apply_augment needs one sample id per image: {n} images, sample_ids of shape {tuple(sample_ids.shape)}."
        )
    data_format = data_format_of(ops) if ops else CHANNELS_LAST
    first = data_format == CHANNELS_FIRST
    if len(shape) == 4:
        work = images
    else:  # one channel, on the format's channel axis
        work = xp.reshape(images, (n, 1, *shape[1:]) if first else (*shape, 1))
    channels = work.shape[1] if first else work.shape[3]
    fused = None
    if ops and _numpy_fast_path(xp) and host_kernel():
        fused = fused_ops(ops, work.dtype, channels, data_format)
    if fused is not None:  # built-in ops only: one pass of the host kernel (gpuloader.augment.fused)
        out = _aligned_empty(work.shape, output_dtype(ops, work.dtype))
        source = np.ascontiguousarray(work)
        rows = np.arange(n, dtype=np.int64)
        gather_augment_host(fused, source, rows, sample_ids, seed, epoch, out, stream=stream)
        return out if len(shape) == 4 else out.reshape(shape)
    draws = tuple(int(op.draws) for op in ops)
    words = _words(xp, sample_ids, seed, epoch, draws, stream)
    fast = _numpy_fast_path(xp)
    # Whether ``work`` may be written into: a buffer made here, or the caller's under overwrite=True.
    owned = overwrite and (not fast or _writable_buffer(work))
    starts = [sum(draws[:position]) for position in range(len(ops))]
    work_shape = tuple(work.shape)

    def bits_of(position: int) -> Any:
        return words[:, starts[position] : starts[position] + draws[position]]

    def channels_last(array: Any, position: int) -> tuple[Any, Any]:
        """The batch and op ``position``'s words as the built-in ops' NumPy path takes them (see ``as_planes``)."""
        return as_planes(array, bits_of(position), xp) if first else (array, bits_of(position))

    def restored(array: Any) -> Any:
        return xp.reshape(array, work_shape) if first else array

    position = 0
    while position < len(ops):
        op = ops[position]
        following = ops[position + 1] if position + 1 < len(ops) else None
        if fast and _is_builtin(op) and type(op) is not Normalize:
            crop_first = _crop_flip_pair(op, following)
            planes, bits = channels_last(work, position)
            if crop_first is None:
                work = restored(_apply_builtin_numpy(op, planes, bits, owned))
                position += 1
            else:  # a crop and a flip side by side: one pass on the host
                other = channels_last(work, position + 1)[1]
                crop, crop_bits, flip_bits = (op, bits, other) if crop_first else (following, other, bits)
                work = restored(_crop_flip_numpy(crop, crop_bits, flip_bits, not crop_first, planes, owned))
                position += 2
            owned = True
            continue
        bits = bits_of(position)
        try:
            result = op.apply(work, bits, xp)
        except IndexError as error:
            raise IndexError(
                f"augment op {op!r} raised IndexError: {error}. Its bits have shape {tuple(bits.shape)}: one row "
                f"per image, draws={op.draws} words each, so bits[:, j] exists for j < {op.draws} only. Fix: set "
                "the op's draws to the number of words its apply reads."
            ) from error
        position += 1
        _check_result(op, result, work, xp)
        if result is not work:
            owned = _is_builtin(op) or _fresh(result, images, xp)
        work = result
    normalized = bool(ops) and type(ops[-1]) is Normalize  # its NumPy result: fresh, maybe not 64-byte aligned
    if not owned or (normalized and xp is np and not is_aligned(work)):
        work = _copy(work, xp)
    return work if len(shape) == 4 else xp.reshape(work, shape)


def _is_builtin(op: Any) -> bool:
    """Exactly a built-in op: a subclass may change what apply does, so it runs its own apply."""
    return type(op) in _BUILTIN


def _check_result(op: Any, result: Any, work: Any, xp: Any) -> None:
    """Refuse what an op returned unless it is an array of ``xp`` with the batch's shape and dtype."""
    fix = "Fix: return a new array of the batch's shape and dtype, made with xp functions."
    if not hasattr(result, "shape") or not hasattr(result, "dtype") or not _same_namespace(result, work, xp):
        shown = "None (a missing return?)" if result is None else type(result).__name__
        raise TypeError(f"augment op {op!r} returned {shown}, not an array of the batch's namespace {xp.__name__}. "
                        + fix)
    if type(op) is Normalize:  # built in: its dtype is its own (output_dtype)
        return
    if tuple(result.shape) != tuple(work.shape) or result.dtype != work.dtype:
        raise ValueError(
            f"augment op {op!r} returned shape {tuple(result.shape)} and dtype {result.dtype} for a batch of "
            f"shape {tuple(work.shape)} and dtype {work.dtype}; an op must keep both. " + fix
        )


def _same_namespace(result: Any, work: Any, xp: Any) -> bool:
    return isinstance(result, np.ndarray) if xp is np else type(result) is type(work)


def _crop_flip_pair(op: Any, following: Any) -> bool | None:
    """True for a RandomCrop followed by a RandomFlip, False for the reverse, None otherwise (fused on the host)."""
    if type(op) is RandomCrop and type(following) is RandomFlip:
        return True
    if type(op) is RandomFlip and type(following) is RandomCrop:
        return False
    return None


def _apply_builtin_numpy(op: Any, images: np.ndarray, bits: np.ndarray, owned: bool) -> np.ndarray:
    if isinstance(op, RandomCrop):
        dy, dx = op.offsets(bits, np)
        out = images if owned and _writable_buffer(images) else None
        return _crop_numpy(images, dy, dx, op.padding, op.mode == "reflect", op._fill_value(), out)
    if isinstance(op, RandomFlip):
        return _flip_numpy(images, op.flips(bits, np), owned)
    cy, cx = op.centres(bits, images.shape[1], images.shape[2], np)
    return _cutout_numpy(images, cy, cx, op.size, op.fill, owned)


def _crop_flip_numpy(
    crop: RandomCrop, crop_bits: np.ndarray, flip_bits: np.ndarray, flip_first: bool, images: np.ndarray, owned: bool
) -> np.ndarray:
    """A crop and a flip next to each other in the list, in one pass on the host (the same bytes as one by one)."""
    dy, dx = crop.offsets(crop_bits, np)
    flip = RandomFlip().flips(flip_bits, np)
    out = images if owned and _writable_buffer(images) else None
    fill = crop._fill_value()
    return _crop_numpy(images, dy, dx, crop.padding, crop.mode == "reflect", fill, out, flip, flip_first)
