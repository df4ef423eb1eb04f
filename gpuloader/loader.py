"""``Loader``: a drop-in Keras ``PyDataset`` that is also its own ``DataAdapter``.

The loader only composes the layers: :mod:`gpuloader.inputs` checks and
flattens the arguments; placement (:mod:`gpuloader.store`, :mod:`gpuloader.replicas`,
:mod:`gpuloader.sharding`) decides once where the data lives and puts it there;
:mod:`gpuloader.schedule` decides which epoch each pass serves and owns the
state; :mod:`gpuloader.pipeline` prepares and hands over each batch; and
:mod:`gpuloader.passes` answers Keras's trainers. Being a ``DataAdapter``, it
is iterated by ``fit``, ``evaluate`` and ``predict`` directly, never through
``tf.data.Dataset.from_generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from gpuloader import inputs, sharding
from gpuloader import placement as placement_lib
from gpuloader._keras_compat import DataAdapter, keras_call
from gpuloader.augment.apply import describe_augment
from gpuloader.augment.assign import assign as assign_augment
from gpuloader.config import LoaderConfig
from gpuloader.layout import lay_out
from gpuloader.orders import Orders
from gpuloader.passes import KerasPasses
from gpuloader.pipeline import BatchPipeline
from gpuloader.schedule import STATE_FORMAT, EpochSchedule, state_signature
from gpuloader.sources import is_disk_leaf
from gpuloader.superbatch import super_batches

__all__ = ["STATE_FORMAT", "Loader"]

_ANOTHER_LOADER = (
    "For a second, independent loader over the same data build one: Loader(x, y, seed=loader.seed, <the same "
    "arguments>) (C-contiguous arrays in RAM are shared, not copied), then new.set_state(loader.get_state()) to "
    "start where the original is."
)


class _NotCopied:
    """A loader is neither copied nor pickled: each way raises ``TypeError`` naming the alternative.

    ``copy.copy`` would share the epoch schedule with the original, ``copy.deepcopy``
    would duplicate the data, and ``pickle`` cannot carry GPU memory, memory maps
    or threads into another process (see ``Loader``'s docstring, "Copies").
    """

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Refused: see the class docstring ("Copies")."""
        raise TypeError(
            "a gpuloader.Loader cannot be pickled: it holds the preloaded data (on the GPU, in RAM or as open "
            "memory maps), its epoch schedule and its prefetch threads, none of which cross into another process. "
            "It prepares batches in threads (workers=N), not processes. To use the data elsewhere, pass what built "
            "it (the arrays or .npy paths, and the arguments, seed included) and build a Loader there; "
            "loader.get_state() is JSON, and set_state() on the new loader resumes at the same epoch."
        )

    def __copy__(self) -> Any:
        """Refused: see the class docstring ("Copies")."""
        raise TypeError(
            "copy.copy(loader) is refused: the copy would share the original's epoch schedule, so a pass over "
            f"either would move the other's epoch. {_ANOTHER_LOADER}"
        )

    def __deepcopy__(self, memo: Any) -> Any:
        """Refused: see the class docstring ("Copies")."""
        raise TypeError(
            "copy.deepcopy(loader) is refused: it would duplicate the preloaded data (a second copy on the GPU or "
            f"in RAM) and cannot copy the prefetch threads or open memory maps. {_ANOTHER_LOADER}"
        )


#: tf.data.Dataset methods a Keras tutorial calls next, and what a Loader offers instead.
_TF_DATA_NAMES = {
    "cache": "drop it: the loader holds the data (GPU, RAM or disk) and decodes nothing per epoch",
    "prefetch": "drop it: the loader prepares batches ahead itself (workers=N)",
    "map": "use Loader(..., transform=fn) for a per-batch function, augment=[...] for random augmentation, "
           "or a layer in the model",
    "take": "index it: loader[0] is one batch (a training batch: augmented, and it counts for the epoch), or "
            "fit(..., steps_per_epoch=k)",
    "batch": "the loader already batches: Loader(..., batch_size=n)",
    "unbatch": "index the arrays the loader was built from",
    "shuffle": "the loader shuffles every epoch: Loader(..., shuffle=True, seed=...)",
    "repeat": "drop it: the loader serves one epoch per pass, and fit runs the epochs",
    "cardinality": "len(loader) is the number of batches, loader.num_samples the samples",
    "element_spec": "look at loader[0] (a training batch), or at the arrays the loader was built from",
    "as_numpy_iterator": "iterate the loader: for batch in loader (NumPy batches on the host)",
}


class _NotATfDataset:
    """``loader.cache()``, ``.map(...)`` and the other ``tf.data.Dataset`` methods raise an
    ``AttributeError`` that names what the loader offers instead (see :data:`_TF_DATA_NAMES`)."""

    def __getattr__(self, name: str) -> Any:
        if name in _TF_DATA_NAMES:
            raise AttributeError(
                f"a gpuloader.Loader is a Keras PyDataset, not a tf.data.Dataset, so it has no .{name}(): "
                f"{_TF_DATA_NAMES[name]}."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class _AsDataAdapter(DataAdapter):
    """The ``DataAdapter`` side of a ``Loader``: Keras's trainers iterate it directly (:mod:`gpuloader.passes`).

    Reads the loader's configuration (``_config``), pipeline and Keras passes (``_passes``).
    """

    _config: LoaderConfig
    _pipeline: BatchPipeline
    _passes: KerasPasses

    @property
    def num_batches(self) -> int:
        """``len(loader)``; no side effect (the call's arguments are checked when a pass starts)."""
        return len(self)

    @property
    def batch_size(self) -> int:
        return self._config.batch_size

    @property
    def has_partial_batch(self) -> bool:
        return not self._config.drop_remainder and self._pipeline.n % self._config.batch_size != 0

    @property
    def partial_batch_size(self) -> int | None:
        return self._pipeline.n % self._config.batch_size if self.has_partial_batch else None

    # ``super_batch=N`` (Keras after 3.15, steps_per_execution as one scan): N batches stacked per item,
    # the rest as Keras's PartialBatchList (see gpuloader.superbatch); None: one batch per item.
    def get_numpy_iterator(self, super_batch: int | None = None) -> Iterator[Any]:
        return super_batches(self._passes.iterate("numpy"), super_batch, "numpy")

    def get_tf_dataset(self, super_batch: int | None = None) -> Any:
        """Batches for the TF trainer; per-replica values under a multi-device strategy."""
        return self._passes.tf_dataset(super_batch)

    def get_jax_iterator(self, super_batch: int | None = None) -> Iterator[Any]:
        return super_batches(self._passes.iterate("jax"), super_batch, "jax")

    def get_torch_dataloader(self, super_batch: int | None = None) -> Iterator[Any]:
        return super_batches(self._passes.iterate("torch"), super_batch, "torch")


class Loader(_NotCopied, _NotATfDataset, _AsDataAdapter, keras.utils.PyDataset):
    """Batches of preloaded arrays for ``model.fit``, shuffled per epoch, zero-copy.

    Args:
        x: an array (anything ``np.asarray`` takes, or a CUDA array), a ``.npy``
            path, a ``np.memmap``, a list of ``.npy`` paths (shards, rows
            concatenated), or a nested tuple/dict of them, all with the same
            first dimension (the samples). Files are not read at construction.
        y: targets, same rules, or None.
        sample_weight: per-sample weights, same rules, or None (needs ``y``).
        batch_size: samples per batch, a positive int.
        shuffle: a new order every epoch when True; the input order when False.
        seed: int in [0, 2**64); None draws one. The order is a function of
            (seed, epoch) alone, identical on host and GPU.
        drop_remainder: drop the last, smaller batch. With several shards,
            every shard takes as many full batches as the smallest one has, so
            a larger shard may also leave out a full batch: ``loader.plan``
            says so, and a warning names the fix.
        device: "auto", "gpu", "host" or "disk"; None reads
            ``$GPULOADER_DEVICE``, else "auto". "auto" tries the GPU, then host
            RAM, then the disk. "gpu" never falls back: it raises with the reason.
        transform: ``transform(batch, xp) -> batch``, run on every gathered
            batch where the data lives (``xp`` is NumPy or CuPy); it receives
            and returns ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``.
        augment: ops of :mod:`gpuloader.augment` applied in order to the images
            of ``x`` after the gather and before ``transform``, where the data
            lives; a list when ``x`` is one array, else a dict from the input's
            key (or position) to its list. Each sample's draws are a function
            of (seed, epoch, its index in the dataset). Training passes only
            (evaluation and prediction keep just a final ``Normalize``).
            A mask (or any image-shaped input) gets its images' draws with
            ``augment.Same``: ``augment={"x": ops, "y": augment.Same("x", fill=255)}``
            (keys ``"x"``, ``"y"``, ``("y", key)``; see docs/augment-targets.md).
        data_format: how image inputs are laid out for the ops that have no
            ``data_format`` of their own: ``"channels_last"`` (n, H, W, C) or
            ``"channels_first"`` (n, C, H, W); None reads
            ``keras.config.image_data_format()`` when the loader is built.
        class_weight: ``{class_index: weight}``. Keras never passes the
            ``class_weight`` of ``fit`` to a custom adapter, so give it here;
            ``fit(loader, class_weight=...)`` is refused. Needs a single ``y``
            of integer labels or one-hot rows; it multiplies ``sample_weight``.
        gpu_memory_fraction: share of free GPU memory the data may take under
            "auto" (the rest is left to the model).
        host_memory_limit: bytes of RAM on-disk inputs may be read into (None:
            half the available RAM); above it, batches are read from the files.
        num_shards, shard_index: this worker's share of the samples; None takes
            them from the ``tf.distribute`` strategy, the Keras distribution or
            ``TF_CONFIG``. Several shards need the same ``seed`` on every worker;
            each preloads its own rows; every sample is seen once per epoch
            (but for what ``drop_remainder`` leaves out).
        verbose: show a progress bar for uploads and reads over a second.
        **pydataset_kwargs: ``workers`` (threads preparing batches ahead, in
            order), ``max_queue_size``; ``use_multiprocessing`` must stay False.

    Cost: construction validates and, on the GPU, copies the data once to the
    device. Each batch costs one gather (a copy of the batch's bytes); the
    hand-off itself copies nothing.

    Copies: a loader is not copied or pickled. ``copy.copy`` would share the
    epoch schedule with the original, ``copy.deepcopy`` would duplicate the data,
    and ``pickle`` cannot carry GPU memory, memory maps or threads into another
    process; each raises ``TypeError`` saying so. A second, independent loader
    over the same data is a second ``Loader(...)`` with the same ``seed`` and
    arguments (C-contiguous arrays in RAM are shared, not copied), put at the
    original's position with ``set_state(loader.get_state())``.
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
        augment: Sequence[Any] | Mapping[Any, Any] | None = None,
        data_format: str | None = None,
        class_weight: Mapping[int, float] | None = None,
        gpu_memory_fraction: float = placement_lib.DEFAULT_GPU_MEMORY_FRACTION,
        host_memory_limit: int | None = None,
        num_shards: int | None = None,
        shard_index: int | None = None,
        verbose: bool = True,
        **pydataset_kwargs: Any,
    ) -> None:
        _refuse_overrides(type(self))
        super().__init__(**inputs.check_pydataset_kwargs(pydataset_kwargs))
        self._config = config = inputs.check_config(
            batch_size=batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder, device=device,
            transform=transform, data_format=data_format, gpu_memory_fraction=gpu_memory_fraction,
            host_memory_limit=host_memory_limit, num_shards=num_shards, shard_index=shard_index, verbose=verbose,
            workers=self.workers, max_queue_size=self.max_queue_size,
        )
        structure, leaves, names = inputs.flatten_parts(x, y, sample_weight)
        n = inputs.check_leaves(leaves, names)
        placement_lib.check_disk_request(
            config.device, config.device_argument, [is_disk_leaf(leaf) for leaf in leaves], names
        )
        if class_weight is not None:
            structure, leaves, names = inputs.apply_class_weight(class_weight, structure, leaves, names, n)
        augmented = assign_augment(augment, structure, leaves, names, config.data_format)
        steps = sharding.steps_per_epoch(n, config.num_shards, config.batch_size, config.drop_remainder)
        layout = lay_out(leaves, names, config)
        signature = state_signature(
            config, layout.store.n, inputs.describe_leaves(leaves),
            describe_augment([(a.index, a.ops, a.stream) for a in augmented], names),
        )
        orders = Orders(layout.store.xp, layout.store.n, config)
        self._schedule = EpochSchedule(orders, steps, signature, layout.seed_owns_rows)
        self._pipeline = BatchPipeline(layout, structure, config, orders, augmented)
        self._plan = layout.noting(self._pipeline.augment_path).plan
        self._passes = KerasPasses(self._schedule, self._pipeline, config)

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
        return self._pipeline.store.xp

    @property
    def num_samples(self) -> int:
        """Samples this loader holds and serves each epoch (this worker's shard when sharded)."""
        return self._pipeline.n

    @property
    def num_shards(self) -> int:
        return self._config.num_shards

    @property
    def shard_index(self) -> int:
        return self._config.shard_index

    @property
    def seed(self) -> int:
        return self._schedule.seed

    @property
    def epoch(self) -> int:
        """The epoch whose order ``loader[i]`` serves now (0 first)."""
        return self._schedule.epoch

    @property
    def shuffle(self) -> bool:
        """Whether training passes serve a new order every epoch (else the input order)."""
        return self._config.shuffle

    # The parts, read-only, for tests, benchmarks and debugging (docs/design.md names each one's rule).
    @property
    def pipeline(self) -> BatchPipeline:
        """The :class:`~gpuloader.pipeline.BatchPipeline`: the store (``.store``), the per-GPU layout
        (``.replicas``), the augmented inputs, and ``prepare(position, epoch, shuffled)``, one batch as
        arrays where the data lives, before the hand-off (it never moves the stream)."""
        return self._pipeline

    @property
    def schedule(self) -> EpochSchedule:
        """The :class:`~gpuloader.schedule.EpochSchedule`: the training stream, the passes and the orders."""
        return self._schedule

    def __repr__(self) -> str:
        return (
            f"Loader(num_samples={self.num_samples}, batch_size={self._config.batch_size}, "
            f"shuffle={self._config.shuffle}, placement={self.placement!r}, epoch={self.epoch})"
        )

    # ------------------------------------------------------ Sequence contract
    def __len__(self) -> int:
        return self._passes.steps

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """Batch ``index`` of the current epoch as the backend's tensors.

        The same index returns the same samples until the epoch moves on.
        Negative indices count from the end. Inside ``fit`` (a callback) it is
        the batch of the epoch Keras is training; inside ``evaluate`` or
        ``predict`` (a callback, a metric), what those passes serve: the input
        order, not augmented. Outside Keras calls, giving
        out every batch of an epoch finishes it (see :mod:`gpuloader.schedule`).
        """
        position = _position(index, len(self))
        item = self._schedule.item_pass(position, keras_call())
        return self._pipeline.to_consumer(self._pipeline.prepare(position, item.epoch, item.shuffled, item.augmented))

    def __iter__(self) -> Iterator[Any]:
        """One pass over the batches (``for batch in loader``), prepared ahead by ``workers`` threads.

        Outside Keras it trains: it takes the stream's next batches. In a callback of ``fit`` it serves the epoch
        being trained, as ``loader[i]`` does there, and moves nothing.
        """
        return self._passes.iterate(self._pipeline.backend(), by_user=True)

    def on_epoch_end(self) -> None:
        """Move to the next epoch's order if this epoch finished (see :mod:`gpuloader.schedule`).

        Finished means: an iteration reached the epoch's last batch, or every
        batch went out through ``loader[i]``. Keras also calls this before the
        first epoch, after peeking at a batch and after every evaluation; none
        of those moves the order.
        """
        self._schedule.on_epoch_end()

    def on_epoch_begin(self) -> None:
        """In ``fit``, tell Keras how many batches the pass starting now serves; otherwise nothing."""
        self._passes.epoch_begins()

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` (an int in [0, 2**64)) from its first batch; the next ``fit`` starts there."""
        self._schedule.set_epoch(epoch)

    # ------------------------------------------------------------ resumption
    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable dict naming the next batch training takes (``epoch``, ``position``).

        ``position`` counts the batches of ``epoch`` already taken by training
        (``fit``, or a custom loop over the loader); :meth:`set_state` starts
        there. See docs/resume.md.
        """
        return self._schedule.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Start at the batch ``state`` names: iterating the loader, or the next ``fit``, goes on from there.

        Raises:
            ValueError: the state is not a ``gpuloader.Loader/3`` state from
                :meth:`get_state` (a key missing, an older format, a seed or
                epoch not an int in [0, 2**64), a position outside the epoch),
                or was taken from a loader whose batches cannot match this
                one's (other sample count, inputs, batch size, shuffle,
                drop_remainder, shard or augmentation). Nothing is changed then.
        """
        self._schedule.set_state(state)



def _position(index: Any, length: int) -> int:
    """``index`` as a position in ``[0, length)``, negative counting from the end, or a clear error."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"batch index must be an int; received {index!r}.")
    position = int(index) + length if index < 0 else int(index)
    if not 0 <= position < length:
        raise IndexError(f"batch index {index} is out of range for a loader of {length} batches.")
    return position


def _refuse_overrides(cls: type) -> None:
    """A subclass may add methods, but not replace what fit, evaluate and predict never call."""
    for name in ("__getitem__", "__len__"):
        if getattr(cls, name) is not getattr(Loader, name):
            owner = next(klass.__name__ for klass in cls.__mro__ if name in vars(klass))
            raise TypeError(
                f"{owner} overrides Loader.{name}, but fit(), evaluate() and predict() do not call it: they "
                "iterate the loader's own batches, so the override would be silently bypassed. Shape batches "
                "with transform=lambda batch, xp: ... (it runs on every batch, where the data lives) instead "
                f"of overriding {name}."
            )
