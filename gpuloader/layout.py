"""Where one loader's data lives: this worker's rows, placed once on the GPUs, one GPU, the host or the disk.

:func:`lay_out` applies the rules of the layers below in order: the worker's
shard (:mod:`gpuloader.sharding`: its rows, taken lazily from on-disk inputs),
a per-GPU layout under a multi-GPU strategy (:mod:`gpuloader.replicas`), else
the single-device rule (:mod:`gpuloader.store`, :mod:`gpuloader.placement`),
and on a disk tier too large for the page cache, page read-around off. The
result, a :class:`Layout`, says where the data is and why (its ``plan``).

Cost: the upload or read of the data (once); nothing per batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuloader import placement as placement_lib
from gpuloader import replicas as replicas_lib
from gpuloader import sharding
from gpuloader import store as store_lib
from gpuloader.config import LoaderConfig
from gpuloader.sources import is_disk_leaf


@dataclass(frozen=True)
class Layout:
    """The placed data of one loader.

    Attributes:
        plan: the decision and its reason, with numbers (``loader.plan``).
        store: the single-device store (the first replica's under a per-GPU layout).
        replicas: the per-GPU layout, or None.
        global_rows: the rows of the whole dataset this worker holds, ascending (None: all of them).
    """

    plan: placement_lib.Plan
    store: store_lib.Store
    replicas: replicas_lib.ReplicaSet | None = None
    global_rows: np.ndarray | None = None

    @property
    def on_gpu(self) -> bool:
        return self.plan.placement == "gpu"

    @property
    def seed_owns_rows(self) -> bool:
        """The seed chose which rows are held (worker shards or GPU shares): another seed's state cannot match."""
        return self.global_rows is not None or (
            self.replicas is not None and self.replicas.layout == replicas_lib.SHARDED
        )

    def noting(self, note: str) -> Layout:
        """This layout with ``note`` added to its plan's reason ("" adds nothing)."""
        return dataclasses.replace(self, plan=noting(self.plan, note)) if note else self


def lay_out(leaves: list[Any], names: list[str], config: LoaderConfig) -> Layout:
    """Place ``config``'s share of the data once: per GPU under a multi-GPU strategy, else one device, host or disk.

    Raises:
        placement.GPUUnavailableError: ``device="gpu"`` cannot be honoured.
        ValueError: the rows cannot be placed as asked (e.g. ``device="host"`` over ``host_memory_limit``).
    """
    n, global_rows = int(leaves[0].shape[0]), None
    if config.num_shards > 1:
        global_rows = sharding.shard_rows(n, config.seed, config.num_shards, config.shard_index)
        leaves = [sharding.take_shard(leaf, global_rows, name) for leaf, name in zip(leaves, names)]
    layout = _place(leaves, names, config)
    layout = dataclasses.replace(layout, global_rows=global_rows)
    if config.num_shards > 1:
        dropped = sharding.left_out(n, config.num_shards, config.shard_index, config.batch_size,
                                    config.drop_remainder, config.shuffle)
        layout = layout.noting(f"shard {config.shard_index} of {config.num_shards} ({layout.store.n} of {n} samples, "
                               f"from {config.shard_source})" + (f"; {dropped}" if dropped else ""))
    return layout


def _place(leaves: list[Any], names: list[str], config: LoaderConfig) -> Layout:
    row_bytes = sum(store_lib.row_nbytes(leaf) for leaf in leaves)
    replica_note = ""
    if config.device in ("auto", "gpu"):
        plan, replicas, replica_note = replicas_lib.place(leaves, names, config, row_bytes)
        if replicas is not None:
            return Layout(plan, replicas.stores[0], replicas)
    plan, store = store_lib.place(leaves, names, config, row_bytes * config.batch_size)
    plan = noting(plan, replica_note)
    disk_bytes = sum(store_lib.leaf_nbytes(leaf) for leaf in store.leaves if is_disk_leaf(leaf))
    if plan.placement == "disk" and config.shuffle and disk_bytes > placement_lib.available_host_memory():
        # The files cannot stay in the page cache for an epoch: pages read around a row would be evicted
        # before their rows come up, so read exactly each batch's pages. Otherwise the read-around is used.
        for leaf in store.leaves:
            if is_disk_leaf(leaf):
                leaf.advise_random_access()
    return Layout(plan, store)


def noting(plan: placement_lib.Plan, note: str) -> placement_lib.Plan:
    """``plan`` with ``note`` added to its reason ("" adds nothing)."""
    return dataclasses.replace(plan, reason=f"{plan.reason}; {note}") if note else plan
