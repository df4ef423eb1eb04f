"""One batch, from its position in an order to the consumer's tensors.

The path of a batch: its rows (a slice of the input order, or a slice of the
epoch's permutation), the fused gather of every leaf into one block nothing else holds
(:mod:`gpuloader.gather`, ``_cuda.RowGather`` on the GPU), the augmentation ops
(:mod:`gpuloader.augment`, keyed by seed, epoch and each row's index in the whole
dataset) and then the user's ``transform``, both where the data lives, the re-alignment of a transform's output on
the GPU, the stream sync TensorFlow needs, and the DLPack hand-off
(:mod:`gpuloader.handoff`). Under a per-GPU layout (:mod:`gpuloader.replicas`)
each replica's part is prepared on its own GPU from its own store.

No Keras here and no epoch bookkeeping: the caller says which epoch and whether
the pass is shuffled; the pipeline asks the loader's :class:`~gpuloader.orders.Orders`
for the epoch's permutation and the seed that keys the augmentation's draws.

Cost per batch: one copy of the batch's bytes (the gather), whatever the
transform costs, and no copy at the hand-off.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from gpuloader import placement as placement_lib
from gpuloader import readahead as readahead_lib
from gpuloader import replicas as replicas_lib
from gpuloader import sharding
from gpuloader import store as store_lib
from gpuloader._structure import Structure
from gpuloader.augment.assign import AugmentedInput
from gpuloader.augment.plan import BatchDraws, InputAugmentation, input_augmentations
from gpuloader.config import LoaderConfig
from gpuloader.handoff import check_transform_output, hand_off, keras_backend
from gpuloader.layout import Layout
from gpuloader.orders import Orders

Prepared = tuple[Structure, list[Any]]


class BatchPipeline:
    """Prepares batch ``position`` of an epoch and hands it over.

    Args:
        layout: where the data is: the store (per-GPU stores under a per-GPU layout), whether on a GPU (a
            transform's output is re-aligned there, and synced for TensorFlow), the dataset rows this worker holds.
        structure: how the flat leaves nest into ``(x, y, sample_weight)``.
        config: the loader's configuration (``batch_size``, ``transform``).
        orders: each epoch's permutation and the loader's current seed (the augmentation's draws are keyed by it).
        augment: each augmented input's checked ops (:func:`gpuloader.augment.assign.assign`); each gets an
            :class:`~gpuloader.augment.plan.InputAugmentation` that picks its path once. They run after the
            gather (or in it), before ``transform``.
    """

    def __init__(
        self, layout: Layout, structure: Structure, config: LoaderConfig, orders: Orders,
        augment: list[AugmentedInput] | None = None,
    ) -> None:
        self.store = layout.store
        self.replicas = replicas = layout.replicas
        self.on_gpu = layout.on_gpu
        self._global_rows = layout.global_rows
        self._structure = structure
        self._config = config
        self._orders = orders
        stores, ordinals = ([self.store], None) if replicas is None else (replicas.stores, replicas.ordinals)
        self._augment = input_augmentations(augment or [], stores, self.on_gpu, ordinals)
        self._passes = [augmentation for augmentation in self._augment if augmentation.leader is None]
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
    def order(self, epoch: int) -> Any:
        """The permutation of ``epoch`` (computed once, then kept), or None when the loader does not shuffle."""
        return self._orders.order(epoch)

    def rows(self, position: int, epoch: int, shuffled: bool) -> slice | Any:
        """The store rows of batch ``position``: a slice, or a slice of the epoch's permutation."""
        start = position * self._config.batch_size
        stop = min(start + self._config.batch_size, self.n)
        if not shuffled:
            return slice(start, stop)
        return self._orders.order(epoch)[start:stop]

    def readahead(self, epoch: int, shuffled: bool, first: int, end: int) -> readahead_lib.PassReadahead | None:
        """The page requests of a pass over batches ``first .. end - 1`` of on-disk leaves (:mod:`gpuloader.readahead`).

        None unless the store reads files batch by batch.
        """
        if self.on_gpu or self.replicas is not None:
            return None
        order = self._orders.order(epoch) if shuffled else None
        return readahead_lib.for_pass(self.store.leaves, order, self._config.batch_size, end, first)

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
        seed = self._orders.order_seed
        parts = []
        rows = replicas.rows(position, epoch, seed, self._config.batch_size, self.n, shuffled)
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

        ``augmented=False`` (evaluation and prediction passes) skips the augmentation ops but a final
        ``Normalize``, which the model's inputs need as in training.
        """
        store = self.store if self.replicas is None else self.replicas.stores[replica]
        if self._augment and augmented:
            leaves = self._take_augmented(rows, epoch, replica, store)
        else:
            leaves = store.take(rows)
            for augmentation in self._augment:
                if augmentation.normalize is not None:
                    draws = self._draws(rows, epoch, replica, store)
                    leaves[augmentation.index] = augmentation.unaugmented(leaves[augmentation.index], draws, store.xp)
        structure = self._structure
        if self._config.transform is not None:
            structure, leaves = check_transform_output(
                self._config.transform(structure.rebuild(leaves), store.xp), self.backend()
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
        """The batch's leaves, its augmented inputs each through its path (:mod:`gpuloader.augment.plan`).

        Inputs whose kernel reads the store write into their place in the batch's block (the gather copies the
        other leaves only; an input of another output dtype gets a buffer of its own); the others are gathered,
        then augmented. An input with joined followers (``augment.Same``) writes them in the same pass.
        """
        draws = self._draws(rows, epoch, replica, store)
        writes, make = [], {}
        for augmentation in self._passes:
            write = augmentation.writer(draws, store, replica)
            if write is not None:
                writes.append((augmentation, write))
                make.update(dict.fromkeys(augmentation.indices, _skip))  # the gather leaves their places alone
        leaves = store.take(rows, make)
        for augmentation, write in writes:
            targets = [augmentation, *augmentation.followers]
            outs = write([leaves[target.index] if target.in_place else None for target in targets])
            for target, out in zip(targets, outs):
                leaves[target.index] = out  # in its place in the block, or a buffer of its dtype (a Normalize)
        written = {augmentation for augmentation, _ in writes}
        for augmentation in self._passes:
            if augmentation not in written:
                for index, out in zip(augmentation.indices, augmentation.apply(leaves, draws, store.xp)):
                    leaves[index] = out
        return leaves

    def _draws(self, rows: slice | Any, epoch: int, replica: int, store: store_lib.Store) -> BatchDraws:
        return BatchDraws(  # the rows' dataset indices gathered once per batch, whichever input asks first
            rows, self._orders.seed, epoch, functools.cache(functools.partial(self._ids, rows, replica, store)),
            functools.partial(self._id_table, replica, store),
        )

    def to_consumer(self, prepared: Prepared, backend: str | None = None) -> tuple[Any, ...]:
        """The backend's tensors of a prepared batch, through DLPack (no copy)."""
        structure, leaves = prepared
        backend = self.backend() if backend is None else backend
        # Gathered buffers are aligned by construction; a transform's or an op's output is checked.
        return structure.rebuild([hand_off(leaf, backend, known_aligned=self.trusted) for leaf in leaves])

    @property
    def augment_path(self) -> str:
        """How each input is augmented, for the plan's reason ("" without augmentation)."""
        if not self._augment:
            return ""
        return "augment: " + "; ".join(augmentation.describe() for augmentation in self._augment)

    @property
    def augmentations(self) -> list[InputAugmentation]:
        """The augmented inputs, each with the path that runs its ops."""
        return list(self._augment)

    @property
    def trusted(self) -> bool:
        """Every leaf handed over is a buffer the gather made (no transform, no augmentation)."""
        return self._config.transform is None and not self._augment

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
                share_seed = self._orders.order_seed
                held = held[sharding.shard_rows(len(held), share_seed, len(self.replicas.stores), replica)]
            self._sample_ids[replica] = store.xp.asarray(held, dtype=store.xp.int64)
        return self._sample_ids[replica]


def _skip(out: Any) -> None:
    """A leaf's place in the batch's block that another buffer replaces (an augmentation that changes the dtype)."""
