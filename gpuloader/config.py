"""One loader's configuration: every ``Loader`` argument but the data, checked once, then read by every part.

:func:`gpuloader.inputs.check_config` builds the one :class:`LoaderConfig` of a
loader from its arguments (each checked there, with the rule, the value and the
fix) before anything is placed; the parts (placement, store, replicas, orders,
pipeline, Keras passes) take the value and read the fields they need, so an
argument is checked in one place and passed in one. The value is immutable:
the only thing a loader changes after construction is its stream position and,
through ``set_state``, its seed, and both belong to the schedule
(:mod:`gpuloader.schedule`, :mod:`gpuloader.orders`), not to the configuration.

Adding a ``Loader`` argument: a field here, its check in
:func:`gpuloader.inputs.check_config`, the argument in ``Loader.__init__``, and
the read in the part that uses it (docs/design.md, "Adding an argument").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuloader.placement import DEFAULT_GPU_MEMORY_FRACTION
from gpuloader.sharding import shard_seed


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """A loader's arguments, checked (:func:`gpuloader.inputs.check_config`).

    Attributes:
        batch_size: samples per batch.
        shuffle: a new order every epoch (False: the input order).
        drop_remainder: drop the last, smaller batch (and, with shards, what makes every shard's steps equal).
        seed: the seed the loader was built with, in [0, 2**64) (``set_state`` may replace the
            schedule's, never this one).
        num_shards, shard_index: this worker's share of the samples.
        shard_source: where ``num_shards``/``shard_index`` came from, in words for ``loader.plan``.
        device: the device asked for: "auto", "gpu", "host" or "disk" (``$GPULOADER_DEVICE`` resolved).
        device_argument: the ``device`` argument as given (None: the environment or the default chose).
        gpu_memory_fraction: share of free GPU memory the data may take, in (0, 1].
        host_memory_limit: bytes of RAM on-disk inputs may be read into; None: half the available RAM,
            measured when the placement is decided.
        transform: ``transform(batch, xp) -> batch`` or None.
        data_format: "channels_last" or "channels_first", for the augmentation ops without their own.
        verbose: progress bars for uploads and reads over a second.
        workers: threads preparing batches ahead.
        max_queue_size: batches prepared ahead of the consumer at most.
    """

    batch_size: int
    shuffle: bool = True
    drop_remainder: bool = False
    seed: int = 0
    num_shards: int = 1
    shard_index: int = 0
    shard_source: str = "a single worker"
    device: str = "auto"
    device_argument: str | None = None
    gpu_memory_fraction: float = DEFAULT_GPU_MEMORY_FRACTION
    host_memory_limit: int | None = None
    transform: Callable[[tuple[Any, ...], Any], tuple[Any, ...]] | None = None
    data_format: str = "channels_last"
    verbose: bool = False
    workers: int = 1
    max_queue_size: int = 10

    def order_seed(self, seed: int | None = None) -> int:
        """The seed of this shard's orders for the loader seed ``seed`` (None: the configured one).

        The one place a worker's seed is derived (:func:`gpuloader.sharding.shard_seed`):
        its orders, and under a sharded multi-GPU layout its GPUs' shares and
        their orders, all come from this seed.
        """
        return shard_seed(self.seed if seed is None else seed, self.shard_index)
