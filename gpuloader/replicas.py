"""Several GPUs on one machine: a copy of the data on each, or its rows sharded across them.

Under a ``tf.distribute`` strategy whose local replicas are GPUs
(``MirroredStrategy``), replica r's part of every batch is gathered on GPU r from
data that already lives there, so after the upload no batch crosses between
devices. The layout is chosen once, when the loader is built inside
``strategy.scope()``, and stated in ``loader.plan``. Tried in order:

- **replicated**: every GPU holds all of the data. Batch i holds the same rows as
  on one device, cut into consecutive parts whose sizes differ by at most one;
  part r is gathered on GPU r. The order is the single-device order.
- **sharded**: a copy does not fit on every GPU, but a 1/k share does. GPU r keeps
  a fixed, seeded share of the rows (the rule of worker shards,
  :mod:`gpuloader.sharding`) and shuffles it every epoch; each step takes
  ``batch_size / k`` rows from every GPU. Every sample is still seen once per
  epoch; which samples share a batch differs from the single-device order.

When neither applies the loader keeps one copy on one GPU (TensorFlow then copies
the other replicas' parts to their GPUs every step) or falls back to the host, by
the single-device rule; the plan says why.

Cost: replicated, one upload per GPU; sharded, one upload of the data in all.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuloader import placement as placement_lib
from gpuloader import sharding
from gpuloader import store as store_lib
from gpuloader.config import LoaderConfig
from gpuloader.permutation import permutation

REPLICATED = "replicated"
SHARDED = "sharded"
_GPU_DEVICE = re.compile(r"device:GPU:(\d+)$", re.IGNORECASE)


@dataclass
class ReplicaSet:
    """The per-GPU stores of one loader and how a batch's rows map onto them.

    Attributes:
        layout: :data:`REPLICATED` or :data:`SHARDED`.
        devices: TensorFlow's name of each replica's device, in replica order.
        ordinals: the CUDA device of each replica.
        stores: each replica's store, on its own GPU.
        part_size: rows each replica serves per step (sharded layout).
    """

    layout: str
    devices: list[str]
    ordinals: list[int]
    stores: list[store_lib.Store]
    part_size: int
    _orders: dict[int, tuple[tuple[int, int], Any]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def rows(
        self, position: int, epoch: int, seed: int, batch_size: int, n: int, shuffle: bool
    ) -> list[slice | Any]:
        """Each replica's rows of batch ``position`` of ``(seed, epoch)``, in its own store's indices and namespace."""
        count = len(self.stores)
        if self.layout == REPLICATED:
            start, stop = position * batch_size, min(position * batch_size + batch_size, n)
            return [
                split_rows(self._order(r, n, seed, epoch, shuffle, start, stop), count)[r] for r in range(count)
            ]
        parts = []
        for r, store in enumerate(self.stores):
            start = position * self.part_size
            stop = min(start + self.part_size, store.n)
            parts.append(self._order(r, store.n, sharding.shard_seed(seed, r), epoch, shuffle, start, stop))
        return parts

    def _order(
        self, replica: int, n: int, seed: int, epoch: int, shuffle: bool, start: int, stop: int
    ) -> slice | Any:
        """Rows ``start:stop`` of replica ``replica``'s order, computed on its GPU once per (seed, epoch)."""
        if not shuffle:
            return slice(start, stop)
        key = (seed, epoch)
        cached = self._orders.get(replica)
        if cached is None or cached[0] != key:
            with self._lock:
                cached = self._orders.get(replica)
                if cached is None or cached[0] != key:
                    with placement_lib.gpu_runtime().on_device(self.ordinals[replica]):
                        cached = (key, permutation(self.stores[replica].xp, n, seed, epoch))
                    self._orders[replica] = cached
        return cached[1][start:stop]


def replica_devices(strategy: Any) -> list[str]:
    """The devices of ``strategy``'s local replicas; empty for none or the default strategy."""
    try:
        return list(strategy.extended.worker_devices)
    except (AttributeError, RuntimeError):
        return []


