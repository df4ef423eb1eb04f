"""A CPU stand-in for gpuloader/_cuda.py: array_api_strict plays CuPy, its devices play GPUs.

It runs the whole device path on the CPU: placement's memory rule, the chunked
upload, the permutation, gather and transform in a strict array-API namespace
(which refuses anything CuPy lacks), the stream sync before hand-off, injected
out-of-memory failures, and up to three "GPUs" (array_api_strict's devices
CPU_DEVICE, device1 and device2), between which the namespace refuses to mix
arrays: a batch part gathered from another GPU's data fails loudly.

The stand-in promises what gpuloader/_cuda.py promises and nothing more, so the
CPU tests check the loader, not the stand-in: ``row_gather`` returns fresh,
C-contiguous leaves on 256 bytes (``RowGather``) and refuses strided leaves;
``aligned_contiguous`` copies only what is strided or unaligned, and passes
arrays of other namespaces through; a transform's output (a view, say) is not
aligned unless the loader asks for it.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np

from gpuloader import _cuda
from gpuloader.augment import fused
from gpuloader.gather import aligned_empty

#: ``_cuda._GATHER_ALIGNMENT``: where each leaf's part of a gathered block starts.
GATHER_ALIGNMENT = 256
_CREATORS = ("empty", "zeros", "ones", "full", "arange", "asarray", "linspace", "eye")


class FakeOutOfMemoryError(MemoryError):
    """What the stand-in raises where CuPy would raise OutOfMemoryError."""


class FakeGpuRuntime(types.SimpleNamespace):
    """The stand-in runtime; ``state`` records what the loader asked of it."""


class DeviceNamespace:
    """array_api_strict whose creation functions allocate on the current fake GPU, as CuPy's do."""

    def __init__(self, xps, state):
        self._xps = xps
        self._state = state

    def __getattr__(self, name):
        value = getattr(self._xps, name)
        if name not in _CREATORS:
            return value

        def create(*args, **kwargs):
            kwargs.setdefault("device", self._state.devices[self._state.current])
            return value(*args, **kwargs)

        return create


def take_rows(xp, leaves, rows):
    """``leaf[rows]`` of every leaf in namespace ``xp``: one ``take`` (or a slice) per leaf."""
    if isinstance(rows, slice):
        return [leaf[rows, ...] for leaf in leaves]
    return [xp.take(leaf, rows, axis=0) for leaf in leaves]


