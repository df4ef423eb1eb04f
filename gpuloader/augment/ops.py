"""The built-in ops (RandomCrop, RandomFlip, Cutout, Normalize), their checks and their array-API path."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gpuloader.augment._host import _crop_numpy, _cutout_numpy, _flip_numpy, _numpy_fast_path, _reflect
from gpuloader.augment.keyed import integers

CHANNELS_LAST, CHANNELS_FIRST = "channels_last", "channels_first"
DATA_FORMATS = (CHANNELS_LAST, CHANNELS_FIRST)


def keras_data_format() -> str:
    """``keras.config.image_data_format()``: imports Keras (lazily, at the first op built without ``data_format``).

    ``"channels_last"`` when Keras is not installed (Keras's own default).
    """
    try:
        import keras
    except ImportError:
        return CHANNELS_LAST
    return str(keras.config.image_data_format())


def check_data_format_field(value: Any, op: str) -> str | None:
    """An op's ``data_format`` argument checked: ``"channels_last"``, ``"channels_first"``, or None (kept:
    the op then follows the Loader's ``data_format``, or Keras's setting where it runs alone; see
    :func:`format_of`)."""
    if value is None:
        return None
    if value not in DATA_FORMATS:
        raise ValueError(
            f"{op}(data_format=...) must be 'channels_last' (images (n, H, W, C)) or 'channels_first' "
            f"((n, C, H, W)); received {value!r}. Fix: e.g. {op}(..., data_format='channels_last'), or leave it "
            "out to follow keras.config.image_data_format()."
        )
    return str(value)


def format_of(op: Any) -> str:
    """The layout ``op`` reads: its own ``data_format``, else ``keras.config.image_data_format()`` (read now).

    Inside a Loader an op left without one has already been given the Loader's.
    """
    return op.data_format if op.data_format is not None else keras_data_format()


def image_axes(shape: tuple[int, ...], data_format: str) -> tuple[int, int, int]:
    """``(height, width, channels)`` of an input's shape ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``."""
    if len(shape) == 3:
        return shape[1], shape[2], 1
    if data_format == CHANNELS_FIRST:
        return shape[2], shape[3], shape[1]
    return shape[1], shape[2], shape[3]


def looks_like_other_format(shape: tuple[int, ...], data_format: str) -> bool:
    """Whether a 4-d shape reads as the other format: a channel axis of 1, 3 or 4 where this one expects height."""
    if len(shape) != 4:
        return False
    first, last = shape[1], shape[3]
    if data_format == CHANNELS_LAST:
        return first in (1, 3, 4) and last > 4
    return last in (1, 3, 4) and first > 4


def as_planes(images: Any, bits: Any, xp: Any) -> tuple[Any, Any]:
    """Channels-first ``(n, C, H, W)`` images as the channels-last batch ``(n * C, H, W, 1)`` of their planes,
    and each sample's words repeated for its ``C`` planes: a geometric op applied to that batch moves every
    plane of a sample alike, which is the op on the channels-first images (a view when ``images`` is contiguous).
    """
    n, channels, height, width = images.shape
    owner = xp.arange(n * channels, dtype=xp.int64) // channels
    return xp.reshape(images, (n * channels, height, width, 1)), xp.take(bits, owner, axis=0)


def _geometric(op: Any, images: Any, bits: Any, xp: Any, apply: Any) -> Any:
    """Run ``apply(images, bits)`` (channels-last) on ``images`` in ``op``'s data format."""
    if format_of(op) == CHANNELS_FIRST:
        planes, plane_bits = as_planes(images, bits, xp)
        return xp.reshape(apply(planes, plane_bits), images.shape)
    return apply(images, bits)


