"""One batch, from its position in an order to the consumer's tensors.

The path of a batch: its rows (a slice of the input order, or a slice of the
epoch's permutation), the fused gather of every leaf into one fresh block
(:mod:`gpuloader.gather`, ``_cuda.RowGather`` on the GPU), the user's
``transform`` where the data lives, the re-alignment of a transform's output on
the GPU, the stream sync TensorFlow needs, and the DLPack hand-off
(:mod:`gpuloader.handoff`). Under a per-GPU layout (:mod:`gpuloader.replicas`)
each replica's part is prepared on its own GPU from its own store.

No Keras here and no epoch bookkeeping: the caller says which epoch and whether
the pass is shuffled; the pipeline asks ``order_of(epoch)`` for the permutation.

Cost per batch: one copy of the batch's bytes (the gather), whatever the
transform costs, and no copy at the hand-off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuloader import placement as placement_lib
from gpuloader import replicas as replicas_lib
from gpuloader import store as store_lib
from gpuloader._structure import Structure
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
        seed_of: ``seed_of()`` returns the seed of this loader's per-epoch orders
            (replicas compute their own orders from it).
        on_gpu: the store is on a GPU (re-align a transform's output there, sync for TensorFlow).
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
    ) -> None:
        self.store = store
        self.replicas = replicas
        self._structure = structure
        self._transform = transform
        self._batch_size = batch_size
        self._order_of = order_of
        self._seed_of = seed_of
        self.on_gpu = on_gpu
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
    def prepare(self, position: int, epoch: int, shuffled: bool) -> Prepared:
        """Gather (and transform) the whole batch ``position`` of ``epoch``.

        Safe to call from worker threads. With rows sharded across GPUs, the
        whole batch (``loader[i]`` outside the strategy) is assembled on the
        first replica's GPU: a copy between GPUs that the strategy's own path
        never makes.
        """
        replicas = self.replicas
        if replicas is None:
            return self.prepare_rows(self.rows(position, epoch, shuffled))
        runtime = placement_lib.gpu_runtime()
        home = replicas.ordinals[0]
        if replicas.layout == replicas_lib.REPLICATED:
            with runtime.on_device(home):
                return self.prepare_rows(self.rows(position, epoch, shuffled))
        parts = self.prepare_parts(position, epoch, shuffled)
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

    def prepare_parts(self, position: int, epoch: int, shuffled: bool) -> list[Prepared]:
        """Each replica's part of batch ``position``, gathered on its own GPU from its own store."""
        replicas = self.replicas
        runtime = placement_lib.gpu_runtime()
        seed = self._seed_of()
        parts = []
        rows = replicas.rows(position, epoch, seed, self._batch_size, self.n, shuffled)
        for replica, replica_rows in enumerate(rows):
            with runtime.on_device(replicas.ordinals[replica]):
                parts.append(self.prepare_rows(replica_rows, replicas.stores[replica]))
        return parts

    def prepare_split(self, position: int, epoch: int, shuffled: bool, count: int) -> list[Prepared]:
        """Batch ``position`` cut into ``count`` parts, each gathered into its own buffer."""
        parts = replicas_lib.split_rows(self.rows(position, epoch, shuffled), count)
        return [self.prepare_rows(part) for part in parts]

    def prepare_rows(self, rows: slice | Any, store: store_lib.Store | None = None) -> Prepared:
        """Gather ``rows`` of every leaf of ``store``, run the transform, ready the GPU buffers."""
        store = self.store if store is None else store
        leaves = store.take(rows)
        structure = self._structure
        if self._transform is not None:
            structure, leaves = check_transform_output(
                self._transform(structure.rebuild(leaves), store.xp), self.backend()
            )
        if self.on_gpu:
            runtime = placement_lib.gpu_runtime()
            if self._transform is not None:  # it may have returned views; host arrays are checked at hand-off
                leaves = [runtime.aligned_contiguous(leaf) for leaf in leaves]
            if self.backend() == "tensorflow":
                # TF's from_dlpack takes no stream; JAX and torch get it through __dlpack__(stream=...).
                runtime.synchronize()
        return structure, leaves

    def to_consumer(self, prepared: Prepared, backend: str | None = None) -> tuple[Any, ...]:
        """The backend's tensors of a prepared batch, through DLPack (no copy)."""
        structure, leaves = prepared
        backend = self.backend() if backend is None else backend
        # Gathered buffers are aligned by construction; a transform's output is checked.
        trusted = self._transform is None
        return structure.rebuild([hand_off(leaf, backend, known_aligned=trusted) for leaf in leaves])
