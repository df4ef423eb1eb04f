"""Split the samples between workers: each preloads and serves only its own shard.

Shard membership is fixed for the life of the loader and drawn from the seed
(so a dataset sorted by label does not give one worker one class): shard ``k``
of ``S`` owns positions ``k, k + S, k + 2S, ...`` of a permutation reserved for
membership, kept in ascending row order for file locality. The shards
partition the rows, so every sample is seen exactly once per epoch across all
workers; each shard then shuffles its own rows every epoch. Every worker must
take the same number of steps per epoch (synchronous training hangs
otherwise), which is checked at construction.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from typing import Any

import numpy as np

from gpuloader import placement
from gpuloader.permutation import MAX_SEED, permutation

#: The "epoch" whose permutation assigns rows to shards; no training run reaches it.
MEMBERSHIP_EPOCH = MAX_SEED


def default_shards() -> tuple[int, int, str]:
    """(num_shards, shard_index, source) from the active strategy, Keras distribution or TF_CONFIG."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and tf.distribute.has_strategy():
        resolver = getattr(tf.distribute.get_strategy(), "cluster_resolver", None)
        spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
        if spec:
            tasks = [task for kind in ("chief", "worker") for task in _tasks(spec.get(kind))]
            index = (0 if resolver.task_type == "chief" else resolver.task_id + len(_tasks(spec.get("chief"))))
            return len(tasks), index, "the active tf.distribute strategy"
    if "keras" in sys.modules:
        from gpuloader._keras_compat import distribution_processes

        processes, index = distribution_processes()
        if processes > 1:
            return processes, index, "the Keras distribution"
    config = os.environ.get("TF_CONFIG")
    if config:
        parsed = json.loads(config)
        cluster, task = parsed.get("cluster", {}), parsed.get("task", {})
        chiefs, workers = _tasks(cluster.get("chief")), _tasks(cluster.get("worker"))
        if task.get("type") in ("chief", "worker") and len(chiefs) + len(workers) > 1:
            index = 0 if task["type"] == "chief" else len(chiefs) + int(task.get("index", 0))
            return len(chiefs) + len(workers), index, "TF_CONFIG"
    return 1, 0, "a single worker"


def _tasks(entry: Any) -> list[Any]:
    if entry is None:
        return []
    return list(entry.values()) if isinstance(entry, dict) else list(entry)


def resolve_shards(num_shards: Any, shard_index: Any, seed_given: bool) -> tuple[int, int, str]:
    """``(num_shards, shard_index, where they came from)``: the arguments, else the defaults."""
    if num_shards is None and shard_index is None:
        num_shards, shard_index, source = default_shards()
    elif num_shards is None or shard_index is None:
        raise ValueError(
            f"num_shards and shard_index go together; received num_shards={num_shards!r}, "
            f"shard_index={shard_index!r}. Pass both, or neither to take them from the strategy."
        )
    else:
        source = "the num_shards and shard_index arguments"
    shards, index = check_shards(num_shards, shard_index, seed_given)
    return shards, index, source


def check_shards(num_shards: Any, shard_index: Any, seed_given: bool) -> tuple[int, int]:
    """Validate an explicit or default (num_shards, shard_index) pair."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
        raise ValueError(f"num_shards must be an int >= 1; received {num_shards!r}.")
    if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) or not (
        0 <= shard_index < num_shards
    ):
        raise ValueError(
            f"shard_index must be an int in [0, num_shards={num_shards}); received {shard_index!r}. "
            "Give each worker its own index 0, 1, ..., num_shards - 1."
        )
    if num_shards > 1 and not seed_given:
        raise ValueError(
            f"num_shards={num_shards} needs an explicit seed, the same on every worker: the seed decides "
            "which rows each shard owns and every epoch's order. Pass e.g. seed=1234."
        )
    return int(num_shards), int(shard_index)


def shard_rows(n: int, seed: int, num_shards: int, shard_index: int) -> np.ndarray:
    """The ascending row indices that shard ``shard_index`` of ``num_shards`` owns."""
    membership = permutation(np, n, seed, MEMBERSHIP_EPOCH)
    return np.sort(membership[shard_index::num_shards])


def take_shard(leaf: Any, rows: np.ndarray, name: str) -> Any:
    """A shard's ``rows`` of a leaf (``Source.subset``): lazily for on-disk data, a copy of just those rows in RAM."""
    if placement.gpu_runtime().lives_on_cuda(leaf):
        raise ValueError(
            f"{name} is already on a GPU; sharding between workers needs host arrays or .npy files, so that "
            "each worker uploads only its own rows."
        )
    return leaf.subset(rows)