class AugmentOp:
    """Base class of the ops (optional for your own: any object with ``draws`` and ``apply`` works).

    See the module docstring for the protocol.
    """

    draws: ClassVar[int] = 0
    geometric: ClassVar[bool] = False
    """Whether the op moves pixels (an image-shaped target left without it falls out of register)."""

    def apply(self, images: Any, bits: Any, xp: Any) -> Any:
        """Return the augmented ``(n, H, W, C)`` batch, a new array of the same shape and dtype."""
        raise NotImplementedError

    def for_target(self, fill: float | None) -> Any:
        """The op an input following this op's draws gets (``augment.Same``), or None: the target skips it.

        Return ``self`` for an op that moves pixels, a copy painting ``fill`` for
        one that paints, None for one that only changes values. The default refuses:
        only the op knows which it is.
        """
        raise TypeError(_no_target_rule(self))

    def check(self, shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
        """Refuse an input this op cannot augment (called at construction); the default accepts any."""


def _check_int(op: str, field: str, value: Any, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}({field}=...) must be an int (pixels); received {value!r}. Fix: e.g. {example}.")
    if value < 0:
        raise ValueError(f"{op}({field}=...) must be >= 0 (pixels); received {value}. Fix: e.g. {example}.")
    return int(value)


def _check_fill(op: str, fill: Any) -> int | float:
    """The fill as a Python int or float (NumPy scalars too; True/False as 1/0, for bool masks), or TypeError."""
    if isinstance(fill, (bool, np.bool_)):
        return int(fill)
    if not isinstance(fill, numbers.Real):
        raise TypeError(f"{op}(fill=...) must be a real number (a pixel value); received {fill!r}. Fix: e.g. fill=0.")
    if isinstance(fill, numbers.Integral):
        return int(fill)
    try:
        return float(fill)
    except OverflowError:  # e.g. a Fraction or Decimal beyond the float range
        raise ValueError(
            f"{op}(fill={fill!r}) is beyond the range of any image dtype. Fix: pass a pixel value, e.g. fill=0."
        ) from None


def _fill_fits(op: str, fill: float, dtype: np.dtype, name: str) -> None:
    """Refuse a fill value the images' dtype cannot hold exactly."""
    if dtype.kind in "iub":
        low, high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        # compared as Python numbers: float(10**400) would raise OverflowError
        integral = isinstance(fill, int) or float(fill).is_integer()
        if not integral or not low <= fill <= high:
            raise ValueError(
                f"{op}(fill={fill!r}) must be a value {name}'s dtype {dtype} holds exactly "
                f"(an integer in [{low}, {high}]). Fix: pass such a fill, e.g. fill=0."
            )
    elif isinstance(fill, int) and abs(fill) > int(np.finfo(dtype).max):
        raise ValueError(
            f"{op}(fill={fill!r}) overflows {name}'s dtype {dtype}. Fix: pass a fill within its range, e.g. fill=0."
        )
    elif math.isfinite(float(fill)):
        with np.errstate(over="ignore"):
            representable = np.isfinite(np.asarray(fill, dtype=dtype))
        if representable:
            return
        raise ValueError(
            f"{op}(fill={fill!r}) overflows {name}'s dtype {dtype}. Fix: pass a fill within its range, e.g. fill=0."
        )


@dataclass(frozen=True)
class RandomCrop(AugmentOp):
    """Pad by ``padding`` on each side and crop back at a random offset (a translation in [-padding, padding]).

    Args:
        padding: pixels added on each side, ``0 <= padding < min(H, W)``.
        mode: ``"reflect"`` (mirror without repeating the edge pixel, as
            ``numpy.pad``) or ``"constant"`` (pad with ``fill``).
        fill: the padding value for ``mode="constant"`` (default 0); must fit the images' dtype.
        data_format: ``"channels_last"`` (``(n, H, W, C)``) or ``"channels_first"`` (``(n, C, H, W)``);
            default: the Loader's ``data_format`` (itself ``keras.config.image_data_format()`` unless given),
            or Keras's setting when the op runs outside a Loader.

    Draws two words per sample: ``dy`` from the first, ``dx`` from the second.
    Cost: one pass over the batch (see the module docstring).
    """

    padding: int
    mode: str = "reflect"
    fill: float | None = None
    data_format: str | None = None
    draws: ClassVar[int] = 2
    geometric: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_format", check_data_format_field(self.data_format, "RandomCrop"))
        # Fields are stored as Python ints and floats: a NumPy integer would turn the draws' arithmetic to floats.
        object.__setattr__(self, "padding", _check_int("RandomCrop", "padding", self.padding, "RandomCrop(padding=4)"))
        if self.mode not in ("reflect", "constant"):
            raise ValueError(
                f"RandomCrop(mode=...) must be 'reflect' or 'constant'; received {self.mode!r}. "
                "Fix: RandomCrop(padding, mode='reflect')."
            )
        if self.fill is not None:
            object.__setattr__(self, "fill", _check_fill("RandomCrop", self.fill))
            if self.mode != "constant":
                raise ValueError(
                    f"RandomCrop(fill={self.fill!r}) applies to mode='constant' only (mode is {self.mode!r}). "
                    "Fix: drop fill, or pass mode='constant'."
                )

    def check(self, shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
        data_format = format_of(self)
        height, width, _ = image_axes(shape, data_format)
        if self.padding >= min(height, width):
            hint = ""
            if looks_like_other_format(shape, data_format):
                hint = f" (it looks like the other data format; the op's data_format is {data_format!r})"
            raise ValueError(
                f"RandomCrop(padding={self.padding}) needs padding < the image height and width, so that a "
                f"translation keeps part of the image in view and the reflection exists; {name} has images of "
                f"{height} x {width} (shape {tuple(shape)}, {data_format}){hint}. "
                f"Fix: padding <= {min(height, width) - 1}, or the right data_format."
            )
        if self.mode == "constant":
            _fill_fits("RandomCrop", 0 if self.fill is None else self.fill, dtype, name)

    def offsets(self, bits: Any, xp: Any) -> tuple[Any, Any]:
        """The ``(dy, dx)`` int64 translations, each in ``[-padding, padding]``, from this op's words."""
        span = 2 * self.padding + 1
        return integers(bits[:, 0], span, xp) - self.padding, integers(bits[:, 1], span, xp) - self.padding

    def apply(self, images: Any, bits: Any, xp: Any) -> Any:
        """The crop of ``(n, H, W, C)`` or ``(n, C, H, W)`` images (its ``data_format``)."""
        return _geometric(self, images, bits, xp, lambda images, bits: self._apply_last(images, bits, xp))

    def _apply_last(self, images: Any, bits: Any, xp: Any) -> Any:
        dy, dx = self.offsets(bits, xp)
        if _numpy_fast_path(xp):
            return _crop_numpy(images, dy, dx, self.padding, self.mode == "reflect", self._fill_value())
        return self.apply_array_api(images, dy, dx, xp)

    def apply_array_api(self, images: Any, dy: Any, dx: Any, xp: Any) -> Any:
        """The crop in array-API operations: one ``take`` over flat pixel indices (the reference path)."""
        n, height, width, channels = images.shape
        rows = xp.reshape(xp.arange(height, dtype=xp.int64), (1, height)) + xp.reshape(dy, (n, 1))
        cols = xp.reshape(xp.arange(width, dtype=xp.int64), (1, width)) + xp.reshape(dx, (n, 1))
        if self.mode == "reflect":
            rows, cols = _reflect(rows, height, xp), _reflect(cols, width, xp)
        else:
            inside = xp.reshape((rows >= 0) & (rows < height), (n, height, 1)) & xp.reshape(
                (cols >= 0) & (cols < width), (n, 1, width)
            )
            rows, cols = xp.clip(rows, 0, height - 1), xp.clip(cols, 0, width - 1)
        base = xp.reshape(xp.arange(n, dtype=xp.int64) * height, (n, 1))
        index = xp.reshape((base + rows) * width, (n, height, 1)) + xp.reshape(cols, (n, 1, width))
        pixels = xp.reshape(images, (n * height * width, channels))
        out = xp.reshape(xp.take(pixels, xp.reshape(index, (-1,)), axis=0), (n, height, width, channels))
        if self.mode == "constant":
            fill = xp.asarray(_scalar(self._fill_value(), images.dtype), dtype=images.dtype)
            out = xp.where(xp.reshape(inside, (n, height, width, 1)), out, fill)
        return out

    def _fill_value(self) -> float:
        return 0 if self.fill is None else self.fill

    def for_target(self, fill: float | None) -> RandomCrop:
        """The same crop; a constant one pads the target with ``fill``."""
        if self.mode != "constant":
            return self
        return dataclasses.replace(self, fill=_target_fill(self, fill))


@dataclass(frozen=True)
class RandomFlip(AugmentOp):
    """Flip horizontally (``x -> W - 1 - x``) with probability 1/2: when the top bit of the sample's word is 1.

    Args:
        data_format: ``"channels_last"`` or ``"channels_first"``; default: the Loader's (see RandomCrop).

    Cost: the flipped images are reversed once (see the module docstring).
    """

    data_format: str | None = None
    draws: ClassVar[int] = 1
    geometric: ClassVar[bool] = True

    def for_target(self, fill: float | None) -> RandomFlip:
        """The same flip."""
        return self

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_format", check_data_format_field(self.data_format, "RandomFlip"))

    def flips(self, bits: Any, xp: Any) -> Any:
        """The bool mask of the samples to flip."""
        return (bits[:, 0] >> 63) == 1

    def apply(self, images: Any, bits: Any, xp: Any) -> Any:
        """The flip of ``(n, H, W, C)`` or ``(n, C, H, W)`` images (its ``data_format``)."""
        return _geometric(self, images, bits, xp, lambda images, bits: self._apply_last(images, bits, xp))

    def _apply_last(self, images: Any, bits: Any, xp: Any) -> Any:
        flip = self.flips(bits, xp)
        if _numpy_fast_path(xp):
            return _flip_numpy(images, flip, owned=False)
        return self.apply_array_api(images, flip, xp)

    def apply_array_api(self, images: Any, flip: Any, xp: Any) -> Any:
        """The flip in array-API operations: a ``flip`` and a ``where`` (the reference path)."""
        return xp.where(xp.reshape(flip, (images.shape[0], 1, 1, 1)), xp.flip(images, axis=2), images)


@dataclass(frozen=True)
class Cutout(AugmentOp):
    """Set one ``size x size`` square, centred at a random pixel and clipped at the border, to ``fill``.

    The square covers rows ``[cy - size // 2, cy - size // 2 + size)`` and the
    same columns around ``cx``; ``(cy, cx)`` is uniform over the image's pixels
    (two words per sample: ``cy`` from the first, ``cx`` from the second).

    Args:
        size: the side in pixels (>= 0; 0 changes nothing).
        fill: the value written; must fit the images' dtype.
        data_format: ``"channels_last"`` or ``"channels_first"``; default: the Loader's (see RandomCrop).
    """

    size: int
    fill: float = 0
    data_format: str | None = None
    draws: ClassVar[int] = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_format", check_data_format_field(self.data_format, "Cutout"))
        object.__setattr__(self, "size", _check_int("Cutout", "size", self.size, "Cutout(size=8)"))
        if self.size > MAX_CUTOUT:
            raise ValueError(
                f"Cutout(size=...) must be <= 2**30 pixels (a square that size already covers any image); "
                f"received {self.size}. Fix: e.g. Cutout(size=8)."
            )
        object.__setattr__(self, "fill", _check_fill("Cutout", self.fill))

    def check(self, shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
        _fill_fits("Cutout", self.fill, dtype, name)

    def for_target(self, fill: float | None) -> Cutout:
        """The same square, painted with ``fill``."""
        return dataclasses.replace(self, fill=_target_fill(self, fill))

    def centres(self, bits: Any, height: int, width: int, xp: Any) -> tuple[Any, Any]:
        """The ``(cy, cx)`` int64 centre of each sample's square."""
        return integers(bits[:, 0], height, xp), integers(bits[:, 1], width, xp)

    def apply(self, images: Any, bits: Any, xp: Any) -> Any:
        """The cutout of ``(n, H, W, C)`` or ``(n, C, H, W)`` images (its ``data_format``)."""
        return _geometric(self, images, bits, xp, lambda images, bits: self._apply_last(images, bits, xp))

    def _apply_last(self, images: Any, bits: Any, xp: Any) -> Any:
        cy, cx = self.centres(bits, images.shape[1], images.shape[2], xp)
        if _numpy_fast_path(xp):
            return _cutout_numpy(images, cy, cx, self.size, self.fill, owned=False)
        return self.apply_array_api(images, cy, cx, xp)

    def apply_array_api(self, images: Any, cy: Any, cx: Any, xp: Any) -> Any:
        """Cutout in array-API operations: a ``where`` against the squares' mask (the reference path)."""
        n, height, width, _ = images.shape
        top = xp.reshape(cy - self.size // 2, (n, 1))
        left = xp.reshape(cx - self.size // 2, (n, 1))
        rows = xp.reshape(xp.arange(height, dtype=xp.int64), (1, height))
        cols = xp.reshape(xp.arange(width, dtype=xp.int64), (1, width))
        in_rows = (rows >= top) & (rows < top + self.size)
        in_cols = (cols >= left) & (cols < left + self.size)
        mask = xp.reshape(in_rows, (n, height, 1, 1)) & xp.reshape(in_cols, (n, 1, width, 1))
        return xp.where(mask, xp.asarray(_scalar(self.fill, images.dtype), dtype=images.dtype), images)


GEOMETRIC = (RandomCrop, RandomFlip, Cutout)
MAX_CUTOUT = 1 << 30


def _target_fill(op: AugmentOp, fill: float | None) -> float:
    """A painting op's fill for a target: the one given to ``augment.Same``, which must be given."""
    if fill is None:
        raise ValueError(
            f"{op!r} paints pixels, so an input that follows its draws needs its own value for them, and "
            "augment.Same(...) was given no fill. Fix: pass one, e.g. augment.Same('x', fill=255) for a mask "
            "whose label 255 means 'ignore', or fill=0."
        )
    return fill


def _no_target_rule(op: Any) -> str:
    return (
        f"augment.Same cannot tell what {type(op).__name__} does to an input that follows its draws (a mask, "
        f"say): it moves pixels, paints them, or only changes their values. Fix: define "
        f"for_target(self, fill) on {type(op).__name__}: return self for an op that moves pixels (and set "
        "geometric = True), a copy that paints fill for one that paints, None for one that only changes values."
    )
def _scalar(fill: float, dtype: Any) -> bool | int | float:
    """``fill`` as the Python scalar type of ``dtype`` (array-API ``asarray`` refuses a float for an int dtype)."""
    kind = _numpy_dtype(dtype).kind
    return bool(fill) if kind == "b" else int(fill) if kind in "iu" else float(fill)


def _numpy_dtype(dtype: Any) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        inner = getattr(dtype, "_np_dtype", None)  # array_api_strict's dtype objects
        return np.dtype(inner if inner is not None else str(dtype))
