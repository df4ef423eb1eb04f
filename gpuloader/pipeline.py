"""One batch, from its position in an order to the consumer's tensors.

The path of a batch: its rows (a slice of the input order, or a slice of the
epoch's permutation), the fused gather of every leaf into one fresh block
(:mod:`gpuloader.gather`, ``_cuda.RowGather`` on the GPU), the augmentation ops
(:mod:`gpuloader.augment`, keyed by seed, epoch and each row's index in the whole
dataset) and then the user's ``transform``, both where the data lives, the re-alignment of a transform's output on
the GPU, the stream sync TensorFlow needs, and the DLPack hand-off
(:mod:`gpuloader.handoff`). Under a per-GPU layout (:mod:`gpuloader.replicas`)
each replica's part is prepared on its own GPU from its own store.

No Keras here and no epoch bookkeeping: the caller says which epoch and whether
the pass is shuffled; the pipeline asks ``order_of(epoch)`` for the permutation.

Cost per batch: one copy of the batch's bytes (the gather), whatever the
transform costs, and no copy at the hand-off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from gpuloader import augment as augment_lib
from gpuloader import placement as placement_lib
from gpuloader import replicas as replicas_lib
from gpuloader import sharding
from gpuloader import store as store_lib
from gpuloader._structure import Structure
from gpuloader.augment import apply_augment
from gpuloader.augment import fused as fused_lib
from gpuloader.augment.ops import _numpy_dtype
from gpuloader.handoff import check_transform_output, hand_off, keras_backend

Prepared = tuple[Structure, list[Any]]


class BatchPipeline:
    """Prepares batch ``position`` of an epoch and hands it over.

    Args:
        store: the single-device store (the first replica's under a per-GPU layout).
        replicas: the per-GPU layout, or None.
        structure: how the flat leaves nest into ``(x, y, sample_weight)``.
        transform: ``transform(batch, xp) -> batch`` or None.
        batch_size: rows per batch.
        order_of: ``order_of(epoch)`` returns the epoch's permutation.
        seed_of: ``seed_of()`` returns the loader's seed (its current one, after ``set_state``).
        on_gpu: the store is on a GPU (re-align a transform's output there, sync for TensorFlow).
        shard_index: this worker's shard (its orders' seed is derived from it).
        augment: ``[(leaf index, ops, stream)]``, applied after the gather, before ``transform``.
        global_rows: the rows of the whole dataset this worker holds (None: all of them), for the
            augmentation's sample ids.
    """

    def __init__(
        self,
        store: store_lib.Store,
        replicas: replicas_lib.ReplicaSet | None,
        structure: Structure,
        transform: Callable[..., Any] | None,
        batch_size: int,
        order_of: Callable[[int], Any],
        seed_of: Callable[[], int],
        on_gpu: bool,
        shard_index: int = 0,
        augment: list[tuple[int, list[Any], int]] | None = None,
        global_rows: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.replicas = replicas
        self._structure = structure
        self._transform = transform
        self._batch_size = batch_size
        self._order_of = order_of
        self._seed_of = seed_of
        self.on_gpu = on_gpu
        self._shard_index = shard_index
        self._augment = augment or []
        self._fused = self._fusable(self._augment)  # host: {leaf index: (table, stream)} the host kernel runs
        self._device_kernels: dict[tuple[int, int], Any] = {}  # GPU: (replica, leaf index) -> kernel or None
        self._global_rows = global_rows
        self._sample_ids: dict[int, Any] = {}  # store index -> its rows' dataset indices, in its namespace
        self._backend: str | None = None

    @property
    def n(self) -> int:
        return self.store.n

    def backend(self) -> str:
        """The Keras backend that consumes the batches (read once)."""
        if self._backend is None:
            self._backend = keras_backend()
        return self._backend

    # ------------------------------------------------------------ rows
    def rows(self, position: int, epoch: int, shuffled: bool) -> slice | Any:
        """The store rows of batch ``position``: a slice, or a slice of the epoch's permutation."""
        start = position * self._batch_size
        stop = min(start + self._batch_size, self.n)
        if not shuffled:
            return slice(start, stop)
        return self._order_of(epoch)[start:stop]

    # ----------------------------------------------------------- prepare
    def prepare(self, position: int, epoch: int, shuffled: bool, augmented: bool = True) -> Prepared:
        """Gather (and transform) the whole batch ``position`` of ``epoch``.

        Safe to call from worker threads. With rows sharded across GPUs, the
        whole batch (``loader[i]`` outside the strategy) is assembled on the
        first replica's GPU: a copy between GPUs that the strategy's own path
        never makes.
        """
        replicas = self.replicas
        if replicas is None:
            return self.prepare_rows(self.rows(position, epoch, shuffled), epoch, augmented)
        runtime = placement_lib.gpu_runtime()
        home = replicas.ordinals[0]
        if replicas.layout == replicas_lib.REPLICATED:
            with runtime.on_device(home):
                return self.prepare_rows(self.rows(position, epoch, shuffled), epoch, augmented)
        parts = self.prepare_parts(position, epoch, shuffled, augmented)
        xp = self.store.xp
        concat = getattr(xp, "concat", None) or xp.concatenate
        with runtime.on_device(home):
            leaves = [
                concat([runtime.copy_to_device(part_leaves[j], home) for _, part_leaves in parts], axis=0)
                for j in range(len(parts[0][1]))
            ]
            if self.backend() == "tensorflow":
                runtime.synchronize()
        return parts[0][0], leaves

    def prepare_parts(self, position: int, epoch: int, shuffled: bool, augmented: bool = True) -> list[Prepared]:
        """Each replica's part of batch ``position``, gathered on its own GPU from its own store."""
        replicas = self.replicas
        runtime = placement_lib.gpu_runtime()
        seed = sharding.shard_seed(self._seed_of(), self._shard_index)
        parts = []
        rows = replicas.rows(position, epoch, seed, self._batch_size, self.n, shuffled)
        for replica, replica_rows in enumerate(rows):
            with runtime.on_device(replicas.ordinals[replica]):
                parts.append(self.prepare_rows(replica_rows, epoch, augmented, replica))
        return parts

    def prepare_split(
        self, position: int, epoch: int, shuffled: bool, count: int, augmented: bool = True
    ) -> list[Prepared]:
        """Batch ``position`` cut into ``count`` parts, each gathered into its own buffer."""
        parts = replicas_lib.split_rows(self.rows(position, epoch, shuffled), count)
        return [self.prepare_rows(part, epoch, augmented) for part in parts]

    def prepare_rows(self, rows: slice | Any, epoch: int, augmented: bool = True, replica: int = 0) -> Prepared:
        """Gather ``rows`` of replica ``replica``'s store, augment, transform, ready the GPU buffers.

        ``augmented=False`` (evaluation and prediction passes) skips the augmentation ops.
        """
        store = self.store if self.replicas is None else self.replicas.stores[replica]
        leaves = self._take_augmented(rows, epoch, replica, store) if self._augment and augmented else store.take(rows)
        structure = self._structure
        if self._transform is not None:
            structure, leaves = check_transform_output(
                self._transform(structure.rebuild(leaves), store.xp), self.backend()
            )
        if self.on_gpu:
            runtime = placement_lib.gpu_runtime()
            if not self.trusted:  # a transform or an op may have returned views; host arrays are checked at hand-off
                leaves = [runtime.aligned_contiguous(leaf) for leaf in leaves]
            if self.backend() == "tensorflow":
                # TF's from_dlpack takes no stream; JAX and torch get it through __dlpack__(stream=...).
                runtime.synchronize()
        return structure, leaves

    def _take_augmented(self, rows: slice | Any, epoch: int, replica: int, store: store_lib.Store) -> list[Any]:
        """The batch's leaves, its images augmented.

        Built-in ops on images in RAM or on a GPU: a kernel writes them into the batch's block straight
        from the store (the host kernel, or one ``GatherAugment`` launch), and the gather copies the other
        leaves only. Otherwise (the disk tier, an op of one's own) the gathered images, then the ops one by one.
        """
        seed, ids = self._seed_of(), None
        make, later = {}, {}  # later: kernels writing another dtype than the store's (a final Normalize)
        if self._fused and store.in_ram_on_host:
            ids = self._ids(rows, replica, store)
            indices = np.arange(rows.start, rows.stop, dtype=np.int64) if isinstance(rows, slice) else rows
            for index, (fused, stream) in self._fused.items():
                leaf = store.leaves[index]
                write = functools.partial(
                    fused_lib.gather_augment_host, fused, leaf, indices, ids, seed, epoch, stream=stream
                )
                if fused.output_dtype == leaf.dtype:
                    make[index] = write
                else:
                    later[index] = functools.partial(_written, write, (len(indices), *leaf.shape[1:]), fused)
        elif self.on_gpu:  # each kernel reads its rows' dataset indices from the store's table itself
            for index, ops, stream in self._augment:
                kernel = self._device_kernel(replica, index, ops, store)
                if kernel is not None:
                    table = self._id_table(replica, store)
                    write = functools.partial(kernel, rows, table, seed, epoch, stream=stream)
                    leaf_dtype = _numpy_dtype(store.leaves[index].dtype)
                    if augment_lib.output_dtype(ops, leaf_dtype) == leaf_dtype:
                        make[index] = write
                    else:
                        later[index] = write  # GatherAugment allocates its output dtype
        for index in later:
            make[index] = _skip  # its place in the block is left unwritten
        leaves = store.take(rows, make)
        for index, write in later.items():
            leaves[index] = write()
        for index, ops, stream in self._augment:
            if index not in make:
                ids = self._ids(rows, replica, store) if ids is None else ids
                leaves[index] = apply_augment(
                    ops, leaves[index], ids, seed, epoch, store.xp, overwrite=True, stream=stream
                )
        return leaves

    def to_consumer(self, prepared: Prepared, backend: str | None = None) -> tuple[Any, ...]:
        """The backend's tensors of a prepared batch, through DLPack (no copy)."""
        structure, leaves = prepared
        backend = self.backend() if backend is None else backend
        # Gathered buffers are aligned by construction; a transform's or an op's output is checked.
        return structure.rebuild([hand_off(leaf, backend, known_aligned=self.trusted) for leaf in leaves])

    @property
    def augment_path(self) -> str:
        """How the augmentation runs, for the plan's reason ("" without augmentation)."""
        if not self._augment:
            return ""
        if self.on_gpu:
            return "augment: built-in ops in one CUDA launch per batch (GatherAugment), other lists op by op"
        missing = fused_lib.host_kernel_missing()
        if missing is not None:
            return f"augment: op by op on the NumPy path, since {missing}"
        ways = set()
        for index, ops, _ in self._augment:
            if index in self._fused:
                ways.add("the host kernel, reading the stored images")
            elif fused_lib.table_for(ops, self.store.leaves[index]) is not None:
                ways.add("the host kernel on each gathered batch (images read from disk)")
            else:
                ways.add("op by op (a list with an op of your own)")
        return "augment: " + ", ".join(sorted(ways))

    @property
    def trusted(self) -> bool:
        """Every leaf handed over is a buffer the gather made (no transform, no augmentation)."""
        return self._transform is None and not self._augment

    def _fusable(self, augment: list[tuple[int, list[Any], int]]) -> dict[int, tuple[fused_lib.FusedOps, int]]:
        """The leaves whose ops the host kernel runs straight from the store: ``{leaf index: (table, stream)}``."""
        if self.store.xp is not np or not self.store.in_ram_on_host or fused_lib.host_kernel() is None:
            return {}
        tables = {}
        for index, ops, stream in augment:
            table = fused_lib.table_for(ops, self.store.leaves[index])
            if table is not None:
                tables[index] = (table, stream)
        return tables

    def _device_kernel(self, replica: int, index: int, ops: list[Any], store: store_lib.Store) -> Any:
        """The GPU kernel of leaf ``index``'s ops on replica ``replica`` (``_cuda.GatherAugment``), or None."""
        key = (replica, index)
        if key not in self._device_kernels:
            table = fused_lib.table_for(ops, store.leaves[index])
            runtime = placement_lib.gpu_runtime()
            self._device_kernels[key] = None if table is None else runtime.gather_augment(table, store.leaves[index])
        return self._device_kernels[key]

    def _ids(self, rows: slice | Any, replica: int, store: store_lib.Store) -> Any:
        """The dataset index of each of ``rows`` (of replica ``replica``'s store), as int64 in its namespace.

        Cost: one gather of ``len(rows)`` integers per batch (see :meth:`_id_table`).
        """
        ids = self._id_table(replica, store)
        return ids[rows] if isinstance(rows, slice) else store.xp.take(ids, rows, axis=0)

    def _id_table(self, replica: int, store: store_lib.Store) -> Any:
        """The dataset index of every row of replica ``replica``'s store, int64 in its namespace.

        Cost: the first call per store keeps one int64 per row of it.
        """
        if replica not in self._sample_ids:
            sharded = self.replicas is not None and self.replicas.layout == replicas_lib.SHARDED
            held_count = sum(store.n for store in self.replicas.stores) if sharded else self.n
            held = self._global_rows if self._global_rows is not None else np.arange(held_count, dtype=np.int64)
            if sharded:
                share_seed = sharding.shard_seed(self._seed_of(), self._shard_index)
                held = held[sharding.shard_rows(len(held), share_seed, len(self.replicas.stores), replica)]
            self._sample_ids[replica] = store.xp.asarray(held, dtype=store.xp.int64)
        return self._sample_ids[replica]


def _skip(out: Any) -> None:
    """A leaf's place in the batch's block that another buffer replaces (an augmentation that changes the dtype)."""


def _written(write: Any, shape: tuple[int, ...], fused: Any) -> Any:
    """``write(out)`` into a fresh 64-byte aligned host buffer of the augmentation's output dtype."""
    from gpuloader.gather import aligned_empty

    return write(aligned_empty(shape, fused.output_dtype))
