"""The Keras side of the loader: passes over the data, the guards on ``fit`` arguments, per-replica values.

Keras 3 iterates a custom ``DataAdapter`` directly (``get_numpy_iterator``,
``get_tf_dataset``, ``get_jax_iterator``, ``get_torch_dataloader``), so every
batch of ``fit``, ``evaluate`` and ``predict`` goes through :meth:`KerasPasses.iterate`:
the schedule says which epoch the pass serves (training follows Keras's epoch;
evaluation and prediction serve the input order), ``workers`` threads prepare
the batches ahead in order (:mod:`gpuloader.prefetch`), and the pipeline hands
each one over. Under a multi-device ``tf.distribute`` strategy each step is a
``PerReplica`` value, part r made on replica r's device.

Keras also drops, without a word, arguments a custom adapter cannot see
(``y``, ``sample_weight``, ``class_weight``, ``batch_size``, ``shuffle``);
:meth:`KerasPasses.check_arguments` refuses or warns about each when a pass
starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

from gpuloader import replicas as replicas_lib
from gpuloader._keras_compat import KerasCall, keras_call, set_pass_length, strategy_of_caller, tf_batches
from gpuloader.config import LoaderConfig
from gpuloader.pipeline import BatchPipeline
from gpuloader.prefetch import in_order
from gpuloader.schedule import EpochSchedule
from gpuloader.superbatch import check_super_batch, super_batches


class KerasPasses:
    """Iterations over one loader's batches, as Keras's trainers ask for them.

    Args:
        schedule: decides the epoch each pass serves (and says how many batches a pass has).
        pipeline: prepares and hands over each batch.
        config: the loader's configuration: ``batch_size``, ``shuffle``, ``drop_remainder`` for the guards'
            messages; ``workers`` threads preparing batches ahead, at most ``max_queue_size`` of them.
    """

    def __init__(self, schedule: EpochSchedule, pipeline: BatchPipeline, config: LoaderConfig) -> None:
        self._schedule = schedule
        self._pipeline = pipeline
        self._config = config
        self._steps = schedule.steps
        self._warned: set[str] = set()

    @property
    def steps(self) -> int:
        """Batches per pass (``len(loader)``)."""
        return self._steps

    # ------------------------------------------------------------- guards
    def check_arguments(self, call: KerasCall | None) -> None:
        """Refuse what Keras would silently not pass to the loader; warn about what it ignores.

        Run when a pass starts (its first batch is asked for), inside the Keras
        call that consumes it (validation: the ``evaluate`` that ``fit`` runs),
        not when Keras reads ``num_batches``, which stays a plain property.
        """
        if call is None:
            return
        arguments = call.arguments
        for name, fix in (
            ("y", "Give the targets to the loader: gpuloader.Loader(x, y)."),
            ("sample_weight", "Give them to the loader: gpuloader.Loader(x, y, sample_weight)."),
            ("class_weight", "Pass it to the loader instead: gpuloader.Loader(x, y, class_weight={...})."),
        ):
            if arguments.get(name) is not None:
                raise ValueError(
                    f"{name} was passed to {call.kind}() together with a gpuloader.Loader, but Keras does not "
                    f"pass it to a loader, so it would be ignored. {fix}"
                )
        given = arguments.get("batch_size")
        if given is not None and given != self._config.batch_size:
            said = f"fit(validation_batch_size={given})" if call.within_fit else f"{call.kind}(batch_size={given})"
            self._warn_once(
                "batch_size", f"{said} is ignored for a gpuloader.Loader, which serves batches of "
                f"batch_size={self._config.batch_size}; set the batch size on the loader instead.",
            )
        if call.kind == "fit" and arguments.get("shuffle") is False and self._config.shuffle:
            self._warn_once(
                "shuffle", "fit(shuffle=False) is ignored for a gpuloader.Loader, which shuffles every epoch "
                "because it was built with shuffle=True; build it with shuffle=False for the input order.",
            )
        if call.kind == "predict" and self._config.drop_remainder and self._pipeline.n % self._config.batch_size:
            self._warn_once(
                "predict", f"predict() on a loader with drop_remainder=True returns predictions for "
                f"{self._steps * self._config.batch_size} of its {self._pipeline.n} samples (the last, partial batch "
                "is dropped); build the loader with drop_remainder=False to predict every sample.",
            )
        if call.kind == "evaluate" and self._config.drop_remainder and self._pipeline.n % self._config.batch_size:
            scored = self._steps * self._config.batch_size
            said = "fit's validation" if call.within_fit else "evaluate()"
            self._warn_once(
                "evaluate", f"{said} on a loader with drop_remainder=True scores {scored} of its {self._pipeline.n} "
                f"samples, and always leaves out the same last {self._pipeline.n - scored} (evaluation serves the "
                "input order); build the loader it evaluates with drop_remainder=False to score every sample.",
            )

    def _warn_once(self, key: str, message: str, category: type[Warning] = UserWarning) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"gpuloader: {message}", category, stacklevel=4)

    # ------------------------------------------------------------- passes
    def epoch_begins(self) -> None:
        """Keras's epoch iterator starts an epoch: in ``fit``, tell it how long the pass starting now is.

        A pass ends where its epoch's order ends, so one that starts inside an
        order (a fit going on after a shorter one, a resumed epoch) is shorter
        than ``len(loader)``; Keras reads the length before the first batch.
        """
        call = keras_call()
        if call is not None and call.kind == "fit" and call.epoch is not None:
            length = self._schedule.plan_fit_epoch(call)
            if length is not None:
                set_pass_length(call.token, length)

    def iterate(self, backend: str, by_user: bool = False) -> Iterator[Any]:
        """One pass of batches for ``backend``, prepared ahead by ``workers`` threads.

        ``by_user``: ``for batch in loader`` (not a trainer's adapter); inside a fit's epoch, that is a callback
        looking at the data, served without moving the stream (:meth:`EpochSchedule.look_pass`).
        """
        pipeline = self._pipeline
        for prepared in self._pass_of(pipeline.prepare, by_user):
            yield pipeline.to_consumer(prepared, backend)

    def _pass_of(self, prepare: Callable[[int, int, bool, bool], Any], by_user: bool = False) -> Iterator[Any]:
        """``prepare(position, epoch, shuffled, augmented)`` for every batch of one pass, in order, ahead.

        The pass (epoch, first batch, length) is decided when iteration starts
        (the schedule's rule), so batches prepared ahead never mix two orders.
        Training passes (and custom loops) are augmented and move the stream
        as each batch is handed out (``Pass.moves_stream``); evaluation and
        prediction passes do neither; Keras's build peek is augmented and moves nothing.
        """
        schedule = self._schedule
        call = keras_call()
        self.check_arguments(call)  # here, in the frame of the Keras call that consumes the pass
        in_fit_epoch = call is not None and call.kind == "fit" and call.epoch is not None
        running = schedule.look_pass(call) if by_user and in_fit_epoch else schedule.begin_pass(call)
        epoch, shuffled, augmented = running.epoch, running.shuffled, running.augmented
        first, end = running.start, running.start + running.length
        # On the disk tier, the pages of the batches ahead are requested in the pass's order.
        readahead = self._pipeline.readahead(epoch, shuffled, first, end)

        def produce(position: int) -> Any:
            if readahead is not None:
                readahead.advance(position)
            return prepare(position, epoch, shuffled, augmented)

        batches = in_order(produce, range(first, end), workers=self._config.workers,
                           max_queue_size=self._config.max_queue_size)
        try:
            for prepared in batches:
                schedule.served(running)
                yield prepared
        finally:
            batches.close()  # its threads first: none of them starts a batch after the read-ahead stops
            if readahead is not None:
                readahead.close()

    def tf_dataset(self, super_batch: int | None = None) -> Any:
        """Batches for the TF trainer; per-replica values under a multi-device strategy; stacked by ``super_batch``."""
        strategy = strategy_of_caller()
        devices = replicas_lib.replica_devices(strategy)
        count = check_super_batch(super_batch)
        if len(devices) > 1:
            if count is not None:
                raise ValueError(
                    f"super_batch={count} with {len(devices)} replicas: gpuloader does not stack per-replica "
                    "batches; use steps_per_execution=1 under this strategy."
                )
            self._check_replica_split(len(devices))
            return tf_batches(lambda: self._iterate_replicas(strategy, devices))
        return tf_batches(lambda: super_batches(self.iterate("tensorflow"), count, "tensorflow"))

    def _iterate_replicas(self, strategy: Any, devices: list[str]) -> Iterator[Any]:
        """One pass of ``PerReplica`` batches: replica r gets its part, made on its own device.

        With a per-GPU layout built for these replicas (``loader.plan.layout``),
        part r is gathered on GPU r from the data there and never moves.
        Otherwise each batch's rows are split as evenly as possible between the
        replicas, each part gathered into its own buffer where the data is and
        then placed on its replica's device (a copy between devices on GPUs).
        """
        import tensorflow as tf

        count = len(devices)
        pipeline = self._pipeline
        replicas = pipeline.replicas
        if replicas is not None and list(replicas.devices) == list(devices):
            prepare = pipeline.prepare_parts
        else:
            if pipeline.on_gpu:
                self._warn_once(
                    "cross-device", f"the data is on one GPU, so every step the other {count - 1} replicas' "
                    "parts are copied to their GPUs. Build the loader inside strategy.scope() to keep a copy "
                    "(or a share of the rows) on each replica's GPU.", RuntimeWarning,
                )

            def prepare(position: int, epoch: int, shuffled: bool, augmented: bool) -> list[Any]:
                return pipeline.prepare_split(position, epoch, shuffled, count, augmented)

        for batch_parts in self._pass_of(prepare):
            per_replica = []
            for device, prepared in zip(devices, batch_parts):
                tensors = pipeline.to_consumer(prepared, "tensorflow")
                with tf.device(device):
                    per_replica.append(tf.nest.map_structure(tf.identity, tensors))
            yield strategy.experimental_distribute_values_from_function(
                lambda context, values=per_replica: values[context.replica_id_in_sync_group % count]
            )

    def _check_replica_split(self, count: int) -> None:
        remainder = 0 if self._config.drop_remainder else self._pipeline.n % self._config.batch_size
        smallest = remainder or self._config.batch_size
        if smallest < count:
            raise ValueError(
                f"the last batch has {smallest} sample(s) for {count} replicas, so a replica would get an "
                "empty batch; pass drop_remainder=True or a batch_size that leaves at least one sample per "
                "replica in the last batch."
            )
