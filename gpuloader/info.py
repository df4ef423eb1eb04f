"""What gpuloader sees on this machine: ``gpuloader.info()`` and ``python -m gpuloader info``.

Versions (gpuloader, Python, NumPy, Keras and its backend), which optional
frameworks import (TensorFlow, JAX, torch, CuPy) and their versions, every CUDA
device with its free and total memory (or why there is none), ``$GPULOADER_DEVICE``,
and, for a dataset described by its shape and dtype (or its size in bytes),
the placement a :class:`gpuloader.Loader` would choose and why, by the same
rule and the same byte estimate, without allocating or loading anything.

Every import happens inside :func:`info`: ``import gpuloader`` stays light.
"""

from __future__ import annotations

import importlib
import math
import os
import platform
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gpuloader import placement as placement_lib
from gpuloader.handoff import dtype_problem

FRAMEWORKS = ("tensorflow", "jax", "torch", "cupy")
#: Optional libraries of the input kinds (gpuloader.ingest): distribution name -> what it reads.
INPUT_LIBRARIES = {"pillow": "image folders", "datasets": "Hugging Face datasets", "tensorflow": "tf.data / TFDS"}
#: CUDA ordinals probed at most (probing stops at the first that does not exist).
MAX_DEVICES = 64
#: No array holds more bytes (NumPy's sizes are int64).
MAX_BYTES = 2**63 - 1


def info(
    shape: Sequence[int] | None = None,
    dtype: Any = "float32",
    *,
    nbytes: int | None = None,
    rows: int | None = None,
    y_dtype: Any = None,
    batch_size: int = 32,
    device: str | None = None,
    gpu_memory_fraction: float = placement_lib.DEFAULT_GPU_MEMORY_FRACTION,
    frameworks: Iterable[str] = FRAMEWORKS,
) -> dict[str, Any]:
    """Describe the software, the CUDA devices and (optionally) a dataset's placement, as a dict.

    Args:
        shape: shape of ``x``, samples first, e.g. ``(50000, 32, 32, 3)``; or None.
        dtype: dtype of ``x`` (with ``shape``).
        nbytes: instead of ``shape``: the data's size in bytes.
        rows: with ``nbytes``: the number of samples (for the batch buffers and
            the permutation scratch; left out of the estimate when unknown).
        y_dtype: dtype of a label array of one value per sample, counted in too.
        batch_size: the Loader's ``batch_size`` (its default is 32).
        device: the Loader's ``device``; None reads ``$GPULOADER_DEVICE`` as the Loader does.
        gpu_memory_fraction: the Loader's ``gpu_memory_fraction``.
        frameworks: which of TensorFlow, JAX, torch and CuPy to try importing.

    Returns:
        A JSON-serialisable dict: ``gpuloader``, ``python``, ``platform``,
        ``numpy``, ``keras`` (version, backend), ``frameworks`` (name ->
        ``{"imports", "version"}`` or ``{"imports": False, "error"}``), ``cuda``
        (``devices``: ordinal, name, free and total bytes; ``reason`` when none is
        usable), ``augment_kernel`` (``{"built": True}``, or ``{"built": False,
        "reason"}``: the built-in augmentation ops then run on their NumPy path),
        ``arrow_gather`` (the same for the compiled row gather of Arrow columns, Hugging
        Face datasets: without it NumPy's fancy index reads them), ``folder_stat`` (the same
        for the compiled stat of an image folder's files: without it ``os.stat`` in a loop),
        ``inputs`` (Pillow, datasets, tensorflow: ``{"installed", "version", "reads"}``),
        ``env`` and ``placement`` (None when no dataset was described).

    Raises:
        ValueError: both or neither of a shape and ``nbytes`` given for a
            placement question, a non-positive or non-whole size, or more
            than 2**63 - 1 bytes.
    """
    import gpuloader

    asked = shape is not None or nbytes is not None
    if asked:  # refuse a bad description before the slow imports
        _estimate(shape, dtype, nbytes, rows, y_dtype, batch_size)
    report: dict[str, Any] = {
        "gpuloader": gpuloader.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "keras": _keras(),
        "frameworks": {name: _try_import(name) for name in frameworks},
        "cuda": cuda_devices(),
        "augment_kernel": _augment_kernel(),
        "arrow_gather": _arrow_gather(),
        "folder_stat": _folder_stat(),
        "inputs": input_libraries(),
        "env": {name: os.environ.get(name) for name in (placement_lib.ENV_DEVICE, "KERAS_BACKEND")},
        "placement": None,
    }
    if asked:
        report["placement"] = would_place(
            shape, dtype, nbytes=nbytes, rows=rows, y_dtype=y_dtype, batch_size=batch_size, device=device,
            gpu_memory_fraction=gpu_memory_fraction,
        )
    return report


def input_libraries() -> dict[str, dict[str, Any]]:
    """Which optional input libraries are installed, and their versions (read from metadata, not imported)."""
    from importlib import metadata

    found = {}
    for name, reads in INPUT_LIBRARIES.items():
        try:
            found[name] = {"installed": True, "version": metadata.version(name), "reads": reads}
        except metadata.PackageNotFoundError:
            found[name] = {"installed": False, "version": None, "reads": reads}
    return found


