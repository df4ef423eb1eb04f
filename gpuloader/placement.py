"""Decide once where the data lives: on the GPU or in host RAM, and say why.

Placement is the first layer: everything after it (store, permutation, gather,
transform) runs against the chosen array namespace ``xp`` and never asks again.
The rule for ``device="auto"``: the GPU when CuPy imports, a CUDA device is
visible, and the bytes the loader needs fit within ``gpu_memory_fraction`` of the
device's free memory; otherwise host RAM, with the reason in :class:`Plan`.
Asking for ``device="gpu"`` never falls back: it raises with the numbers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from gpuloader import _cuda

DEVICES = ("auto", "gpu", "host")
ENV_DEVICE = "GPULOADER_DEVICE"
DEFAULT_GPU_MEMORY_FRACTION = 0.5


class GPUUnavailableError(RuntimeError):
    """``device="gpu"`` was asked for and cannot be honoured; the message says why."""


@dataclass(frozen=True)
class Plan:
    """Where the data lives and why, in numbers.

    Attributes:
        placement: "host" or "gpu".
        reason: one readable line: what was chosen and the rule that chose it.
        bytes_needed: data + batch buffers + permutation scratch, in bytes.
        bytes_free: free device memory seen, or None when no device was asked.
    """

    placement: str
    reason: str
    bytes_needed: int
    bytes_free: int | None = None

    def __str__(self) -> str:
        return self.reason


def gpu_runtime() -> ModuleType:
    """The module that holds every CuPy-only call (tests substitute a stand-in)."""
    return _cuda


def resolve_device(device: str | None) -> str:
    """The device asked for: the argument, else ``$GPULOADER_DEVICE``, else "auto"."""
    source = "device"
    if device is None:
        device = os.environ.get(ENV_DEVICE, "auto").strip().lower() or "auto"
        source = f"${ENV_DEVICE}"
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(
            f"{source} must be one of {', '.join(map(repr, DEVICES))}; received {device!r}. "
            "Use 'auto' to let gpuloader choose, 'gpu' to require the GPU, 'host' for RAM."
        )
    return device


def check_fraction(gpu_memory_fraction: float) -> float:
    """Validate the share of free device memory the loader may take."""
    if isinstance(gpu_memory_fraction, bool) or not isinstance(gpu_memory_fraction, (int, float)):
        raise TypeError(
            f"gpu_memory_fraction must be a number in (0, 1]; received {gpu_memory_fraction!r}."
        )
    if not 0 < gpu_memory_fraction <= 1:
        raise ValueError(
            f"gpu_memory_fraction must be in (0, 1]; received {gpu_memory_fraction}. "
            f"The default {DEFAULT_GPU_MEMORY_FRACTION} leaves half the free memory to the model."
        )
    return float(gpu_memory_fraction)


def format_bytes(count: float) -> str:
    """Bytes as a short human figure: 1.5 GB, 320.0 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return f"{count:.1f} TB"


def plan(device: str, bytes_needed: int, gpu_memory_fraction: float) -> Plan:
    """Choose host or GPU for ``bytes_needed`` under the rule of ``device``.

    Raises:
        GPUUnavailableError: ``device="gpu"`` and CuPy, a CUDA device, or the
            memory is missing; the message carries the numbers.
    """
    if device == "host":
        return Plan("host", "host: device='host' was asked for", bytes_needed)
    status = gpu_runtime().probe()
    tensorflow_note = ""
    if status.usable and "tensorflow" in sys.modules:
        # TensorFlow would otherwise reserve most of the GPU at its first op; this has
        # to happen before the memory is measured, so the budget is what TF leaves us.
        tensorflow_note = "; " + share_gpu_with_tensorflow(sys.modules["tensorflow"])
        status = gpu_runtime().probe()
    if not status.usable:
        if device == "gpu":
            raise GPUUnavailableError(
                f"device='gpu' was asked for, but {status.reason}. Install CuPy for your "
                "CUDA and run on a machine with a GPU, or pass device='auto' to fall back to RAM."
            )
        return Plan("host", f"host: {status.reason}", bytes_needed)
    budget = int(status.free_bytes * gpu_memory_fraction)
    numbers = (
        f"needs {format_bytes(bytes_needed)}, budget {format_bytes(budget)} = "
        f"{gpu_memory_fraction:g} x {format_bytes(status.free_bytes)} free on {status.name or 'the GPU'}"
    )
    if bytes_needed <= budget:
        return Plan("gpu", f"gpu: the data fits ({numbers}){tensorflow_note}", bytes_needed, status.free_bytes)
    if device == "gpu":
        raise GPUUnavailableError(
            f"device='gpu' was asked for, but the data does not fit: {numbers}. Raise "
            "gpu_memory_fraction, store compact dtypes (uint8 images, cast in `transform`), "
            "or pass device='auto' to fall back to RAM."
        )
    reason = f"host: the data does not fit on the GPU ({numbers}){tensorflow_note}"
    return Plan("host", reason, bytes_needed, status.free_bytes)


def namespace(placement: str) -> Any:
    """The array namespace for a placement: NumPy on the host, the GPU runtime's otherwise."""
    return np if placement == "host" else gpu_runtime().namespace()


def share_gpu_with_tensorflow(tf: Any) -> str:
    """Keep TensorFlow from reserving the whole GPU, so CuPy's copy of the data fits beside it.

    By default TensorFlow reserves most of a GPU's memory when it first touches
    it. If it has not yet done so, turn on memory growth for every GPU (TF then
    allocates what the model needs). ``TF_GPU_ALLOCATOR=cuda_malloc_async``
    already shares memory and is left alone. If TF initialised its GPUs before
    the loader was built, nothing can be changed any more: the free memory the
    placement measures afterwards is what TF left, so "auto" falls back to the
    host and "gpu" raises with the numbers rather than failing at the first step.

    Returns:
        One line saying which case applied (for logs and tests).
    """
    if os.environ.get("TF_GPU_ALLOCATOR") == "cuda_malloc_async":
        return "TensorFlow uses cuda_malloc_async and shares the GPU"
    try:
        gpus = tf.config.list_physical_devices("GPU")
    except Exception as error:  # a TensorFlow build without GPU support
        return f"TensorFlow sees no GPU ({error})"
    try:
        for gpu in gpus:
            if not tf.config.experimental.get_memory_growth(gpu):
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        return "TensorFlow had already initialised its GPUs; the budget is the memory it left free"
    return f"memory growth is on for TensorFlow's {len(gpus)} GPU(s)"
