"""Every CuPy-only call gpuloader makes, in one place.

The rest of the package speaks the array API through ``xp`` and runs the same
code with NumPy, CuPy or ``array_api_strict``. What the array API does not
cover lives here: finding a CUDA device and its free memory, CuPy's
out-of-memory error, freeing CuPy's memory pool, pinned-memory staging for the
upload, stream synchronisation before TensorFlow reads a batch, adopting
arrays that already live on a GPU, and the fused row-gather kernel. Nothing
here runs at ``import gpuloader``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def probe(ordinal: int | None = None) -> DeviceStatus:
    """Find CUDA device ``ordinal`` (default: the current one) and its free memory. Never raises."""
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
    if ordinal is not None and not 0 <= ordinal < count:
        return DeviceStatus(False, f"CUDA device {ordinal} does not exist ({count} visible)")
    try:
        device = cupy.cuda.Device(ordinal)
        with device:
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


def on_device(ordinal: int) -> Any:
    """A context in which CuPy allocates, launches and synchronises on CUDA device ``ordinal``."""
    return import_cupy().cuda.Device(ordinal)


def copy_to_device(array: Any, ordinal: int) -> Any:
    """A copy of a CuPy array on CUDA device ``ordinal`` (a peer copy between GPUs)."""
    cupy = import_cupy()
    with cupy.cuda.Device(ordinal):
        return cupy.copy(array)


def free_cached_memory() -> None:
    """Give the blocks CuPy's pools cache on the current device back to the driver."""
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
    cupy = import_cupy()
    memory = cupy.cuda.alloc_pinned_memory(nbytes)
    return np.frombuffer(memory, dtype=np.uint8, count=nbytes)


def upload_rows(target: Any, start: int, host_rows: Any, staging: Any) -> None:
    """Copy C-contiguous host rows into ``target[start:start + len(host_rows)]``.

    The rows pass through the pinned ``staging`` buffer, so the copy runs at
    full PCIe speed and no second copy of the whole array is ever made in RAM.
    """
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
    """A C-contiguous CuPy array of a CUDA array from any DLPack producer, without a host trip.

    Cost: none for a contiguous array (a view of the producer's memory); one
    device-to-device copy for a strided one.
    """
    cupy = import_cupy()
    if not isinstance(array, cupy.ndarray):
        array = cupy.from_dlpack(array)
    return cupy.ascontiguousarray(array)


# One thread per unit (16, 8, 4, 2 or 1 bytes) of every row of every leaf; the
# unit is the widest that divides the leaf's row bytes and its base address.
# ``table`` holds, per leaf: source address, byte offset in the batch's block,
# units per row, unit bytes. ``rows`` is null for contiguous rows from first_row.
_GATHER_SOURCE = r"""
extern "C" __global__ void gpuloader_gather_rows(
    const long long* __restrict__ rows, const long long first_row, const unsigned int count,
    const int leaves, const unsigned long long* __restrict__ table, unsigned char* __restrict__ block)
{
    unsigned long long total = 0;
    for (int l = 0; l < leaves; ++l) total += count * table[4 * l + 2];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += stride) {
        unsigned long long u = t;
        int l = 0;
        while (u >= count * table[4 * l + 2]) { u -= count * table[4 * l + 2]; ++l; }
        const unsigned long long units = table[4 * l + 2];
        const unsigned long long r = u / units;
        const long long row = rows ? rows[r] : first_row + (long long)r;
        const unsigned long long from = (unsigned long long)row * units + (u - r * units);
        const void* src = (const void*)table[4 * l];
        void* dst = (void*)(block + table[4 * l + 1]);
        switch (table[4 * l + 3]) {
            case 16: ((uint4*)dst)[u] = ((const uint4*)src)[from]; break;
            case 8: ((unsigned long long*)dst)[u] = ((const unsigned long long*)src)[from]; break;
            case 4: ((unsigned int*)dst)[u] = ((const unsigned int*)src)[from]; break;
            case 2: ((unsigned short*)dst)[u] = ((const unsigned short*)src)[from]; break;
            default: ((unsigned char*)dst)[u] = ((const unsigned char*)src)[from]; break;
        }
    }
}
"""
_GATHER_ALIGNMENT = 256  # each leaf's part of a batch's block starts on 256 bytes
_THREADS = 256
_NULL = np.uint64(0)  # the kernel's rows pointer for contiguous rows
_ZERO = np.int64(0)