def make_runtime(gpus: int = 1, free_bytes: int = 1 << 30) -> FakeGpuRuntime:
    """A stand-in with ``gpus`` fake GPUs of ``free_bytes`` free memory each."""
    import array_api_strict as xps

    xps_array = type(xps.asarray(0))

    device_names = ["CPU_DEVICE", "device1", "device2"][:gpus]
    state = types.SimpleNamespace(
        free_bytes=free_bytes, device_free={}, uploads=[], syncs=0, fail_after_uploads=None, freed=0,
        fused_gathers=0, gathers_on=[], realigned=0, augment_kernels=0, usable=True, current=0, freed_on=[],
        peer_copies=0,
        devices=[xps.Device(name) for name in device_names],
    )
    # One GPU: array_api_strict itself (its default device); several: allocate on the current one.
    namespace = xps if gpus == 1 else DeviceNamespace(xps, state)

    def probe(ordinal=None):
        if not state.usable:
            return _cuda.DeviceStatus(False, "no CUDA device is visible")
        ordinal = state.current if ordinal is None else ordinal
        if ordinal >= len(state.devices):
            return _cuda.DeviceStatus(False, f"CUDA device {ordinal} does not exist")
        free = state.device_free.get(ordinal, state.free_bytes)
        return _cuda.DeviceStatus(True, "usable", free, 2 * free, f"FakeGPU{ordinal}")

    @contextlib.contextmanager
    def on_device(ordinal):
        previous, state.current = state.current, ordinal
        try:
            yield
        finally:
            state.current = previous

    def upload_rows(target, start, host_rows, staging):
        if state.fail_after_uploads is not None and len(state.uploads) >= state.fail_after_uploads:
            raise FakeOutOfMemoryError("out of memory allocating 1 bytes")
        target[start : start + host_rows.shape[0], ...] = xps.asarray(host_rows, device=target.device)
        state.uploads.append(host_rows.shape[0])

    def synchronize():
        state.syncs += 1

    def free_cached_memory():
        state.freed += 1
        state.freed_on.append(state.current)

    def row_gather(leaves):
        """``_cuda.RowGather``'s contract, no more: refuses leaves that are not C-contiguous, and
        gathers every leaf's rows into one fresh block, each leaf's part C-contiguous on 256 bytes."""
        for leaf in leaves:
            if not np.from_dlpack(leaf).flags.c_contiguous:
                raise ValueError("RowGather needs C-contiguous leaves; adopt() makes them so.")

        def gather(rows, make=None):
            state.fused_gathers += 1
            state.gathers_on.append(state.devices.index(leaves[0].device))
            # The array-API gather (its take refuses rows from another GPU), then copied into one
            # fresh block as the kernel writes it: each leaf's part starts on 256 bytes.
            parts = [np.from_dlpack(part) for part in take_rows(xps, leaves, rows)]
            offsets, size = [], 0
            for values in parts:
                offsets.append(size)
                size += -(-values.nbytes // GATHER_ALIGNMENT) * GATHER_ALIGNMENT
            block = aligned_empty((max(size, 1),), np.uint8, alignment=GATHER_ALIGNMENT)
            out = []
            for index, (values, offset) in enumerate(zip(parts, offsets)):
                fresh = np.ndarray(values.shape, values.dtype, buffer=block, offset=offset)
                if make and index in make:  # left to the caller's kernel (the real kernel skips its copy)
                    fresh[...] = 0
                else:
                    np.copyto(fresh, values)
                out.append(xps.asarray(fresh, device=leaves[0].device, copy=False))
            for index, write in (make or {}).items():
                write(out[index])
            return out

        gather.accepts_make = True
        return gather

    def gather_augment(table, leaf, followers=()):
        """``_cuda.gather_augment``'s contract: a kernel writing the augmented ``leaf[rows]`` into a fresh
        array on the leaf's device (and, built with ``followers``, each follower's ``(table, leaf)`` in the
        same call: ``out`` is then a list, one entry a target, and so is the result); here the host kernel
        (None where it is not built: the ops then run one by one through the array API, as on a GPU whose
        kernel does not fit)."""
        if fused.host_kernel() is None:
            return None
        targets = [(table, leaf), *followers]

        def kernel(rows, id_table, seed, epoch, out=None, stream=0):
            state.augment_kernels += 1
            outs = list(out) if followers else [out]
            assert len(outs) == len(targets), "one out (or None) a target"
            first = np.from_dlpack(leaf)
            rows = np.arange(*rows.indices(first.shape[0])) if isinstance(rows, slice) else np.from_dlpack(rows)
            sample_ids = np.from_dlpack(id_table)[rows]
            written = []
            for (target_table, target_leaf), given in zip(targets, outs):
                source = np.from_dlpack(target_leaf)
                dtype = source.dtype if target_table.output_dtype is None else target_table.output_dtype
                target = aligned_empty((rows.shape[0], *source.shape[1:]), dtype, alignment=GATHER_ALIGNMENT)
                if given is not None:  # its place in the batch's block, written in place as the real kernel does
                    target = np.from_dlpack(given)
                    target.flags.writeable or target.setflags(write=True)
                written.append(target)
            follower_args = [(t, np.from_dlpack(f), out) for (t, f), out in zip(followers, written[1:])]
            fused.gather_augment_host(table, first, rows, sample_ids, seed, epoch, written[0], stream=stream,
                                      followers=follower_args)
            results = [given if given is not None else xps.asarray(target, device=leaf.device, copy=False)
                       for given, target in zip(outs, written)]
            return results if followers else results[0]

        return kernel

    def aligned_contiguous(array, alignment=64):
        """``_cuda.aligned_contiguous``: the array itself when C-contiguous and aligned, else a fresh
        copy (CuPy's pool aligns to 256 bytes); arrays of another namespace pass through untouched."""
        if not isinstance(array, xps_array):
            return array
        values = np.from_dlpack(array)
        if values.flags.c_contiguous and values.ctypes.data % alignment == 0:
            return array
        state.realigned += 1
        fresh = aligned_empty(values.shape, values.dtype, alignment=GATHER_ALIGNMENT)
        np.copyto(fresh, values)
        return xps.asarray(fresh, device=array.device, copy=False)

    def copy_to_device(array, ordinal):
        state.peer_copies += 1
        return array.to_device(state.devices[ordinal])

    return FakeGpuRuntime(
        probe=probe,
        namespace=lambda: namespace,
        on_device=on_device,
        upload_rows=upload_rows,
        pinned_staging=lambda nbytes: np.empty(nbytes, np.uint8),
        synchronize=synchronize,
        free_cached_memory=free_cached_memory,
        out_of_memory_errors=lambda: (FakeOutOfMemoryError,),
        lives_on_cuda=lambda array: False,
        aligned_contiguous=aligned_contiguous,
        adopt=lambda array: array,
        row_gather=row_gather,
        gather_augment=gather_augment,
        copy_to_device=copy_to_device,
        state=state,
    )