def _augment_kernel() -> dict[str, Any]:
    from gpuloader.augment import fused

    missing = fused.host_kernel_missing()
    return {"built": True} if missing is None else {"built": False, "reason": missing}


def _arrow_gather() -> dict[str, Any]:
    from gpuloader.sources import arrow

    missing = arrow.compiled_gather_missing()
    return {"built": True} if missing is None else {"built": False, "reason": missing}


def _folder_stat() -> dict[str, Any]:
    from gpuloader.ingest import folder

    missing = folder.compiled_stat_missing()
    return {"built": True} if missing is None else {"built": False, "reason": missing}


def _keras() -> dict[str, Any]:
    try:
        keras = importlib.import_module("keras")
        return {"version": keras.__version__, "backend": keras.backend.backend()}
    except Exception as error:  # not installed, or its backend failed to import
        return {"version": None, "backend": os.environ.get("KERAS_BACKEND"), "error": _one_line(error)}


def _try_import(name: str) -> dict[str, Any]:
    """Whether ``name`` imports, and its version."""
    try:
        module = importlib.import_module(name)
    except Exception as error:  # ImportError, or a broken install raising something else
        return {"imports": False, "error": _one_line(error)}
    return {"imports": True, "version": str(getattr(module, "__version__", "unknown"))}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def cuda_devices() -> dict[str, Any]:
    """Every CUDA device the GPU runtime can use, with free and total memory, or why there is none.

    Asks the same runtime the placement asks (``placement.gpu_runtime()``), one
    ordinal at a time, until one does not exist.
    """
    runtime = placement_lib.gpu_runtime()
    devices: list[dict[str, Any]] = []
    reason = ""
    for ordinal in range(MAX_DEVICES):
        status = runtime.probe(ordinal)
        if status.usable:
            devices.append(
                {
                    "ordinal": ordinal,
                    "name": status.name,
                    "free_bytes": int(status.free_bytes),
                    "total_bytes": int(status.total_bytes),
                }
            )
            continue
        if "could not be queried" in status.reason:  # this device is broken; others may not be
            devices.append({"ordinal": ordinal, "name": "", "error": status.reason})
            continue
        reason = status.reason  # CuPy missing, no driver, no device, or past the last one
        break
    usable = [device for device in devices if "error" not in device]
    return {"devices": devices, "reason": "" if usable else reason or "no CUDA device is usable"}


def would_place(
    shape: Sequence[int] | None = None,
    dtype: Any = "float32",
    *,
    nbytes: int | None = None,
    rows: int | None = None,
    y_dtype: Any = None,
    batch_size: int = 32,
    device: str | None = None,
    gpu_memory_fraction: float = placement_lib.DEFAULT_GPU_MEMORY_FRACTION,
) -> dict[str, Any]:
    """The placement a single-device ``Loader`` over such data would choose, and why; nothing is allocated.

    Same rule (``placement.plan``) and same estimate as the loader: the data,
    4 batches in flight and 24 bytes of permutation scratch per sample. Keras
    is imported first, as a Loader would. Under
    a ``MirroredStrategy`` with several GPUs the loader applies its multi-GPU
    rule instead, which this does not model.
    """
    result = _estimate(shape, dtype, nbytes, rows, y_dtype, batch_size)
    result["gpu_memory_fraction"] = gpu_memory_fraction
    _keras()  # a Loader imports Keras (and so its backend) first: with TensorFlow, the plan turns on memory growth
    try:
        requested = placement_lib.resolve_device(device)
        fraction = placement_lib.check_fraction(gpu_memory_fraction)
        result["device"] = requested
        plan = placement_lib.plan(requested, result["bytes_needed"], fraction)
    except (ValueError, TypeError, placement_lib.GPUUnavailableError) as error:
        result.update(placement=None, reason="", error=f"{type(error).__name__}: {error}")
        return result
    result.update(placement=plan.placement, reason=plan.reason, bytes_free=plan.bytes_free)
    return result


