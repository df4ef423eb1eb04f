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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from gpuloader import _cuda

DEVICES = ("auto", "gpu", "host", "disk")
DEFAULT_HOST_MEMORY_SHARE = 0.5
ENV_DEVICE = "GPULOADER_DEVICE"
DEFAULT_GPU_MEMORY_FRACTION = 0.5


class GPUUnavailableError(RuntimeError):
    """``device="gpu"`` was asked for and cannot be honoured; the message says why."""


@dataclass(frozen=True)
class Plan:
    """Where the data lives and why, in numbers.

    Attributes:
        placement: "gpu" (copied to the device), "host" (in RAM) or "disk" (on-disk
            inputs read batch by batch).
        reason: one readable line: what was chosen and the rule that chose it.
        bytes_needed: data + batch buffers + permutation scratch, in bytes (per GPU
            when there are several).
        bytes_free: free device memory seen (the least of several GPUs), or None
            when no device was asked.
        layout: on several GPUs (a ``MirroredStrategy``'s replicas), "replicated"
            (a copy on each) or "sharded" (rows split across them); "" on one device.
        gpus: the CUDA devices holding the data under a multi-GPU layout.
    """

    placement: str
    reason: str
    bytes_needed: int
    bytes_free: int | None = None
    layout: str = ""
    gpus: tuple[int, ...] = ()

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
            "Use 'auto' to let gpuloader choose, 'gpu' to require the GPU, 'host' for RAM, "
            "'disk' to read batches from memory-mapped files."
        )
    return device


def check_disk_request(requested: str, given: str | None, on_disk: Sequence[bool], names: Sequence[str]) -> None:
    """Refuse the disk tier for inputs none of which is on disk: there would be no file to read batches from.

    ``given`` is the ``device`` argument (None when ``$GPULOADER_DEVICE`` chose),
    ``on_disk`` says for each input leaf whether it is read from files.

    Raises:
        ValueError: ``requested`` is "disk" and no input is on disk; the message names the inputs and the fix.
    """
    if requested != "disk" or any(on_disk):
        return
    asked = "device='disk'" if given is not None else f"${ENV_DEVICE}=disk (no device argument was given)"
    listed = ", ".join(names[:4]) + (f", ... ({len(names)} inputs)" if len(names) > 4 else "")
    raise ValueError(
        f"{asked} reads every batch from files, but no input is on disk: {listed} "
        f"{'is an array' if len(names) == 1 else 'are arrays'} in memory, so there is no file to read. The disk "
        "tier is for .npy paths, memory maps and shard lists too large for RAM. Pass device='host' (or 'auto') "
        "for arrays in memory, or save the data with np.save and pass the path."
    )


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


def available_host_memory() -> int:
    """Bytes of RAM available now (``MemAvailable``), or total RAM where that is unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_memory_budget(limit: int | None) -> int:
    """The RAM the loader may fill with on-disk data: ``limit``, else half of what is available now.

    ``limit`` was checked with the other arguments (:func:`gpuloader.inputs.check_host_memory_limit`).
    """
    return int(DEFAULT_HOST_MEMORY_SHARE * available_host_memory()) if limit is None else limit


def plan(
    device: str, bytes_needed: int, gpu_memory_fraction: float, *, disk_bytes: int = 0,
    host_memory_limit: int | None = None,
) -> Plan:
    """Choose the GPU, host RAM or disk for ``bytes_needed`` under the rule of ``device``.

    The tiers, tried in order under "auto": the GPU if the data fits in its
    budget; host RAM if the ``disk_bytes`` that would have to be read into RAM
    fit within ``host_memory_limit`` (arrays already in RAM always stay there);
    else the disk, read batch by batch.

    Raises:
        GPUUnavailableError: ``device="gpu"`` and CuPy, a CUDA device, or the
            memory is missing; the message carries the numbers.
        ValueError: ``device="host"`` for on-disk data over ``host_memory_limit``.
    """
    limit = host_memory_budget(host_memory_limit) if disk_bytes else 0
    if device == "host":
        if disk_bytes > limit:
            raise ValueError(
                f"device='host' would read {format_bytes(disk_bytes)} of on-disk arrays into RAM, over "
                f"host_memory_limit={format_bytes(limit)}. Pass device='disk' (or 'auto') to read batches "
                "from the files, or raise host_memory_limit."
            )
        return Plan("host", "host: device='host' was asked for", bytes_needed)
    if device == "disk":
        return Plan("disk", "disk: device='disk' was asked for; batches are read from the files", bytes_needed)
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
        return _host_or_disk(f"{status.reason}", bytes_needed, disk_bytes, limit, None, host_memory_limit)
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
    return _host_or_disk(
        f"the data does not fit on the GPU ({numbers}){tensorflow_note}", bytes_needed, disk_bytes, limit,
        status.free_bytes, host_memory_limit,
    )


def upload_ran_out_of_memory(device: str, error: BaseException, where: str, numbers: str) -> str:
    """What an out-of-memory error during an upload means under ``device``.

    Under "gpu" it raises :class:`GPUUnavailableError` with ``numbers``; under
    "auto" it warns and returns the reason to fall back with (the caller has
    already freed what the upload allocated).
    """
    if device == "gpu":
        raise GPUUnavailableError(
            f"device='gpu' was asked for, but the upload to {where} ran out of GPU memory ({error}); {numbers}. "
            "Free GPU memory (other processes, TensorFlow's own allocations) or use device='auto' to fall back."
        ) from error
    reason = f"the upload to {where} ran out of memory ({error}); fell back after: {numbers}"
    warnings.warn(f"gpuloader: {reason}", RuntimeWarning, stacklevel=4)
    return reason


def fallback_plan(
    why_not_gpu: str, bytes_needed: int, disk_bytes: int, host_memory_limit: int | None,
    bytes_free: int | None = None,
) -> Plan:
    """Host or disk, by the RAM rule, after the GPU was ruled out for ``why_not_gpu``."""
    limit = host_memory_budget(host_memory_limit) if disk_bytes else 0
    return _host_or_disk(why_not_gpu, bytes_needed, disk_bytes, limit, bytes_free, host_memory_limit)


def _host_or_disk(
    why_not_gpu: str, bytes_needed: int, disk_bytes: int, limit: int, bytes_free: int | None = None,
    given: int | None = None,
) -> Plan:
    """Host if the on-disk bytes fit ``limit``, else disk; the reason names what decided: the RAM available
    (``given`` None: half of it) or the ``host_memory_limit`` the caller gave."""
    if disk_bytes == 0:
        return Plan("host", f"host: {why_not_gpu}", bytes_needed, bytes_free)
    if given is None:
        ram = f"{format_bytes(disk_bytes)} on disk vs host_memory_limit {format_bytes(limit)}, half the available RAM"
        fits, over = "fit in RAM", "do not fit in RAM"
    else:
        ram = f"{format_bytes(disk_bytes)} on disk"
        fits = f"fit within host_memory_limit={given} ({format_bytes(given)})"
        over = (f"are kept out of RAM by host_memory_limit={given}" if given == 0 else
                f"are over host_memory_limit={given} ({format_bytes(given)})")
    if disk_bytes <= limit:
        return Plan("host", f"host: {why_not_gpu}; the on-disk arrays {fits} ({ram})", bytes_needed, bytes_free)
    return Plan("disk", f"disk: {why_not_gpu}; the on-disk arrays {over} ({ram})", bytes_needed, bytes_free)


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