def strategy_replica_devices() -> list[str]:
    """The local replica devices of the ``tf.distribute`` strategy in scope; empty outside one."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not tf.distribute.has_strategy():
        return []
    return replica_devices(tf.distribute.get_strategy())


def gpu_ordinals(devices: Sequence[str]) -> list[int] | None:
    """The CUDA device of each TensorFlow replica device, or None unless all are distinct GPUs.

    TensorFlow numbers its logical GPUs over the devices it made visible
    (``tf.config.set_visible_devices``); with virtual GPUs several logical ones
    share a physical device, and no per-GPU layout is used.
    """
    indices = []
    for name in devices:
        match = _GPU_DEVICE.search(name)
        if match is None:
            return None
        indices.append(int(match.group(1)))
    if len(set(indices)) != len(indices):
        return None
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return indices
    visible = tf.config.get_visible_devices("GPU")
    if len(tf.config.list_logical_devices("GPU")) != len(visible) or max(indices) >= len(visible):
        return None
    return [int(visible[i].name.rsplit(":", 1)[1]) for i in indices]


def place(
    leaves: list[Any], names: list[str], config: LoaderConfig, row_bytes: int
) -> tuple[placement_lib.Plan | None, ReplicaSet | None, str]:
    """Build per-GPU stores for the replicas of the strategy in scope, if a layout fits.

    ``config`` gives the device asked for, the memory fraction, the batch size,
    ``drop_remainder`` and the worker's seed (:meth:`~gpuloader.config.LoaderConfig.order_seed`),
    which draws the GPUs' shares.

    Returns:
        (plan, replica set, "") when a layout was built; (None, None, note) when
        the single-device rule should decide, ``note`` saying why no per-GPU
        layout was used ("" when there is no multi-GPU strategy at all).

    Raises:
        placement.GPUUnavailableError: ``device="gpu"`` and an upload ran out of memory.
    """
    device, fraction, batch_size = config.device, config.gpu_memory_fraction, config.batch_size
    devices = strategy_replica_devices()
    if len(devices) < 2:
        return None, None, ""
    ordinals = gpu_ordinals(devices)
    if ordinals is None:
        return None, None, ""
    runtime = placement_lib.gpu_runtime()
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        placement_lib.share_gpu_with_tensorflow(tf)
    statuses = [runtime.probe(ordinal) for ordinal in ordinals]
    if not all(status.usable for status in statuses):
        return None, None, ""
    count, n = len(ordinals), int(leaves[0].shape[0])
    budgets = [int(status.free_bytes * fraction) for status in statuses]
    part_rows = -(-batch_size // count)
    copy_need = store_lib.bytes_needed(n * row_bytes, part_rows * row_bytes, n)
    share = -(-n // count)
    share_need = store_lib.bytes_needed(share * row_bytes, part_rows * row_bytes, share)
    gpus = ", ".join(str(ordinal) for ordinal in ordinals)
    budget_text = ", ".join(
        f"{placement_lib.format_bytes(budget)} on GPU {ordinal}" for ordinal, budget in zip(ordinals, budgets)
    )
    numbers = (
        f"a copy needs {placement_lib.format_bytes(copy_need)} per GPU, a 1/{count} share "
        f"{placement_lib.format_bytes(share_need)}; budgets {budget_text} = {fraction:g} x free"
    )
    if all(copy_need <= budget for budget in budgets):
        layout, why = REPLICATED, f"a copy of the data on each of the {count} replicas' GPUs ({gpus})"
    else:
        refusal = _sharding_refusal(leaves, count, n, config, all(share_need <= budget for budget in budgets))
        if refusal:
            return None, None, f"no copy per GPU for the {count} replicas: {numbers}; no 1/{count} share: {refusal}"
        layout, why = SHARDED, f"rows sharded across the {count} replicas' GPUs ({gpus}), a 1/{count} share on each"
    try:
        stores = _upload(layout, leaves, names, ordinals, config)
    except runtime.out_of_memory_errors() as error:
        where = f"the replicas' GPUs ({layout})"
        return None, None, placement_lib.upload_ran_out_of_memory(device, error, where, numbers)
    plan = placement_lib.Plan(
        "gpu", f"gpu: {why} ({numbers})", copy_need if layout == REPLICATED else share_need,
        min(status.free_bytes for status in statuses), layout=layout, gpus=tuple(ordinals),
    )
    part_size = batch_size // count
    return plan, ReplicaSet(layout, devices, ordinals, stores, part_size), ""


def _sharding_refusal(leaves: list[Any], count: int, n: int, config: LoaderConfig, share_fits: bool) -> str:
    """Why rows cannot be sharded across ``count`` GPUs, or "" if they can."""
    batch_size = config.batch_size
    if not share_fits:
        return "it does not fit either"
    if batch_size % count:
        return f"batch_size={batch_size} is not a multiple of the {count} replicas"
    if any(placement_lib.gpu_runtime().lives_on_cuda(leaf) for leaf in leaves):
        return "an input already lives on a GPU"
    try:
        sharding.steps_per_epoch(n, count, batch_size // count, config.drop_remainder)
    except ValueError as error:
        return str(error)
    return ""


def _upload(
    layout: str, leaves: list[Any], names: list[str], ordinals: list[int], config: LoaderConfig
) -> list[store_lib.Store]:
    """One store per GPU: all rows (replicated) or the GPU's share (sharded, by the worker's seed); all or nothing."""
    runtime = placement_lib.gpu_runtime()
    n, count = int(leaves[0].shape[0]), len(ordinals)
    stores: list[store_lib.Store] = []
    try:
        for replica, ordinal in enumerate(ordinals):
            own = leaves
            if layout == SHARDED:
                rows = sharding.shard_rows(n, config.order_seed(), count, replica)
                own = [sharding.take_shard(leaf, rows, name) for leaf, name in zip(leaves, names)]
            with runtime.on_device(ordinal):
                stores.append(store_lib.upload(own, names, runtime.namespace(), runtime, verbose=config.verbose))
    except BaseException:
        stores.clear()
        for ordinal in ordinals:  # each GPU has its own pool
            with runtime.on_device(ordinal):
                runtime.free_cached_memory()
        raise
    return stores


def split_rows(rows: slice | Any, count: int) -> list[slice | Any]:
    """``rows`` cut into ``count`` consecutive parts whose sizes differ by at most one."""
    if isinstance(rows, slice):
        start, stop = rows.start, rows.stop
        bounds = [start + (stop - start) * i // count for i in range(count + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(count)]
    size = int(rows.shape[0])
    bounds = [size * i // count for i in range(count + 1)]
    return [rows[bounds[i] : bounds[i + 1]] for i in range(count)]
