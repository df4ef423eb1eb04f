"""Hand a gathered batch to the consumer as its own tensor, zero-copy, through DLPack.

TensorFlow gets ``tf.experimental.dlpack.from_dlpack``; JAX and torch get their
own ``from_dlpack``, which take the producer's stream through the
``__dlpack__(stream=...)`` protocol. Host buffers handed to TensorFlow are
checked for 64-byte alignment and C-contiguity first and copied into an
aligned buffer only when they fail it (a ``transform`` may return any array),
because TensorFlow aborts the process on an unaligned buffer instead of
raising. Buffers are never reused after the hand-off: the tensor owns them.

Cost: about a microsecond per leaf when no alignment copy is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from gpuloader._structure import Structure, flatten
from gpuloader.gather import aligned_empty, is_aligned

BACKENDS = ("tensorflow", "jax", "torch", "numpy")
#: DLPack's IEEE sizes; NumPy's longdouble (float96/float128) and clongdouble are not among them.
_DLPACK_ITEMSIZES = {"f": (2, 4, 8), "c": (8, 16)}
_FRAMEWORKS = {"tensorflow": "TensorFlow", "torch": "torch", "jax": "JAX", "jaxlib": "JAX", "keras": "Keras"}


def dtype_problem(dtype: Any, name: str, *, byte_order_ok: bool = False) -> str | None:
    """Why arrays of ``dtype`` cannot be batched and handed over, with the fix; None when they can.

    Refused: Python objects, strings, bytes, dates, raw and structured bytes,
    ml_dtypes' bfloat16/float8/int4 (NumPy kind "V": DLPack takes none of
    them), long double floats and complex, and, unless ``byte_order_ok`` (the
    loader converts inputs once), a non-native byte order.
    """
    dtype = np.dtype(dtype)
    if (dtype, byte_order_ok) in _ACCEPTED:
        return None  # the per-batch check of a transform's output: a set lookup, no text built
    kind = dtype.kind
    received = f"{name} has dtype {dtype}"
    if dtype.type.__module__.split(".")[0] == "ml_dtypes":  # bfloat16, float8_*, int4, ... (kind "V" or "f")
        if "int" in dtype.name:
            fix = "store it as int8 or uint8: value.astype(np.int8)"
        else:
            fix = (
                "store it as float16 (no larger) or float32: value.astype(np.float32). To compute in bfloat16, "
                "set keras.mixed_precision.set_global_policy('mixed_bfloat16')"
            )
        return f"{received} (an ml_dtypes type, which DLPack cannot hand to TensorFlow or torch); {fix}."
    if kind == "O":
        return (
            f"{received} (object: Python objects, or rows of different lengths); only numeric and bool arrays "
            "can be batched. Pass a numeric array, e.g. np.asarray(value, dtype=np.float32) when every row has "
            "the same length; pad or split ragged rows first."
        )
    if kind in "US":
        what = "string" if kind == "U" else "bytes"
        return (
            f"{received} ({what}); strings are not numeric data and cannot be batched. Encode them first, e.g. "
            "integer ids: names, ids = np.unique(value, return_inverse=True), and pass ids."
        )
    if kind in "Mm":
        what = "datetime" if kind == "M" else "timedelta"
        return (
            f"{received} ({what}); only numeric and bool arrays can be batched. Convert it to numbers first, "
            "e.g. value.astype('int64') (counts of its unit) or seconds as float32."
        )
    if kind == "V":
        if dtype.names:
            return (
                f"{received} (a structured array with fields {', '.join(dtype.names)}); pass each field as an "
                "input of its own, e.g. {field: value[field] for field in value.dtype.names}."
            )
        return (
            f"{received} (raw bytes: np.save writes bfloat16 and float8 arrays so); view it as the dtype it holds "
            "and cast it to float32 or float16, e.g. value.view(ml_dtypes.bfloat16).astype(np.float32), or "
            "as integers: value.view(np.uint8)."
        )
    if kind in _DLPACK_ITEMSIZES and dtype.itemsize not in _DLPACK_ITEMSIZES[kind]:
        fix = "np.float64" if kind == "f" else "np.complex128"
        return (
            f"{received} (long double, {dtype.itemsize} bytes), which no Keras backend takes and DLPack cannot "
            f"hand over; cast it first: value.astype({fix})."
        )
    if not byte_order_ok and not dtype.isnative:
        return (
            f"{received} in non-native byte order ({dtype.str}), which DLPack refuses; return native order: "
            "value.astype(value.dtype.newbyteorder('='))."
        )
    _ACCEPTED.add((dtype, byte_order_ok))
    return None


_ACCEPTED: set[tuple[np.dtype, bool]] = set()
"""The (dtype, byte_order_ok) pairs ``dtype_problem`` found fine (a handful per process)."""


def check_transform_output(result: Any, backend: str | None = None) -> tuple[Structure, list[Any]]:
    """The structure and leaves of what ``transform(batch, xp)`` returned, or a TypeError saying what to return.

    A transform must return a tuple ``(x,)``, ``(x, y)`` or ``(x, y,
    sample_weight)`` (nested tuples/dicts allowed) of arrays of ``xp``: NumPy
    on the host, CuPy on the GPU. Refused, each with the fix: anything else
    (lists of numbers, framework tensors such as a ``tf.Tensor``), dtypes the
    hand-off cannot take, and, when the consumer is TensorFlow (``backend``
    "tensorflow" or None), read-only NumPy arrays, which its DLPack import refuses.

    Cost: a few attribute checks per leaf.
    """
    if not isinstance(result, (tuple, list)) or not 1 <= len(result) <= 3:
        length = f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""
        raise TypeError(
            "transform(batch, xp) must return a tuple (x,), (x, y) or (x, y, sample_weight); "
            f"it returned {type(result).__name__}{length}."
        )
    structure, leaves, names = flatten(tuple(result), "transform output")
    for leaf, name in zip(leaves, names):
        _check_transform_leaf(leaf, name, backend)
    return structure, leaves


def _check_transform_leaf(leaf: Any, name: str, backend: str | None) -> None:
    package = type(leaf).__module__.split(".")[0]
    if package in _FRAMEWORKS:
        framework = _FRAMEWORKS[package]
        raise TypeError(
            f"{name} is a {framework} tensor ({type(leaf).__name__}); transform(batch, xp) runs where the data "
            "lives and must return arrays of xp (NumPy on the host, CuPy on the GPU), which are handed to the "
            "model without a copy. Compute with xp instead, e.g. xp.astype(x, xp.float32) / 255, and leave "
            f"{framework} operations to the model (a Keras layer)."
        )
    if not hasattr(leaf, "__dlpack__") or not hasattr(leaf, "shape"):
        raise TypeError(
            f"{name} is a {type(leaf).__name__}, not an array of the namespace xp; build it "
            "with xp (e.g. xp.astype(x, xp.float32)) so it stays where the data lives."
        )
    if isinstance(leaf, np.ndarray):
        problem = dtype_problem(leaf.dtype, name)
        if problem is not None:
            raise TypeError(f"transform output: {problem}")
        if backend in (None, "tensorflow") and not leaf.flags.writeable:
            raise TypeError(
                f"{name} is a read-only NumPy array (e.g. from np.broadcast_to, or an array from outside the "
                "batch returned as is), which TensorFlow's DLPack import refuses. Return a writable array: the "
                "result of an xp operation, or xp.asarray(value, copy=True)."
            )


def keras_backend() -> str:
    """The Keras backend in use ("tensorflow", "jax", "torch" or "numpy")."""
    import keras

    return keras.backend.backend()


def as_aligned_host(array: Any) -> np.ndarray:
    """A C-contiguous, 64-byte-aligned NumPy array with the contents of a host array.

    Cost: nothing when ``array`` already is one; one copy otherwise.
    """
    host = array if isinstance(array, np.ndarray) else np.from_dlpack(array)
    if is_aligned(host):
        return host
    out = aligned_empty(host.shape, host.dtype)
    np.copyto(out, host)
    return out


def is_host(array: Any) -> bool:
    """Whether ``array`` lives in host memory (NumPy, or DLPack device type CPU)."""
    if isinstance(array, np.ndarray):
        return True
    device = getattr(array, "__dlpack_device__", None)
    return device is not None and int(device()[0]) == 1


_tf_from_dlpack: Any = None


def hand_off(array: Any, backend: str, *, known_aligned: bool = False) -> Any:
    """Turn one gathered array into ``backend``'s tensor without copying its data.

    Args:
        array: a host or device array exporting ``__dlpack__``.
        backend: the Keras backend that consumes it.
        known_aligned: the caller made ``array`` itself, C-contiguous and
            64-byte aligned (as :func:`gpuloader.gather.gather` does); skips the check.
    """
    if isinstance(array, np.ndarray) and array.dtype.type.__name__ == "bfloat16":  # not dtype.name: Python code
        return _hand_off_bfloat16(array, backend, known_aligned)
    if backend == "tensorflow":
        global _tf_from_dlpack
        if _tf_from_dlpack is None:
            from tensorflow.experimental import dlpack as tf_dlpack

            _tf_from_dlpack = tf_dlpack.from_dlpack
        if not known_aligned and is_host(array):
            array = as_aligned_host(array)
        return _tf_from_dlpack(array.__dlpack__())
    if backend == "jax":
        if is_host(array):
            return as_aligned_host(array)  # Keras's JAX trainer takes NumPy as is
        return importlib.import_module("jax.dlpack").from_dlpack(array)
    if backend == "torch":
        return importlib.import_module("torch").from_dlpack(array)
    if backend == "numpy":
        if is_host(array):
            return np.asarray(array) if isinstance(array, np.ndarray) else np.from_dlpack(array)
        return array.get()  # CuPy: the numpy backend runs on the host; one explicit copy
    raise ValueError(f"unknown Keras backend {backend!r}; expected one of {BACKENDS}")


def _hand_off_bfloat16(array: np.ndarray, backend: str, known_aligned: bool) -> Any:
    """A host bfloat16 batch (``augment.Normalize(dtype="bfloat16")``; NumPy's is ml_dtypes', kind "V", which
    DLPack refuses): its bits go over as uint16 and the framework reinterprets them, without copying the values.

    TensorFlow: ``tf.bitcast`` to ``tf.bfloat16``; torch: ``Tensor.view(torch.bfloat16)``; JAX and the numpy
    backend take the ml_dtypes array itself.
    """
    if backend == "tensorflow":
        import tensorflow as tf

        bits = hand_off(array.view(np.uint16), backend, known_aligned=known_aligned)
        return tf.bitcast(bits, tf.bfloat16)
    if backend == "torch":
        torch = importlib.import_module("torch")
        return torch.from_dlpack(array.view(np.uint16)).view(torch.bfloat16)
    if backend in ("jax", "numpy"):
        return array if known_aligned else as_aligned_host(array)
    raise ValueError(f"unknown Keras backend {backend!r}; expected one of {BACKENDS}")
