"""Every CuPy-only call gpuloader makes, in one place.

The rest of the package speaks the array API through ``xp`` and runs the same
code with NumPy, CuPy or ``array_api_strict``. What the array API does not
cover lives here: finding a CUDA device and its free memory, CuPy's
out-of-memory error, freeing CuPy's memory pool, pinned-memory staging for the
upload, stream synchronisation before TensorFlow reads a batch, and adopting
arrays that already live on a GPU. Nothing here runs at ``import gpuloader``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

#: DLPack device type of CUDA memory (``kDLCUDA``); 13 is managed memory.
_DLPACK_CUDA_DEVICES = (2, 13)


@dataclass(frozen=True)
class DeviceStatus:
    """Whether a CUDA device can be used, and how much memory it has free."""

    usable: bool
    reason: str
    free_bytes: int = 0
    total_bytes: int = 0
    name: str = ""


def import_cupy() -> Any:
    """Import CuPy, or raise ImportError naming the package to install."""
    try:
        return importlib.import_module("cupy")
    except ImportError as error:
        raise ImportError(
            "CuPy is not installed, so the GPU path is unavailable; install it with "
            "`pip install 'gpuloader[gpu]'` (cupy-cuda12x) or the cupy wheel for your CUDA."
        ) from error


def probe() -> DeviceStatus:
    """Find the current CUDA device and its free memory. Never raises."""
    try:
        cupy = import_cupy()
    except ImportError:
        return DeviceStatus(False, "CuPy is not installed (pip install 'gpuloader[gpu]')")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken
        return DeviceStatus(False, f"CuPy cannot reach a CUDA driver ({error})")
    if count < 1:
        return DeviceStatus(False, "no CUDA device is visible")
    try:
        device = cupy.cuda.Device()
        free, total = device.mem_info
        pool = cupy.get_default_memory_pool()
        # Memory CuPy's pool holds but does not use is free for our purposes.
        free += pool.total_bytes() - pool.used_bytes()
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as error:
        return DeviceStatus(False, f"the CUDA device could not be queried ({error})")
    return DeviceStatus(True, "a CUDA device is usable", int(free), int(total), name)


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean the upload cannot complete for lack of memory.

    CuPy raises ``OutOfMemoryError`` for device memory, but a pinned host
    allocation that fails surfaces as ``CUDARuntimeError``.
    """
    cupy = import_cupy()
    return (cupy.cuda.memory.OutOfMemoryError, cupy.cuda.runtime.CUDARuntimeError, MemoryError)


def free_cached_memory() -> None:
    """Give the blocks CuPy's pools cache back to the driver."""
    cupy = import_cupy()
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()


def synchronize() -> None:
    """Wait for the current stream, so a consumer on another stream sees finished data.

    TensorFlow's ``from_dlpack`` takes no stream argument and computes on its own
    streams, so every batch handed to it is finished first.
    """
    import_cupy().cuda.get_current_stream().synchronize()


def aligned_contiguous(array: Any, alignment: int = 64) -> Any:
    """``array`` itself if C-contiguous and aligned, else a fresh copy that is (a transform may
    return a view, and TensorFlow aborts on an unaligned or strided device buffer)."""
    cupy = import_cupy()
    if not isinstance(array, cupy.ndarray):
        return array
    if array.flags.c_contiguous and array.data.ptr % alignment == 0:
        return array
    fresh = cupy.empty(array.shape, array.dtype)  # the pool aligns to 256 bytes
    fresh[...] = array
    return fresh


def pinned_staging(nbytes: int) -> Any:
    """A page-locked host buffer of ``nbytes`` (uint8 NumPy view), for fast uploads."""
    import numpy as np

    cupy = import_cupy()
    memory = cupy.cuda.alloc_pinned_memory(nbytes)
    return np.frombuffer(memory, dtype=np.uint8, count=nbytes)


def upload_rows(target: Any, start: int, host_rows: Any, staging: Any) -> None:
    """Copy C-contiguous host rows into ``target[start:start + len(host_rows)]``.

    The rows pass through the pinned ``staging`` buffer, so the copy runs at
    full PCIe speed and no second copy of the whole array is ever made in RAM.
    """
    import numpy as np

    nbytes = host_rows.nbytes
    pinned = staging[:nbytes].view(host_rows.dtype).reshape(host_rows.shape)
    np.copyto(pinned, host_rows)
    target[start : start + host_rows.shape[0], ...].set(pinned)
    # ``set`` only queues the copy; the staging buffer is refilled by the next chunk.
    synchronize()


def lives_on_cuda(array: Any) -> bool:
    """Whether ``array`` exports CUDA memory through DLPack (CuPy, torch, JAX, TF)."""
    device = getattr(array, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        device_type, _ = device()
    except Exception:
        return False
    return int(device_type) in _DLPACK_CUDA_DEVICES


def adopt(array: Any) -> Any:
    """A CuPy view of a CUDA array from any DLPack producer, without a host trip."""
    cupy = import_cupy()
    if isinstance(array, cupy.ndarray):
        return array
    return cupy.from_dlpack(array)


def namespace() -> Any:
    """The array namespace of the GPU path: CuPy."""
    return import_cupy()
