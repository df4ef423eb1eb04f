"""The preloaded arrays, held once where the placement put them.

A :class:`Store` is a flat list of leaves (the arrays of x, y and sample_weight)
that share their first dimension, in one array namespace ``xp``. It is built
from :class:`~gpuloader.sources.Source`\\ s (and CUDA arrays, adopted as they
are) through the source interface only. On the host the leaves are read-only
views of the caller's arrays (made C-contiguous once, at construction; no copy
when they already are), arrays read from on-disk sources, or, on the disk tier,
the on-disk sources themselves, read batch by batch. On the GPU each leaf is
allocated once and filled in bounded chunks, so a large or memory-mapped array
never needs a second full copy in RAM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader import placement as placement_lib
from gpuloader.config import LoaderConfig
from gpuloader.gather import HostGather
from gpuloader.sources import Source, is_disk_leaf, open_source

DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
_PROGRESS_AFTER_SECONDS = 1.0


@dataclass
class Store:
    """Arrays of one namespace that share the first dimension ``n``."""

    xp: Any
    leaves: list[Any]
    names: list[str]
    #: The gather of all leaves at once: ``gather.HostGather`` on the host, ``_cuda.RowGather`` on the GPU.
    fused_gather: Callable[[Any], list[Any]]

    @property
    def n(self) -> int:
        return int(self.leaves[0].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(leaf_nbytes(leaf) for leaf in self.leaves)

    def take(self, rows: slice | Any, make: dict[int, Callable[[Any], Any]] | None = None) -> list[Any]:
        """Arrays that nothing else holds, with ``leaf[rows]`` of every leaf (see :mod:`gpuloader.gather`).

        ``make``: ``{leaf index: write(out)}``, leaves that a kernel of the caller
        writes into their place in the batch instead of a copy (the host's gather
        in RAM and the GPU's take it; the disk tier's does not).

        Cost: the batch's bytes copied once; on the GPU one kernel launch for all leaves.
        """
        if not make:
            return self.fused_gather(rows)
        if not getattr(self.fused_gather, "accepts_make", False):
            raise ValueError("Store.take(make=...) needs the gather of a store in RAM or on a GPU, not on disk.")
        return self.fused_gather(rows, make)

    @property
    def in_ram_on_host(self) -> bool:
        """Every leaf is a NumPy array in RAM (no GPU, no file read per batch)."""
        return isinstance(self.fused_gather, HostGather)


def leaf_nbytes(leaf: Any) -> int:
    """Size of an array in bytes, for any namespace."""
    return int(np.prod(leaf.shape, dtype=np.int64)) * _itemsize(leaf.dtype)


def row_nbytes(leaf: Any) -> int:
    """Bytes of one sample (one row on the first axis) of an array."""
    return int(np.prod(leaf.shape[1:], dtype=np.int64)) * _itemsize(leaf.dtype)


def _itemsize(dtype: Any) -> int:
    """Item size of a NumPy/CuPy dtype or of an array-API dtype object."""
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # e.g. array_api_strict.float32
        return np.dtype(str(dtype).rsplit(".", 1)[-1]).itemsize


def on_host(
    leaves: Sequence[Source], names: Sequence[str], *, load_disk: bool = True, verbose: bool = False
) -> Store:
    """Keep sources in memory as read-only views; the caller's arrays are not copied.

    On-disk sources (memory maps, shards) are read into RAM in chunks when
    ``load_disk``, else kept as they are, to be read batch by batch (their
    files checked before every batch, see :class:`DiskGather`). Arrays in a
    non-native byte order (big-endian on x86 and ARM) are converted once here,
    since DLPack hands over native order only; on-disk ones per batch.

    Cost: none for C-contiguous, native-order in-RAM inputs (the usual case);
    one copy otherwise; one read of the files for loaded on-disk leaves.
    """
    views = []
    for leaf in leaves:
        if leaf.on_disk:
            views.append(read_into_ram(leaf, verbose=verbose) if load_disk else leaf)
            continue
        view = np.ascontiguousarray(leaf.read_range(0, len(leaf)), dtype=native_dtype(leaf.dtype)).view()
        view.flags.writeable = False
        views.append(view)
    if any(is_disk_leaf(leaf) for leaf in views):
        return Store(np, views, list(names), DiskGather(views))
    return Store(np, views, list(names), HostGather(views))


def native_dtype(dtype: Any) -> np.dtype:
    """``dtype`` in the machine's byte order (the same dtype when it already is)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.isnative else dtype.newbyteorder("=")