class RowGather:
    """Gathers a batch's rows of every leaf with one kernel launch into one fresh block.

    ``cupy.take`` launches one kernel per leaf and indexes element by element;
    this kernel copies rows in 16-byte units where the layout allows, so a
    batch costs one allocation and one launch whatever the number of leaves,
    at close to a device-to-device copy's bandwidth. The block is new for every
    batch (never recycled while a consumer holds a view of it), and each leaf's
    array in it starts on 256 bytes and is C-contiguous.

    Args:
        leaves: C-contiguous CuPy arrays on one device sharing their first dimension.
    """

    def __init__(self, leaves: list[Any]) -> None:
        cupy = import_cupy()
        self._cupy = cupy
        self._leaves = leaves
        self._device = leaves[0].device
        self._row_shapes = [tuple(leaf.shape[1:]) for leaf in leaves]
        self._dtypes = [leaf.dtype for leaf in leaves]
        self._row_bytes = [int(np.prod(shape, dtype=np.int64)) * leaf.dtype.itemsize
                           for shape, leaf in zip(self._row_shapes, leaves)]
        table = []
        for leaf, row_bytes in zip(leaves, self._row_bytes):
            if not leaf.flags.c_contiguous:
                raise ValueError("RowGather needs C-contiguous leaves; adopt() makes them so.")
            unit = 16
            while unit > 1 and (row_bytes % unit or leaf.data.ptr % unit):
                unit //= 2
            table.append((leaf.data.ptr, 0, row_bytes // unit, unit))
        self._table_rows = table
        self._plans: dict[tuple[int, tuple[int, ...]], tuple[Any, list[int], int, int, Any, Any]] = {}
        with self._device:
            self._kernel = cupy.RawKernel(_GATHER_SOURCE, "gpuloader_gather_rows")
            attributes = self._device.attributes
        self._max_blocks = attributes["MultiProcessorCount"] * 32
        self._device_id = self._device.id
        self._int64 = np.dtype(np.int64)

    def _plan(self, count: int, skipped: tuple[int, ...] = ()) -> tuple[Any, list[int], int, int, Any, Any]:
        """The device table, leaf offsets, block bytes, grid size, kernel count and copied leaves for
        ``count`` rows, the ``skipped`` leaves left out of the copy but given their place (cached)."""
        plan = self._plans.get((count, skipped))
        if plan is None:
            offsets, table, block_bytes, units = [], [], 0, 0
            for index, ((address, _, row_units, unit), row_bytes) in enumerate(zip(self._table_rows, self._row_bytes)):
                offsets.append(block_bytes)
                if index not in skipped:
                    table.extend((address, block_bytes, row_units, unit))
                    units += row_units * count
                block_bytes += -(-(row_bytes * count) // _GATHER_ALIGNMENT) * _GATHER_ALIGNMENT
            with self._device:
                device_table = self._cupy.asarray(np.asarray(table or [0, 0, 0, 1], dtype=np.uint64))
            grid = max(1, min(-(-units // _THREADS), self._max_blocks))
            copied = np.int32(len(table) // 4)
            plan = (device_table, offsets, max(block_bytes, 1), grid, np.uint32(count), copied)
            self._plans[(count, skipped)] = plan
        return plan

    accepts_make = True  # Store.take(rows, make) may hand it leaves a kernel of the caller writes

    def __call__(self, rows: Any, make: dict[int, Any] | None = None) -> list[Any]:
        """Fresh arrays holding ``leaf[rows]`` for every leaf; ``rows``: a slice or an int64 CuPy array.

        ``make``: ``{leaf index: write(out)}``, leaves left out of the copy whose
        place in the block ``write`` fills (the augmentation kernel), queued after it.

        Cost: one pool allocation, one kernel launch (queued on the current
        stream, not waited for), and the batch's bytes read and written once.
        """
        cupy = self._cupy
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self._leaves[0].shape[0])
            count, first, index = max(stop - start, 0), np.int64(start), _NULL
        else:
            if rows.dtype != self._int64 or not rows.flags.c_contiguous:
                rows = cupy.ascontiguousarray(rows, dtype=self._int64)
            count, first, index = rows.shape[0], _ZERO, rows
        make = make or {}
        device_table, offsets, block_bytes, grid, kernel_count, copied = self._plan(count, tuple(sorted(make)))
        switch = cupy.cuda.runtime.getDevice() != self._device_id
        if switch:  # several GPUs: allocate and launch on the leaves' device
            previous = cupy.cuda.runtime.getDevice()
            cupy.cuda.runtime.setDevice(self._device_id)
        try:
            memory = cupy.cuda.alloc(block_bytes)
            if count and copied:
                self._kernel(
                    (grid,), (_THREADS,),
                    (index, first, kernel_count, copied, device_table, np.uint64(memory.ptr)),
                )
            outs = [
                cupy.ndarray((count, *shape), dtype, memptr=memory + offset)
                for shape, dtype, offset in zip(self._row_shapes, self._dtypes, offsets)
            ]
            for leaf_index, write in make.items():
                write(outs[leaf_index])
        finally:
            if switch:
                cupy.cuda.runtime.setDevice(previous)
        return outs


def row_gather(leaves: list[Any]) -> RowGather:
    """The fused gather of a device store's leaves (see :class:`RowGather`)."""
    return RowGather(leaves)


def namespace() -> Any:
    """The array namespace of the GPU path: CuPy."""
    return import_cupy()


# The built-in augmentation ops fused with the read of the stored images (gpuloader/augment/fused.py):
# one block per sample, grid-stride over the batch. The block's threads compute the sample's words,
# trace its rows and columns into shared memory, then write the bytes of every target (the images and the
# inputs that follow their draws, augment.Same) from that one trace; the functions are those of
# gpuloader/augment/_pixels.h, which the host kernel runs too (tests run this text on the host).
_AUGMENT_PREFIX = "#define GL_FUNCTION __device__ __forceinline__\n#define GL_TOP_BIT(m) (31 - __clz((int)(m)))\n"
#: One row of the kernel's table of targets (uint64 each; the addresses are device pointers).
AUGMENT_TARGET_FIELDS = (
    "source", "out", "fills", "norm", "or_slots", "and_slots", "planes", "pixel_bytes", "in_kind", "out_kind",
)
_AUGMENT_KERNEL = f"#define GL_TARGET_FIELDS {len(AUGMENT_TARGET_FIELDS)}\n" + r"""
extern "C" __global__ void gpuloader_gather_augment(
    const long long* rows, const long long first_row, const long long* id_table, const unsigned long long* keys,
    const long long n_words, const long long* ops, const long long n_ops, const long long n, const long long height,
    const long long width, const unsigned long long* targets, const long long n_targets)
{
    extern __shared__ unsigned long long shared[];
    unsigned long long* words = shared;
    int* src_rows = (int*)(words + n_words);
    int* src_cols = src_rows + height;
    unsigned int* row_hits = (unsigned int*)(src_cols + width);
    unsigned int* col_hits = row_hits + height;
    for (long long b = blockIdx.x; b < n; b += gridDim.x) {
        const long long row = rows ? rows[b] : first_row + b;
        gl_sample_words(threadIdx.x, blockDim.x, (unsigned long long)id_table[row], keys, n_words, words);
        __syncthreads();
        gl_sample_traces(threadIdx.x, blockDim.x, height, width, ops, n_ops, words, src_rows, row_hits,
                         src_cols, col_hits);
        __syncthreads();
        for (long long t = 0; t < n_targets; ++t) {  /* every target's pixels from the one trace */
            const unsigned long long* target = targets + GL_TARGET_FIELDS * t;
            const unsigned char* source = (const unsigned char*)target[0];
            unsigned char* out = (unsigned char*)target[1];
            const unsigned char* fills = (const unsigned char*)target[2];
            const float* norm = (const float*)target[3];
            const unsigned int or_slots = (unsigned int)target[4], and_slots = (unsigned int)target[5];
            const long long planes = (long long)target[6], pixel_bytes = (long long)target[7];
            const int in_kind = (int)target[8], out_kind = (int)target[9];
            const long long image_bytes = planes * height * width * pixel_bytes;
            const long long pixel_values = out_kind ? pixel_bytes / gl_value_size(in_kind) : pixel_bytes;
            const long long out_image_bytes = out_kind ? planes * height * width * pixel_values *
                                                         gl_value_size(out_kind) : image_bytes;
            if (out_kind)  /* a final Normalize: each value read, normalized and written as out_kind */
                gl_sample_values(threadIdx.x, blockDim.x, height, width, planes, pixel_values, in_kind, out_kind,
                                 source + row * image_bytes, fills, norm, or_slots, and_slots, src_rows, row_hits,
                                 src_cols, col_hits, out + b * out_image_bytes);
            else
                gl_sample_bytes(threadIdx.x, blockDim.x, height, width, planes, pixel_bytes,
                                source + row * image_bytes, fills, or_slots, and_slots, src_rows, row_hits,
                                src_cols, col_hits, out + b * out_image_bytes);
        }
        __syncthreads();
    }
}
"""
_AUGMENT_SHARED_LIMIT = 48 * 1024  # bytes of shared memory a block may take without opting in


def _augment_image_size(table: Any, leaf: Any) -> tuple[int, int]:
    """``(height, width)`` of a stored image array in the table's data format."""
    if table.channels_first and leaf.ndim == 4:
        return int(leaf.shape[2]), int(leaf.shape[3])
    return int(leaf.shape[1]), int(leaf.shape[2])


def _augment_shared_bytes(table: Any, leaf: Any) -> int:
    """A block's shared memory: the sample's words, then a source row and slots per row and per column."""
    return 8 * sum(table.draws) + 8 * sum(_augment_image_size(table, leaf))


def augment_kernel_source() -> str:
    """The CUDA source of :class:`GatherAugment`: the qualifiers, ``_pixels.h`` and the kernel."""
    from importlib import resources

    header = resources.files("gpuloader.augment").joinpath("_pixels.h").read_text()
    return _AUGMENT_PREFIX + header + _AUGMENT_KERNEL


class GatherAugment:
    """The built-in augmentation ops of one stored image array, fused with the read of its rows.

    One launch per batch writes the augmented images of ``leaf[rows]`` into a
    fresh array: the same bytes as the host (``gpuloader.augment.fused``); with
    ``followers``, the same launch also writes each follower's ``rows`` with the
    same draws (``augment.Same``: a mask), from the one trace per sample.
    Cost: per sample ``sum(draws)`` hashes and ``H + W`` traces, then the bytes of
    every target read and written once; a batch's keys are uploaded once per
    (seed, epoch), and its targets' table (``10 x 8`` bytes a target) once per batch.

    Args:
        table: the ops' :class:`gpuloader.augment.fused.FusedOps` for the leaf's dtype and channels.
        leaf: the stored C-contiguous CuPy images, ``(N, H, W, C)``, ``(N, C, H, W)`` or ``(N, H, W)``.
        followers: ``(table, leaf)`` of each input following the leaf's draws: its table must trace as
            ``table`` does (``fused.shares_draws``), its leaf have the leaf's rows, height and width.
    """

    def __init__(self, table: Any, leaf: Any, followers: Any = ()) -> None:
        from gpuloader.augment.fused import shares_draws

        cupy = import_cupy()
        self._cupy, self._table, self._leaf = cupy, table, leaf
        self._height, self._width = _augment_image_size(table, leaf)
        self._followers = list(followers)
        targets = [(table, leaf), *self._followers]
        for target_table, target_leaf in targets:
            if target_table.output_dtype is not None and target_table.output_dtype.kind == "V":
                raise TypeError(
                    "augment: Normalize(dtype='bfloat16') on the GPU: CuPy has no bfloat16 arrays to write it into. "
                    "Fix: Normalize(..., dtype='float16') or 'float32' for a loader on the GPU."
                )
            if not shares_draws(table, target_table) or _augment_image_size(target_table, target_leaf) != (
                self._height, self._width
            ) or target_leaf.shape[0] != leaf.shape[0]:
                raise ValueError("GatherAugment: a follower must trace as the leader (fused.shares_draws) and have "
                                 "its rows, height and width.")
        self._dtypes = [target_leaf.dtype if target_table.output_dtype is None else target_table.output_dtype
                        for target_table, target_leaf in targets]
        self._dtype = self.output_dtype = self._dtypes[0]
        self._n_words = np.int64(sum(table.draws))
        self.shared_bytes = _augment_shared_bytes(table, leaf)
        with leaf.device:
            self._kernel = cupy.RawKernel(augment_kernel_source(), "gpuloader_gather_augment")
            self._ops = cupy.asarray(table.table)
            self._buffers = []  # each target's fills and norm on the device, kept alive for the table's addresses
            rows = []
            for target_table, target_leaf in targets:
                fills = cupy.asarray(np.frombuffer(target_table.fills or b"\0" * 8, dtype=np.uint8))
                norm = cupy.asarray(np.frombuffer(target_table.norm or b"\0" * 8, dtype=np.float32))
                self._buffers += [fills, norm]
                rows.append([target_leaf.data.ptr, 0, fills.data.ptr, norm.data.ptr, target_table.or_slots,
                             target_table.and_slots, target_table.planes, target_table.pixel_bytes,
                             target_table.in_kind, target_table.out_kind])
            self._targets = np.asarray(rows, dtype=np.uint64).reshape(len(targets), len(AUGMENT_TARGET_FIELDS))
            self._max_blocks = leaf.device.attributes["MultiProcessorCount"] * 32
        self._keys: tuple[tuple[int, int, int], Any] | None = None

    def __call__(self, rows: Any, id_table: Any, seed: int, epoch: int, out: Any = None, stream: int = 0) -> Any:
        """The augmented images of ``leaf[rows]``, in ``out`` (its place in the batch's block) or a new array.

        Args:
            rows: a slice, or an int64 CuPy array of the leaf's rows.
            id_table: int64 CuPy array, the dataset index of every row of the leaf (the draws' key).
            seed, epoch: the draws' keys.
            out: a C-contiguous CuPy array for the ``len(rows)`` images, or None. Built with followers: a list
                with one such entry (or None) per target, the leader's first; the call then returns that list,
                filled.
            stream: the list's stream of random words (``augment.Stream``).
        """
        cupy, leaf = self._cupy, self._leaf
        outs = list(out) if self._followers else [out]
        if len(outs) != len(self._dtypes):
            raise ValueError(
                f"GatherAugment: out must be a list of {len(self._dtypes)} arrays (or None), one a target."
            )
        with leaf.device:
            if isinstance(rows, slice):
                start, stop, _ = rows.indices(leaf.shape[0])
                n, first, index = max(stop - start, 0), np.int64(start), _NULL
            else:
                index = rows = cupy.ascontiguousarray(rows, dtype=cupy.int64)
                n, first = int(rows.shape[0]), _ZERO
            if self._keys is None or self._keys[0] != (seed, epoch, stream):
                self._keys = ((seed, epoch, stream), cupy.asarray(self._table.keys(seed, epoch, stream)))
            targets = [(leaf, None), *self._followers]
            for position, ((_, target_leaf), dtype) in enumerate(zip(targets, self._dtypes)):
                shape = (n, *target_leaf.shape[1:])
                given = outs[position]
                if given is None:
                    outs[position] = cupy.empty(shape, dtype=dtype)
                elif given.shape != shape or given.dtype != dtype or not given.flags.c_contiguous:
                    raise ValueError(f"GatherAugment: out must be C-contiguous {shape} {dtype}.")
            if n:
                table = self._targets.copy()
                table[:, 1] = [target_out.data.ptr for target_out in outs]
                self._kernel(
                    (min(n, self._max_blocks),), (_THREADS,),
                    (index, first, id_table, self._keys[1], self._n_words, self._ops, np.int64(len(self._table.table)),
                     np.int64(n), np.int64(self._height), np.int64(self._width), cupy.asarray(table),
                     np.int64(len(outs))),
                    shared_mem=self.shared_bytes,
                )
        return outs if self._followers else outs[0]


def gather_augment(table: Any, leaf: Any, followers: Any = ()) -> GatherAugment | None:
    """The fused augmentation kernel of a stored image array (and of the ``(table, leaf)`` of each input that
    follows its draws, written in the same launch), or None when a block's shared memory would exceed 48 KB
    (images over about 3000 pixels on a side: the ops then run one by one)."""
    if _augment_shared_bytes(table, leaf) > _AUGMENT_SHARED_LIMIT:
        return None
    return GatherAugment(table, leaf, followers)
