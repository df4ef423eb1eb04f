"""``Normalize``: the final op that turns images into floats, ``(x - mean) / std``, in the fused pass.

The rounding rule (the same bytes on every path: the host kernel, the CUDA
text, the NumPy path and the array-API path):

1. ``x`` is converted to float32 (exact for 8- and 16-bit integers; otherwise
   rounded to nearest, ties to even, as ``numpy.astype`` does);
2. ``d = x - m`` in float32, where ``m = float32(mean)``;
3. ``y = d * s`` in float32, where ``s = float32(1 / std)``: ``1 / std`` computed
   in float64 and rounded once to float32 (a multiply, not a divide, and no
   fused multiply-add: each step rounds to nearest even);
4. ``y`` rounded to the output dtype, to nearest, ties to even: float32 as is;
   float16 as ``numpy.astype(float16)`` (overflow to infinity, subnormals kept);
   bfloat16 as ``ml_dtypes`` does (the top 16 bits of ``y`` after adding
   ``0x7FFF`` plus the lowest kept bit; a NaN becomes the quiet NaN ``0x7FC0``
   with its sign).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gpuloader._warn import warn_at_caller
from gpuloader.augment.ops import CHANNELS_FIRST, AugmentOp, check_data_format_field, format_of, image_axes

OUTPUT_DTYPES = ("float32", "float16", "bfloat16")


def _floats(value: Any, field: str) -> tuple[float, ...]:
    values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    values = list(np.asarray(values).reshape(-1).tolist()) if isinstance(values, np.ndarray) else list(values)
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise TypeError(
            f"Normalize({field}=...) must be a number or one number per channel; received {value!r}. "
            f"Fix: e.g. Normalize(mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7))."
        )
    try:
        floats = tuple(float(v) for v in values)
    except OverflowError:
        floats = (math.inf,)
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"Normalize({field}=...) must be finite; received {value!r}. Fix: e.g. {field}=0.5.")
    return floats


def bfloat16_dtype() -> np.dtype:
    """NumPy's dtype of ``ml_dtypes.bfloat16`` (ml_dtypes ships with TensorFlow and JAX)."""
    try:
        import ml_dtypes
    except ImportError as error:
        raise TypeError(
            f"Normalize(dtype='bfloat16') needs the ml_dtypes package for NumPy's bfloat16 ({error}). "
            "Fix: pip install ml_dtypes, or use dtype='float16' or 'float32'."
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class Normalize(AugmentOp):
    """``(x - mean) / std`` to a float dtype: the last op of a list, applied as the fused kernel writes each pixel.

    Args:
        mean: one number, or one per channel.
        std: one number > 0, or one per channel.
        dtype: the batch's dtype, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (NumPy's from ml_dtypes:
            for TensorFlow, JAX and torch; CuPy has no bfloat16).
        data_format: which axis holds the channels: ``"channels_last"`` or ``"channels_first"``; default
            the Loader's (see RandomCrop).

    The float rounding rule is in this module's docstring. Draws no words.
    Cost: fused, none beyond the geometric ops' pass (the store's bytes read
    once, the floats written once); op by op, a cast and two float32 passes.
    """

    mean: Any
    std: Any
    dtype: str = "float32"
    data_format: str | None = None
    draws: ClassVar[int] = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_format", check_data_format_field(self.data_format, "Normalize"))
        name = self.dtype if isinstance(self.dtype, str) else getattr(np.dtype(self.dtype), "name", "")
        if name not in OUTPUT_DTYPES:
            raise ValueError(
                f"Normalize(dtype=...) must be one of {', '.join(OUTPUT_DTYPES)}; received {self.dtype!r}. "
                "Fix: e.g. Normalize(mean, std, dtype='float32')."
            )
        object.__setattr__(self, "dtype", name)
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std")
        if min(std) <= 0:
            raise ValueError(f"Normalize(std=...) must be > 0; received {self.std!r}. Fix: e.g. std=255.0.")
        scales = np.float32(1.0) / np.asarray(std, dtype=np.float64)
        with np.errstate(over="ignore", under="ignore"):
            if not np.all(np.isfinite(scales.astype(np.float32))):
                raise ValueError(
                    f"Normalize(std={self.std!r}): 1 / std overflows float32. Fix: a std of at least 3e-38."
                )
            if not np.all(scales.astype(np.float32) > 0):  # every pixel would become 0
                raise ValueError(
                    f"Normalize(std={self.std!r}): 1 / std rounds to 0 in float32, so every pixel would become 0. "
                    "Fix: a std of at most 1e44."
                )
            if not np.all(np.isfinite(np.asarray(mean, dtype=np.float64).astype(np.float32))):
                raise ValueError(  # float32(mean) is infinite: every pixel would become -inf or inf
                    f"Normalize(mean={self.mean!r}) is beyond float32's range (about 3.4e38), in which the rule "
                    "subtracts it. Fix: a mean float32 holds."
                )
        object.__setattr__(self, "mean", mean if len(mean) > 1 else mean[0])
        object.__setattr__(self, "std", std if len(std) > 1 else std[0])
        if len(mean) > 1 and len(std) > 1 and len(mean) != len(std):
            raise ValueError(
                f"Normalize: mean has {len(mean)} values and std {len(std)}; give one per channel for both, "
                "or one number."
            )

    def for_target(self, fill: float | None) -> None:
        """A target following these draws (a mask, ``augment.Same``) is never normalised: it skips this op."""
        return None

    @property
    def output_dtype(self) -> np.dtype:
        """The NumPy dtype of the batches it writes."""
        return bfloat16_dtype() if self.dtype == "bfloat16" else np.dtype(self.dtype)

    def channels(self) -> int:
        """How many channels its mean and std are for (1: any)."""
        return max(len(_floats(self.mean, "mean")), len(_floats(self.std, "std")))

    def constants(self, channels: int) -> np.ndarray:
        """``(channels, 2)`` float32: each channel's ``float32(mean)`` and ``float32(1 / std)`` (rule step 2 and 3)."""
        mean = np.broadcast_to(np.asarray(_floats(self.mean, "mean"), dtype=np.float64), (channels,))
        std = np.broadcast_to(np.asarray(_floats(self.std, "std"), dtype=np.float64), (channels,))
        out = np.empty((channels, 2), dtype=np.float32)
        out[:, 0] = mean.astype(np.float32)
        out[:, 1] = (1.0 / std).astype(np.float32)
        return out

    def check(self, shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
        data_format = format_of(self)
        channels = image_axes(shape, data_format)[2]
        if self.channels() not in (1, channels):
            axis = "1" if data_format == CHANNELS_FIRST else "-1"
            raise ValueError(
                f"Normalize has {self.channels()} means or stds but {name} has {channels} channels (axis {axis} "
                f"of shape {tuple(shape)}, {data_format}). Fix: one value per channel, one number for all, "
                "or the right data_format."
            )
        means, stds = _floats(self.mean, "mean"), _floats(self.std, "std")
        if dtype.kind in "iu" and np.dtype(dtype).itemsize == 1 and max(map(abs, means)) <= 1 and max(stds) <= 1:
            warn_at_caller(
                f"Normalize(mean={self.mean!r}, std={self.std!r}) is on the [0, 1] scale, but {name} holds "
                f"{np.dtype(dtype).name} pixels (0 to 255), so batches would reach hundreds. Fix: scale them to "
                f"the pixels' range, e.g. Normalize(mean={tuple(round(m * 255, 3) for m in means)}, "
                f"std={tuple(round(v * 255, 3) for v in stds)})."
            )
        if self.dtype == "bfloat16":
            self.output_dtype  # noqa: B018 -- refuses early when ml_dtypes is missing

    def apply(self, images: Any, bits: Any, xp: Any) -> Any:
        """The reference path: a float32 cast, ``(x - m) * s`` in float32, then the cast to ``dtype``."""
        data_format = format_of(self)
        channels = 1 if images.ndim == 3 else image_axes(tuple(images.shape), data_format)[2]
        constants = self.constants(channels)
        view = (1, channels, 1, 1) if data_format == CHANNELS_FIRST else (1, 1, 1, channels)
        if images.ndim == 3:
            view = (1, 1, 1)
        mean = xp.reshape(xp.asarray(constants[:, 0].copy()), view)
        scale = xp.reshape(xp.asarray(constants[:, 1].copy()), view)
        values = (xp.astype(images, xp.float32) - mean) * scale
        if self.dtype == "float32":
            return values
        if self.dtype == "float16":
            if not hasattr(xp, "float16"):  # the array API standard has no float16 (NumPy and CuPy do)
                raise TypeError(
                    f"Normalize(dtype='float16') runs op by op only in a namespace with float16 "
                    f"({getattr(xp, '__name__', xp)} has none). Fix: dtype='float32'."
                )
            if xp is np:  # the rule's overflow to infinity, without NumPy's RuntimeWarning
                with np.errstate(over="ignore"):
                    return values.astype(np.float16)
            return xp.astype(values, xp.float16)
        if xp is not np:
            raise TypeError(
                f"Normalize(dtype='bfloat16') runs op by op in NumPy only ({getattr(xp, '__name__', xp)} has no "
                "bfloat16); on the GPU the fused kernel writes it for a list of built-in ops. Fix: dtype='float16', "
                "or built-in ops only."
            )
        with np.errstate(over="ignore", invalid="ignore"):
            return values.astype(self.output_dtype)