def _estimate(
    shape: Sequence[int] | None, dtype: Any, nbytes: int | None, rows: int | None, y_dtype: Any, batch_size: int
) -> dict[str, Any]:
    """Check a dataset's description and estimate the bytes a Loader would need for it."""
    if (shape is None) == (nbytes is None):
        raise ValueError("describe the data by a shape (with a dtype) or by nbytes, not both and not neither")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; received {batch_size}")
    for name, value in (("x", dtype if shape is not None else None), ("y", y_dtype)):
        if value is None:
            continue
        try:
            problem = dtype_problem(value, name, byte_order_ok=True)
        except TypeError as error:  # a name NumPy does not know, e.g. "bfloat16" without ml_dtypes imported
            problem = (f"{name} has dtype {value!r}, which NumPy does not know ({error}); give a NumPy dtype name "
                       "such as float32, uint8 or int64 (a Loader takes numeric or bool arrays: cast bfloat16/float8 "
                       "data to float32 or float16 first).")
        if problem is not None:
            raise TypeError(problem)
    if shape is not None:
        shape = tuple(int(size) for size in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"shape must have at least one axis, each >= 1; received {shape}")
        if rows is not None and rows != shape[0]:
            raise ValueError(f"rows={rows} contradicts shape {shape} (samples come first)")
        rows = shape[0]
        row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize  # Python ints: no int64 wrap-around
        described = f"x {'x'.join(map(str, shape))} {np.dtype(dtype).name}"
    else:
        nbytes = _whole_bytes(nbytes)
        if nbytes < 1:
            raise ValueError(f"nbytes must be at least 1; received {nbytes}")
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be at least 1; received {rows}")
        row_bytes = -(-nbytes // rows) if rows else 0
        described = f"{placement_lib.format_bytes(nbytes)} of data" + (f" in {rows} samples" if rows else "")
    if y_dtype is not None:
        if rows is None:
            raise ValueError("y_dtype needs the number of samples: give a shape or rows")
        row_bytes += np.dtype(y_dtype).itemsize
        described += f" + y {rows} {np.dtype(y_dtype).name}"
    data_bytes = row_bytes * rows if shape is not None else int(nbytes or 0)
    if shape is None and y_dtype is not None:
        data_bytes += np.dtype(y_dtype).itemsize * int(rows or 0)
    if data_bytes > MAX_BYTES:
        raise ValueError(
            f"the data described ({described}) is {data_bytes} bytes, over the 2**63 - 1 bytes any array can hold; "
            "check the shape or the byte count."
        )
    from gpuloader import store as store_lib  # the loader's own estimate (tests/test_info.py checks they agree)

    samples = rows or 0
    needed = store_lib.bytes_needed(data_bytes, batch_size * row_bytes, samples)  # as the loader: a full batch
    estimate = "data + 4 batches in flight + 24 bytes of permutation scratch per sample"
    if not samples:
        estimate = "data only: pass rows to count the batch buffers and the permutation scratch"
    return {
        "data": described,
        "rows": rows,
        "batch_size": batch_size,
        "data_bytes": data_bytes,
        "bytes_needed": needed,
        "estimate": estimate,
    }


def _whole_bytes(nbytes: Any) -> int:
    """``nbytes`` as an int: an int, or a float that is a whole number (``6e9``); never rounded silently."""
    if isinstance(nbytes, (float, np.floating)) and math.isfinite(nbytes) and float(nbytes).is_integer():
        return int(nbytes)
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
        raise ValueError(
            f"nbytes must be a whole number of bytes (an int, or a float such as 6e9); received {nbytes!r}. "
            "Round it, e.g. nbytes=math.ceil(size)."
        )
    return int(nbytes)


def format_info(report: dict[str, Any]) -> str:
    """:func:`info`'s dict as readable lines (what ``python -m gpuloader info`` prints)."""
    size = placement_lib.format_bytes
    keras = report["keras"]
    lines = [
        f"gpuloader {report['gpuloader']}  (Python {report['python']}, {report['platform']})",
        f"numpy      {report['numpy']}",
        f"keras      {keras['version'] or 'not importable'}, backend {keras.get('backend') or '?'}"
        + (f"  ({keras['error']})" if keras.get("error") else ""),
    ]
    for name, found in report["frameworks"].items():
        shown = found["version"] if found["imports"] else f"does not import ({found['error']})"
        lines.append(f"{name:<10} {shown}")
    cuda = report["cuda"]
    if not cuda["devices"]:
        lines.append(f"CUDA       none: {cuda['reason']}")
    for device in cuda["devices"]:
        if "error" in device:
            lines.append(f"CUDA {device['ordinal']:<5} unusable: {device['error']}")
        else:
            lines.append(
                f"CUDA {device['ordinal']:<5} {device['name']}: {size(device['free_bytes'])} free of "
                f"{size(device['total_bytes'])}"
            )
    kernel = report["augment_kernel"]
    lines.append("augment    host kernel built" if kernel["built"] else f"augment    {kernel['reason']}")
    gather = report["arrow_gather"]
    lines.append("rows       compiled row gather built (Arrow columns, .npy files on disk)" if gather["built"]
                 else f"rows       {gather['reason']}")
    stats = report["folder_stat"]
    lines.append("folder     compiled file stat built" if stats["built"] else f"folder     {stats['reason']}")
    for name, library in report.get("inputs", {}).items():
        shown = library["version"] if library["installed"] else "not installed"
        lines.append(f"{name:<10} {shown}  (input: {library['reads']})")
    for name, value in report["env"].items():
        lines.append(f"${name} = {value if value is not None else '(unset)'}")
    where = report["placement"]
    if where is not None:
        lines.append(
            f"a Loader over {where['data']}, batch_size={where['batch_size']}, device="
            f"{where.get('device', '?')!r}: needs {size(where['bytes_needed'])} ({where['estimate']})"
        )
        if where["placement"] is None:
            lines.append(f"  would fail: {where['error']}")
        else:
            lines.append(f"  would place it on: {where['placement']}")
            lines.append(f"  why: {where['reason']}")
    return "\n".join(lines)