class DiskGather:
    """The host gather of a store with on-disk leaves: files checked first, byte order fixed after.

    Before a batch is read, every file its rows come from is compared with
    the file that was opened (``Source.check_unchanged``), so a
    file truncated or rewritten under the loader raises a
    :class:`~gpuloader.sources.SourceChangedError` naming it instead of
    crashing the process or serving the wrong bytes. On-disk arrays in a
    non-native byte order are swapped in the batch's own buffer after the read.

    Cost: one ``os.stat`` per file touched per batch; for non-native files, one
    pass over the batch's bytes of them.
    """

    def __init__(self, leaves: list[Any]) -> None:
        self._gather = HostGather(leaves)
        self._disk = [leaf for leaf in leaves if is_disk_leaf(leaf)]
        self._swap = [not np.dtype(leaf.dtype).isnative for leaf in leaves]

    def __call__(self, rows: slice | np.ndarray) -> list[np.ndarray]:
        for leaf in self._disk:
            leaf.check_unchanged(rows)
        outs = self._gather(rows)
        if any(self._swap):
            outs = [_swap_in_place(out) if swap else out for out, swap in zip(outs, self._swap)]
        return outs


def _swap_in_place(out: np.ndarray) -> np.ndarray:
    """The same buffer with its bytes in native order, typed natively (alignment unchanged)."""
    return out.byteswap(inplace=True).view(native_dtype(out.dtype))


def read_into_ram(leaf: Source, chunk_bytes: int | None = None, verbose: bool = False) -> np.ndarray:
    """Copy an on-disk source into a new RAM array in native byte order, ``chunk_bytes`` at a time.

    With ``verbose``, a progress bar (the uploads' own) appears when the read takes over a second.
    """
    out = np.empty(tuple(leaf.shape), native_dtype(leaf.dtype))
    rows_per_chunk = _rows_per_chunk(leaf, chunk_bytes or DEFAULT_CHUNK_BYTES)
    progress = _Progress(out.nbytes, verbose, "gpuloader read into RAM")
    try:
        for start in range(0, out.shape[0], rows_per_chunk):
            leaf.check_unchanged(slice(start, start + rows_per_chunk))
            out[start : start + rows_per_chunk] = leaf.read_range(start, min(start + rows_per_chunk, len(leaf)))
            progress.advance(out[start : start + rows_per_chunk].nbytes)
    finally:
        progress.close()
    out.flags.writeable = False
    return out


def _rows_per_chunk(leaf: Any, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(row_nbytes(leaf), 1))