def steps_per_epoch(n: int, num_shards: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch, the same on every shard, or a ValueError saying why it cannot be.

    With ``drop_remainder`` every shard serves as many full batches as the
    smallest shard has; without it, shard sizes (which differ by at most one)
    must round up to the same count.
    """
    small, large = n // num_shards, -(-n // num_shards)
    if drop_remainder:
        steps = small // batch_size
        if steps == 0:
            raise ValueError(
                f"drop_remainder=True with shards of {small} samples (n={n}, num_shards={num_shards}) and "
                f"batch_size={batch_size} leaves no batch at all; lower batch_size or set drop_remainder=False."
            )
        return steps
    if small == 0:
        raise ValueError(f"{n} samples cannot fill num_shards={num_shards} shards; use fewer shards.")
    steps = {math.ceil(small / batch_size), math.ceil(large / batch_size)}
    if len(steps) > 1:
        raise ValueError(
            f"{n} samples over num_shards={num_shards} give shards of {small} and {large} samples, which make "
            f"{sorted(steps)} batches of batch_size={batch_size}; every worker must take the same number of "
            "steps. Pass drop_remainder=True, or a batch_size that does not divide the shard size."
        )
    return steps.pop()


def left_out(n: int, num_shards: int, shard_index: int, batch_size: int, drop_remainder: bool, shuffle: bool) -> str:
    """What shard ``shard_index`` leaves out of every epoch, in words for ``loader.plan`` ("" when nothing).

    With ``drop_remainder`` each shard serves as many full batches as the
    smallest shard has (:func:`steps_per_epoch`), so a larger shard can leave
    out a whole batch besides its last partial one: that is said here, and
    warned about at construction with the fix, since ``drop_remainder=True``
    alone reads as "drop the last, smaller batch".
    """
    if not drop_remainder or num_shards == 1:
        return ""
    steps = steps_per_epoch(n, num_shards, batch_size, drop_remainder)
    size = len(range(shard_index, n, num_shards))  # shard_rows takes every num_shards-th row from shard_index on
    dropped = size - steps * batch_size
    if dropped == 0:
        return ""
    which = "other samples each epoch" if shuffle else "the same samples every epoch, since shuffle=False"
    note = (f"drop_remainder: {dropped} of this shard's {size} samples {'is' if dropped == 1 else 'are'} left out "
            f"of each epoch ({which})")
    whole = size // batch_size - steps
    if whole == 0:
        return note
    note += (
        f", {whole} full batch{'es' * (whole > 1)} of {batch_size} among them, so that every shard takes {steps} "
        f"step{'s' * (steps > 1)} (as many full batches as the smallest shard, of {n // num_shards} samples, has)"
    )
    # Shard sizes differ by one, so a larger shard has a spare full batch only when its size is a multiple of
    # batch_size; then both sizes round up to the same count and drop_remainder=False is always allowed.
    fix = (f"drop_remainder=False serves every sample here, in {steps_per_epoch(n, num_shards, batch_size, False)} "
           "steps on every shard")
    warnings.warn(f"gpuloader: shard {shard_index} of {num_shards}: {note}. {fix}.", UserWarning, stacklevel=3)
    return note


def shard_seed(seed: int, shard_index: int) -> int:
    """The seed of one shard's per-epoch order (shard 0 keeps ``seed``)."""
    return (seed + shard_index) % (MAX_SEED + 1)
