"""``Loader``: a drop-in Keras ``PyDataset`` that is also its own ``DataAdapter``.

The loader wires the layers together: placement decides host or GPU once; the
store holds the preloaded arrays; the permutation gives each epoch's order; the
gather copies one batch's rows into a fresh buffer; an optional ``transform``
runs where the data lives; the hand-off turns each array into the backend's
tensor through DLPack. Being a ``DataAdapter``, it is iterated by ``fit``,
``evaluate`` and ``predict`` directly, never through
``tf.data.Dataset.from_generator``.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import keras
import numpy as np

from gpuloader import inputs, sharding
from gpuloader import placement as placement_lib
from gpuloader import replicas as replicas_lib
from gpuloader import store as store_lib
from gpuloader._keras_compat import DataAdapter, class_weight_given_to_fit, strategy_of_caller, tf_batches
from gpuloader._structure import Structure, flatten
from gpuloader.handoff import hand_off, keras_backend
from gpuloader.permutation import permutation
from gpuloader.prefetch import in_background, in_order
from gpuloader.sources import advise_random_access, is_disk_leaf

STATE_FORMAT = "gpuloader.Loader/1"
_PYDATASET_KWARGS = ("workers", "use_multiprocessing", "max_queue_size")
_PARTS = ("x", "y", "sample_weight")
_REFUSED_DTYPE_KINDS = {"O": "object", "U": "string", "S": "bytes", "V": "void", "M": "datetime", "m": "timedelta"}


class Loader(keras.utils.PyDataset, DataAdapter):
    """Batches of preloaded arrays for ``model.fit``, shuffled per epoch, zero-copy.

    Args:
        x: an array (anything ``np.asarray`` takes, or a CUDA array), a path to
            a ``.npy`` file, a ``np.memmap``, a list of ``.npy`` paths (shards
            whose rows are concatenated), or a nested tuple/dict of them. Every
            leaf of ``x``, ``y`` and ``sample_weight`` has the same first
            dimension (the samples). On-disk inputs are not read at construction.
        y: targets, same rules, or None.
        sample_weight: per-sample weights, same rules, or None (needs ``y``).
        batch_size: samples per batch, a positive int.
        shuffle: a new order every epoch when True; the input order when False.
        seed: int in [0, 2**64); None draws one. The order is a function of
            (seed, epoch) alone, identical on host and GPU.
        drop_remainder: drop the last, smaller batch.
        device: "auto", "gpu", "host" or "disk"; None reads
            ``$GPULOADER_DEVICE``, else "auto". "auto" tries the GPU, then host
            RAM, then the disk. "gpu" never falls back: it raises with the reason.
        transform: ``transform(batch, xp) -> batch``, run on every gathered
            batch where the data lives (``xp`` is NumPy or CuPy); it receives
            and returns ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``.
        class_weight: ``{class_index: weight}``. Keras never passes the
            ``class_weight`` of ``fit`` to a custom adapter, so give it here;
            ``fit(loader, class_weight=...)`` is refused. Needs a single ``y``
            of integer labels or one-hot rows; it multiplies ``sample_weight``.
        gpu_memory_fraction: share of free GPU memory the data may take under
            "auto" (the rest is left to the model).
        host_memory_limit: bytes of RAM on-disk inputs may be read into;
            None means half the available RAM. Above it, batches are read from
            the files ("disk").
        num_shards, shard_index: this worker's share of the samples. None
            takes them from the active ``tf.distribute`` strategy, the Keras
            distribution or ``TF_CONFIG``; else a single worker. With more than
            one shard, ``seed`` is required (the same on every worker), each
            worker preloads only its own rows, and every sample is seen once per
            epoch across all workers.
        verbose: show a progress bar for uploads that take over a second.
        **pydataset_kwargs: ``workers`` (threads preparing batches ahead, in
            order), ``max_queue_size``; ``use_multiprocessing`` must stay False.

    Cost: construction validates and, on the GPU, copies the data once to the
    device. Each batch costs one gather (a copy of the batch's bytes); the
    hand-off itself copies nothing.
    """

    def __init__(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        drop_remainder: bool = False,
        device: str | None = None,
        transform: Callable[[tuple[Any, ...], Any], tuple[Any, ...]] | None = None,
        class_weight: Mapping[int, float] | None = None,
        gpu_memory_fraction: float = placement_lib.DEFAULT_GPU_MEMORY_FRACTION,
        host_memory_limit: int | None = None,
        num_shards: int | None = None,
        shard_index: int | None = None,
        verbose: bool = True,
        **pydataset_kwargs: Any,
    ) -> None:
        super().__init__(**inputs.check_pydataset_kwargs(pydataset_kwargs))
        self._batch_size = inputs.check_positive_int("batch_size", batch_size)
        self._shuffle = inputs.check_bool("shuffle", shuffle)
        self._drop_remainder = inputs.check_bool("drop_remainder", drop_remainder)
        seed_given = seed is not None
        self._seed = inputs.check_seed(seed)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable as transform(batch, xp); received {transform!r}.")
        self._transform = transform
        requested = placement_lib.resolve_device(device)
        fraction = placement_lib.check_fraction(gpu_memory_fraction)

        structure, leaves, names = inputs.flatten_parts(x, y, sample_weight)
        n = inputs.check_leaves(leaves, names)
        if class_weight is not None:
            structure, leaves, names = inputs.apply_class_weight(class_weight, structure, leaves, names, n)
        self._num_shards, self._shard_index, shard_note = _resolve_shards(num_shards, shard_index, seed_given)
        self._steps = sharding.steps_per_epoch(n, self._num_shards, self._batch_size, self._drop_remainder)
        if self._num_shards > 1:
            rows = sharding.shard_rows(n, self._seed, self._num_shards, self._shard_index)
            leaves = [sharding.take_shard(leaf, rows, name) for leaf, name in zip(leaves, names)]
        self._structure = structure
        self._n = int(leaves[0].shape[0])
        row_bytes = sum(store_lib.row_nbytes(leaf) for leaf in leaves)
        self._replicas: replicas_lib.ReplicaSet | None = None
        replica_note = ""
        if requested in ("auto", "gpu"):
            plan, self._replicas, replica_note = replicas_lib.place(
                leaves, names, requested, fraction, self._batch_size, row_bytes,
                sharding.shard_seed(self._seed, self._shard_index), self._drop_remainder, verbose,
            )
        if self._replicas is not None:
            self._plan, self._store = plan, self._replicas.stores[0]
        else:
            self._plan, self._store = _place(
                leaves, names, requested, fraction, host_memory_limit, row_bytes * self._batch_size, verbose
            )
            if replica_note:
                self._plan = dataclasses.replace(self._plan, reason=f"{self._plan.reason}; {replica_note}")
        if self._plan.placement == "disk" and self._shuffle:
            for leaf in self._store.leaves:
                if is_disk_leaf(leaf):
                    advise_random_access(leaf)
        if self._num_shards > 1:
            self._plan = dataclasses.replace(
                self._plan, reason=f"{self._plan.reason}; shard {self._shard_index} of {self._num_shards} "
                f"({self._n} of {n} samples, from {shard_note})"
            )
        self._epoch = 0
        self._served = False  # a batch of this epoch went out through loader[i]
        self._completed_epoch: int | None = None  # last epoch an adapter iterator went through
        self._order_cache: tuple[tuple[int, int], Any] | None = None
        self._order_ahead: tuple[tuple[int, int], Future[Any]] | None = None
        self._order_lock = threading.Lock()
        self._backend: str | None = None
        self._warned_cross_device = False

    # ----------------------------------------------------------- description
    @property
    def placement(self) -> str:
        """Where the data lives: "gpu", "host" (RAM) or "disk" (read per batch)."""
        return self._plan.placement

    @property
    def plan(self) -> placement_lib.Plan:
        """The placement decision: ``str(loader.plan)`` says what and why, with numbers."""
        return self._plan

    @property
    def xp(self) -> Any:
        """The array namespace the data lives in (NumPy or CuPy)."""
        return self._store.xp

    @property
    def num_samples(self) -> int:
        """Samples this loader holds and serves each epoch (this worker's shard when sharded)."""
        return self._n

    @property
    def num_shards(self) -> int:
        return self._num_shards

    @property
    def shard_index(self) -> int:
        return self._shard_index

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def epoch(self) -> int:
        """The epoch whose order ``loader[i]`` serves now (0 first)."""
        return self._epoch

    def __repr__(self) -> str:
        return (
            f"Loader(num_samples={self.num_samples}, batch_size={self._batch_size}, "
            f"shuffle={self._shuffle}, placement={self.placement!r}, epoch={self._epoch})"
        )

    # ------------------------------------------------------ Sequence contract
    def __len__(self) -> int:
        return self._steps

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """Batch ``index`` of the current epoch as the backend's tensors.

        The same index returns the same samples until ``on_epoch_end``.
        Negative indices count from the end.
        """
        position = self._check_index(index)
        self._served = True
        return self._to_consumer(self._prepare(position), self._consumer_backend())

    def on_epoch_end(self) -> None:
        """Move to the next epoch's order, if this epoch was used.

        Used means: a batch went out through ``loader[i]``, or Keras's iteration
        reached the epoch's last batch. Keras also calls this before the first
        epoch, after peeking at one batch to build the model (JAX and torch
        backends) and at the end of ``steps_per_epoch`` slices of an epoch; none
        of those moves the order, so resuming with ``set_state`` replays exactly
        the epoch it saved.
        """
        if self._served or self._completed_epoch == self._epoch:
            self._epoch += 1
            self._served = False

    def on_epoch_begin(self) -> None:
        """Nothing to do: the order of the epoch is computed on first use."""

    def set_epoch(self, epoch: int) -> None:
        """Serve the order of ``epoch`` from now on."""
        self._epoch = inputs.check_non_negative_int("epoch", epoch)
        self._served = False
        self._completed_epoch = None

    # ------------------------------------------------------------ resumption
    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable dict from which :meth:`set_state` resumes this epoch."""
        return {
            "format": STATE_FORMAT,
            "seed": self._seed,
            "epoch": self._epoch,
            "num_samples": self._n,
            "batch_size": self._batch_size,
            "shuffle": self._shuffle,
            "drop_remainder": self._drop_remainder,
            "num_shards": self._num_shards,
            "shard_index": self._shard_index,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Serve exactly the batches of the epoch ``state`` was taken at.

        Raises:
            ValueError: the state is not a gpuloader state, or was taken from a
                loader whose batches cannot match this one's (other sample count,
                batch size, shuffle or drop_remainder).
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"set_state expects a dict from Loader.get_state() with format={STATE_FORMAT!r}; "
                f"received {state!r}."
            )
        for key in ("num_samples", "batch_size", "shuffle", "drop_remainder", "num_shards", "shard_index"):
            mine = self.get_state()[key]
            if state.get(key) != mine:
                raise ValueError(
                    f"set_state: the state was taken from a loader with {key}={state.get(key)!r}, "
                    f"this loader has {key}={mine!r}; its batches would differ. Build the loader "
                    "over the same data with the same arguments."
                )
        seed = inputs.check_seed(state["seed"])
        sharded_gpus = self._replicas is not None and self._replicas.layout == replicas_lib.SHARDED
        if seed != self._seed and (self._num_shards > 1 or sharded_gpus):
            raise ValueError(
                f"set_state: the state has seed={seed}, this loader seed={self._seed}; the seed also decided "
                "which rows this loader holds (its shard), so its batches cannot match. Build the loader "
                f"with seed={seed}, then call set_state."
            )
        self._seed = seed
        self.set_epoch(state["epoch"])
        self._order_cache = self._order_ahead = None

    # ------------------------------------------------------------ DataAdapter
    @property
    def num_batches(self) -> int:
        if class_weight_given_to_fit() is not None:
            raise ValueError(
                "class_weight was passed to fit(), but Keras does not pass it to a custom data "
                "adapter such as gpuloader.Loader, so it would be ignored. Pass it to the loader "
                "instead: gpuloader.Loader(x, y, class_weight={...})."
            )
        return len(self)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def has_partial_batch(self) -> bool:
        return not self._drop_remainder and self._n % self._batch_size != 0

    @property
    def partial_batch_size(self) -> int | None:
        return self._n % self._batch_size if self.has_partial_batch else None


    def get_numpy_iterator(self) -> Iterator[Any]:
        return self._iterate("numpy")

    def get_tf_dataset(self) -> Any:
        """Batches for the TF trainer; per-replica values under a multi-device strategy."""
        strategy = strategy_of_caller()
        devices = replicas_lib.replica_devices(strategy)
        if len(devices) > 1:
            self._check_replica_split(len(devices))
            return tf_batches(lambda: self._iterate_replicas(strategy, devices))
        return tf_batches(lambda: self._iterate("tensorflow"))

    def get_jax_iterator(self) -> Iterator[Any]:
        return self._iterate("jax")

    def get_torch_dataloader(self) -> Iterator[Any]:
        return self._iterate("torch")

    # --------------------------------------------------------------- internals
    def _iterate(self, backend: str) -> Iterator[Any]:
        """One epoch of batches for ``backend``, prepared ahead by ``workers`` threads."""
        for prepared in self._epoch_of(self._prepare):
            yield self._to_consumer(prepared, backend)

    def _epoch_of(self, prepare: Callable[[int, int], Any]) -> Iterator[Any]:
        """``prepare(position, epoch)`` for every batch of one epoch, in order, ``workers`` threads ahead.

        An iterator started after the previous one went through the whole epoch
        begins the next epoch, even before ``on_epoch_end`` (Keras does that when
        ``steps_per_epoch`` slices epochs). The epoch is fixed when iteration
        starts, so batches prepared ahead never mix two orders.
        """
        if self._completed_epoch == self._epoch:
            self.on_epoch_end()
        epoch, last = self._epoch, len(self) - 1
        batches = in_order(
            lambda position: prepare(position, epoch),
            range(len(self)), workers=self.workers, max_queue_size=self.max_queue_size,
        )
        for position, prepared in enumerate(batches):
            if position == last:
                self._completed_epoch = epoch
            yield prepared

    def _iterate_replicas(self, strategy: Any, devices: list[str]) -> Iterator[Any]:
        """One epoch of ``PerReplica`` batches: replica r gets its part, made on its own device.

        With a per-GPU layout built for these replicas (``loader.plan.layout``),
        part r is gathered on GPU r from the data there and never moves.
        Otherwise each batch's rows are split as evenly as possible between the
        replicas, each part gathered into its own buffer where the data is and
        then placed on its replica's device (a copy between devices on GPUs).
        """
        import tensorflow as tf

        count = len(devices)
        own_layout = self._replicas is not None and list(self._replicas.devices) == list(devices)
        if own_layout:
            prepare = self._prepare_parts
        else:
            if self._plan.placement == "gpu" and not self._warned_cross_device:
                self._warned_cross_device = True
                warnings.warn(
                    f"gpuloader: the data is on one GPU, so every step the other {count - 1} replicas' parts "
                    "are copied to their GPUs. Build the loader inside strategy.scope() to keep a copy (or a "
                    "share of the rows) on each replica's GPU.", RuntimeWarning, stacklevel=2,
                )

            def prepare(position: int, epoch: int) -> list[tuple[Structure, list[Any]]]:
                parts = replicas_lib.split_rows(self._rows(position, epoch), count)
                return [self._prepare_rows(part) for part in parts]

        for batch_parts in self._epoch_of(prepare):
            per_replica = []
            for device, prepared in zip(devices, batch_parts):
                tensors = self._to_consumer(prepared, "tensorflow")
                with tf.device(device):
                    per_replica.append(tf.nest.map_structure(tf.identity, tensors))
            yield strategy.experimental_distribute_values_from_function(
                lambda context, values=per_replica: values[context.replica_id_in_sync_group % count]
            )

    def _prepare_parts(self, position: int, epoch: int) -> list[tuple[Structure, list[Any]]]:
        """Each replica's part of batch ``position``, gathered on its own GPU from its own store."""
        replicas = self._replicas
        runtime = placement_lib.gpu_runtime()
        parts = []
        seed = sharding.shard_seed(self._seed, self._shard_index)
        for replica, rows in enumerate(replicas.rows(position, epoch, seed, self._batch_size, self._n, self._shuffle)):
            with runtime.on_device(replicas.ordinals[replica]):
                parts.append(self._prepare_rows(rows, replicas.stores[replica]))
        return parts

    def _check_replica_split(self, count: int) -> None:
        smallest = self.partial_batch_size or self._batch_size
        if smallest < count:
            raise ValueError(
                f"the last batch has {smallest} sample(s) for {count} replicas, so a replica would get an "
                "empty batch; pass drop_remainder=True or a batch_size that leaves at least one sample per "
                "replica in the last batch."
            )

    def _prepare(self, position: int, epoch: int | None = None) -> tuple[Structure, list[Any]]:
        """Gather (and transform) batch ``position`` of ``epoch`` (default: the current one).

        Safe to call from worker threads. With rows sharded across GPUs, the
        whole batch (``loader[i]`` outside the strategy) is assembled on the
        first replica's GPU: a copy between GPUs that the strategy's own path
        never makes.
        """
        epoch = self._epoch if epoch is None else epoch
        if self._replicas is None:
            return self._prepare_rows(self._rows(position, epoch))
        runtime = placement_lib.gpu_runtime()
        home = self._replicas.ordinals[0]
        if self._replicas.layout == replicas_lib.REPLICATED:
            with runtime.on_device(home):
                return self._prepare_rows(self._rows(position, epoch))
        parts = self._prepare_parts(position, epoch)
        xp = self._store.xp
        concat = getattr(xp, "concat", None) or xp.concatenate
        with runtime.on_device(home):
            leaves = [
                concat([runtime.copy_to_device(part_leaves[j], home) for _, part_leaves in parts], axis=0)
                for j in range(len(parts[0][1]))
            ]
            if self._consumer_backend() == "tensorflow":
                runtime.synchronize()
        return parts[0][0], leaves

    def _prepare_rows(self, rows: slice | Any, store: store_lib.Store | None = None) -> tuple[Structure, list[Any]]:
        store = self._store if store is None else store
        xp = store.xp
        leaves = store.take(rows)
        structure = self._structure
        if self._transform is not None:
            structure, leaves = _run_transform(self._transform, structure.rebuild(leaves), xp)
        if self._plan.placement == "gpu":
            runtime = placement_lib.gpu_runtime()
            if self._transform is not None:  # it may have returned views; host arrays are checked at hand-off
                leaves = [runtime.aligned_contiguous(leaf) for leaf in leaves]
            if self._consumer_backend() == "tensorflow":
                # TF's from_dlpack takes no stream; JAX and torch get it through __dlpack__(stream=...).
                runtime.synchronize()
        return structure, leaves

    def _to_consumer(self, prepared: tuple[Structure, list[Any]], backend: str) -> tuple[Any, ...]:
        structure, leaves = prepared
        # Gathered buffers are aligned by construction; a transform's output is checked.
        trusted = self._transform is None
        return structure.rebuild([hand_off(leaf, backend, known_aligned=trusted) for leaf in leaves])

    def _consumer_backend(self) -> str:
        if self._backend is None:
            self._backend = keras_backend()
        return self._backend

    def _rows(self, position: int, epoch: int) -> slice | Any:
        start = position * self._batch_size
        stop = min(start + self._batch_size, self._n)
        if not self._shuffle:
            return slice(start, stop)
        return self._order(epoch)[start:stop]

    def _order(self, epoch: int) -> Any:
        """The permutation of ``epoch``, computed once and kept until another epoch is asked.

        On the host the next epoch's permutation is then computed on a
        background thread (NumPy's sort releases the GIL), so moving to the
        next epoch does not wait for it. Cost: one more int64 per sample.
        """
        cached = self._order_cache  # read once: another thread may replace it, never mutate it
        if cached is not None and cached[0] == (self._seed, epoch):
            return cached[1]
        with self._order_lock:
            key = (self._seed, epoch)
            if self._order_cache is None or self._order_cache[0] != key:
                ahead, self._order_ahead = self._order_ahead, None
                order = ahead[1].result() if ahead is not None and ahead[0] == key else self._permute(key)
                self._order_cache = (key, order)
                if self._store.xp is np:
                    following = (self._seed, epoch + 1)
                    self._order_ahead = (following, in_background(self._permute, following))
            return self._order_cache[1]

    def _permute(self, key: tuple[int, int]) -> Any:
        seed, epoch = key
        return permutation(self._store.xp, self._n, sharding.shard_seed(seed, self._shard_index), epoch)

    def _check_index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an int; received {index!r}.")
        length = len(self)
        position = int(index) + length if index < 0 else int(index)
        if not 0 <= position < length:
            raise IndexError(f"batch index {index} is out of range for a loader of {length} batches.")
        return position


# ------------------------------------------------------------------ helpers
def _resolve_shards(num_shards: Any, shard_index: Any, seed_given: bool) -> tuple[int, int, str]:
    if num_shards is None and shard_index is None:
        num_shards, shard_index, source = sharding.default_shards()
    elif num_shards is None or shard_index is None:
        raise ValueError(
            f"num_shards and shard_index go together; received num_shards={num_shards!r}, "
            f"shard_index={shard_index!r}. Pass both, or neither to take them from the strategy."
        )
    else:
        source = "the num_shards and shard_index arguments"
    shards, index = sharding.check_shards(num_shards, shard_index, seed_given)
    return shards, index, source


def _place(
    leaves: list[Any], names: list[str], device: str, fraction: float, host_memory_limit: int | None,
    batch_bytes: int, verbose: bool,
) -> tuple[placement_lib.Plan, store_lib.Store]:
    """Decide the placement and build the store; an out-of-memory upload under "auto" falls back."""
    data_bytes = sum(store_lib.leaf_nbytes(leaf) for leaf in leaves)
    disk_bytes = sum(store_lib.leaf_nbytes(leaf) for leaf in leaves if is_disk_leaf(leaf))
    n = int(leaves[0].shape[0])
    needed = data_bytes + 4 * batch_bytes + 24 * n  # data, batches in flight, permutation scratch
    plan = placement_lib.plan(
        device, needed, fraction, disk_bytes=disk_bytes, host_memory_limit=host_memory_limit
    )
    runtime = placement_lib.gpu_runtime()
    if plan.placement == "gpu":
        try:
            store = store_lib.upload(leaves, names, runtime.namespace(), runtime, verbose=verbose)
            return plan, store
        except runtime.out_of_memory_errors() as error:
            reason = placement_lib.upload_ran_out_of_memory(device, error, "the GPU", plan.reason)
            plan = placement_lib.fallback_plan(reason, needed, disk_bytes, host_memory_limit, plan.bytes_free)
    host_leaves = [runtime.adopt(leaf).get() if runtime.lives_on_cuda(leaf) else leaf for leaf in leaves]
    return plan, store_lib.on_host(host_leaves, names, load_disk=plan.placement == "host")


def _run_transform(transform: Callable[..., Any], batch: Any, xp: Any) -> tuple[Structure, list[Any]]:
    """Call the user's ``transform(batch, xp)`` and check it returned a batch of arrays."""
    result = transform(batch, xp)
    if not isinstance(result, (tuple, list)) or not 1 <= len(result) <= 3:
        length = f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""
        raise TypeError(
            "transform(batch, xp) must return a tuple (x,), (x, y) or (x, y, sample_weight); "
            f"it returned {type(result).__name__}{length}."
        )
    structure, leaves, names = flatten(tuple(result), "transform output")
    for leaf, name in zip(leaves, names):
        if not hasattr(leaf, "__dlpack__") or not hasattr(leaf, "shape"):
            raise TypeError(
                f"{name} is a {type(leaf).__name__}, not an array of the namespace xp; build it "
                "with xp (e.g. xp.astype(x, xp.float32)) so it stays where the data lives."
            )
    return structure, leaves