def upload(
    leaves: Sequence[Any],
    names: Sequence[str],
    xp: Any,
    runtime: Any,
    *,
    chunk_bytes: int | None = None,
    verbose: bool = False,
) -> Store:
    """Copy host sources to the device once, at most ``chunk_bytes`` at a time.

    Leaves that already live on the device (``runtime.lives_on_cuda``) are
    adopted without a trip through the host. If an allocation or copy fails,
    everything allocated so far is released before the error propagates, so a
    caller can fall back with nothing half-built.

    Cost: one host-to-device copy of the data; ``chunk_bytes`` (default
    :data:`DEFAULT_CHUNK_BYTES`, 256 MB) of staging memory.
    """
    chunk_bytes = chunk_bytes or DEFAULT_CHUNK_BYTES
    device_leaves: list[Any] = []
    total = sum(leaf_nbytes(leaf) for leaf in leaves if not runtime.lives_on_cuda(leaf))
    progress = _Progress(total, verbose)
    try:
        staging = runtime.pinned_staging(min(chunk_bytes, max(total, 1))) if total else None
        for leaf in leaves:
            if runtime.lives_on_cuda(leaf):
                device_leaves.append(runtime.adopt(leaf))
                continue
            target = xp.empty(tuple(leaf.shape), dtype=getattr(xp, leaf.dtype.name))
            rows_per_chunk = _rows_per_chunk(leaf, chunk_bytes)
            native = native_dtype(leaf.dtype)
            for start in range(0, leaf.shape[0], rows_per_chunk):
                leaf.check_unchanged(slice(start, start + rows_per_chunk))
                # An array's or a memory map's range is a view: rows go from memory or the page cache to
                # staging directly (converted to native byte order on the way, where the file's is not).
                stop = min(start + rows_per_chunk, leaf.shape[0])
                rows = np.ascontiguousarray(leaf.read_range(start, stop), dtype=native)
                runtime.upload_rows(target, start, rows, staging)
                progress.advance(rows.nbytes)
            device_leaves.append(target)
        runtime.synchronize()
        fused_gather = runtime.row_gather(device_leaves)
    except BaseException:
        device_leaves.clear()
        target = staging = None
        runtime.free_cached_memory()
        raise
    finally:
        progress.close()
    return Store(xp, device_leaves, list(names), fused_gather)


class _Progress:
    """A tqdm bar that appears only when the copy takes over a second (none without tqdm)."""

    def __init__(self, total: int, verbose: bool, description: str = "gpuloader upload") -> None:
        self._bar = None
        if not verbose or total == 0:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=total, unit="B", unit_scale=True, desc=description,
            delay=_PROGRESS_AFTER_SECONDS, leave=False,
        )

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def bytes_needed(data_bytes: int, batch_bytes: int, n: int) -> int:
    """Device bytes a loader needs: the data, four batches in flight, 24 bytes per sample of permutation scratch."""
    return data_bytes + 4 * batch_bytes + 24 * n


def place(
    leaves: list[Any], names: list[str], config: LoaderConfig, batch_bytes: int
) -> tuple[placement_lib.Plan, Store]:
    """Decide the placement (``config``'s device, memory fraction and RAM limit) and build the store.

    An out-of-memory upload under "auto" falls back to the host or the disk.
    """
    device, host_memory_limit, verbose = config.device, config.host_memory_limit, config.verbose
    data_bytes = sum(leaf_nbytes(leaf) for leaf in leaves)
    disk_bytes = sum(leaf_nbytes(leaf) for leaf in leaves if is_disk_leaf(leaf))
    n = int(leaves[0].shape[0])
    needed = bytes_needed(data_bytes, batch_bytes, n)
    plan = placement_lib.plan(
        device, needed, config.gpu_memory_fraction, disk_bytes=disk_bytes, host_memory_limit=host_memory_limit
    )
    in_memory = [name for leaf, name in zip(leaves, names) if not is_disk_leaf(leaf)]
    if plan.placement == "disk" and in_memory:
        note = f"{', '.join(in_memory)} {'is' if len(in_memory) == 1 else 'are'} in RAM and gathered from there"
        plan = dataclasses.replace(plan, reason=f"{plan.reason}; {note}")
    runtime = placement_lib.gpu_runtime()
    if plan.placement == "gpu":
        try:
            store = upload(leaves, names, runtime.namespace(), runtime, verbose=verbose)
            return plan, store
        except runtime.out_of_memory_errors() as error:
            reason = placement_lib.upload_ran_out_of_memory(device, error, "the GPU", plan.reason)
            plan = placement_lib.fallback_plan(reason, needed, disk_bytes, host_memory_limit, plan.bytes_free)
    host_leaves = [
        open_source(runtime.adopt(leaf).get(), name) if runtime.lives_on_cuda(leaf) else leaf
        for leaf, name in zip(leaves, names)
    ]
    return plan, on_host(host_leaves, names, load_disk=plan.placement == "host", verbose=verbose)
