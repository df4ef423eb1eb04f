"""Which batches each pass over the data serves: the training stream, its state and its rule.

The order of epoch ``e`` is ``permutation(seed, e)`` (see :mod:`gpuloader.permutation`).
Training reads one stream: epoch 0's batches in its order, then epoch 1's, and
so on; the schedule keeps the position in it (the epoch, and how many of its
batches training has taken). The rule:

- **Training** (Keras ``fit``, a custom loop, ``for batch in loader``) takes the
  stream's next batches. A pass starts where the stream stands and ends where
  that epoch's order ends, so an epoch's samples are all trained once, in
  order, before the next epoch starts: a loop of short ``fit(steps_per_epoch=k)``
  calls goes on where the previous one stopped, and a pass that starts inside
  an order is shorter (Keras is told its length).
- **Where a fit starts**: a record written with the fit's ``BackupAndRestore``
  checkpoint (:mod:`gpuloader.resume`) when Keras resumes from one; else the
  position set by ``set_epoch``/``set_state``; else, for a fit starting at
  Keras epoch 0, the stream's position; else (``initial_epoch = k > 0`` and
  nothing recorded) epoch ``k`` from its first batch, with a warning. Nothing
  is inferred from the model: no optimizer step count, no Keras epoch
  arithmetic.
- **Evaluation and prediction** passes serve the input order and move nothing;
  Keras's one-batch peek to build the model moves nothing either.
- ``loader[i]`` serves batch ``i`` of the current epoch (inside ``fit``: of the
  epoch the Keras epoch trains, and so does ``for batch in loader`` in a fit's
  callback, moving nothing; inside ``evaluate``/``predict``, from a callback
  or a metric: what those passes serve) and never moves the stream, except that giving
  out every batch of an epoch outside Keras finishes it (the ``Sequence``
  contract: the same index gives the same batch until ``on_epoch_end``).

State (:meth:`EpochSchedule.get_state`) names the stream's next batch (epoch and
position), so neither a finished epoch nor the trained part of one is replayed.

The orders themselves (keyed by the seed, computed once, the next one ahead)
are :mod:`gpuloader.orders`; what a state must name and the checks of a state
given back are :func:`check_state`. No Keras import: the Keras frame is read by :mod:`gpuloader._keras_compat` and
passed in as a :class:`~gpuloader._keras_compat.KerasCall`.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuloader.config import LoaderConfig
from gpuloader.orders import Orders
from gpuloader.permutation import MAX_SEED

if TYPE_CHECKING:  # a value read by gpuloader._keras_compat; importing it here would import Keras
    from gpuloader._keras_compat import KerasCall

STATE_FORMAT = "gpuloader.Loader/3"
#: The state keys that must match for a state to replay this loader's batches.
SIGNATURE_KEYS = (
    "num_samples", "batch_size", "shuffle", "drop_remainder", "num_shards", "shard_index", "inputs", "augment",
)
#: Epochs are 64-bit keys of the permutation: epoch 2**64 would silently replay epoch 0.
MAX_EPOCH = 2**64 - 1


def state_signature(config: LoaderConfig, num_samples: int, inputs: list[str], augment: Any) -> dict[str, Any]:
    """The values of :data:`SIGNATURE_KEYS` for a loader of ``config`` over ``num_samples`` samples.

    ``inputs``: each input's dtype and sample shape; ``augment``: the augmentation's description.
    """
    values = {**{key: getattr(config, key) for key in SIGNATURE_KEYS if hasattr(config, key)},
              "num_samples": num_samples, "inputs": inputs, "augment": augment}
    return {key: values[key] for key in SIGNATURE_KEYS}


@dataclass
class Pass:
    """One iteration over batches ``start .. start + length - 1`` of ``epoch``'s order.

    Two flags, two questions: ``moves_stream`` (a training pass: each batch
    handed out moves the stream on, and the last one finishes the epoch) and
    ``augmented`` (the batches get the augmentation ops: what training sees,
    Keras's build peek included; evaluation and prediction see the data as it is).
    """

    epoch: int
    start: int
    length: int
    shuffled: bool
    moves_stream: bool
    augmented: bool
    served: int = 0
    started: bool = False
    in_fit: bool = False


@dataclass(frozen=True)
class Start:
    """Where a resumed fit starts, read from a record (:mod:`gpuloader.resume`)."""

    epoch: int
    position: int
    first_length: int | None = None  # the resumed Keras epoch's remaining steps (exact mid-epoch resume)


class EpochSchedule:
    """The training stream of one loader, the passes over it, and each epoch's order.

    Args:
        orders: each epoch's order, and the seed (``set_state`` reseeds it).
        steps: batches per epoch.
        signature: the values of :data:`SIGNATURE_KEYS` for this loader.
        seed_owns_rows: the seed also chose which rows this loader holds
            (worker or GPU shards), so a state with another seed is refused.
    """

    def __init__(self, orders: Orders, steps: int, signature: Mapping[str, Any], seed_owns_rows: bool) -> None:
        self._orders = orders
        self._steps = steps
        self._signature = dict(signature)
        self._seed_owns_rows = seed_owns_rows
        self._epoch = 0
        self._position = 0  # batches of the current epoch training took; == steps: the epoch is finished
        self._served: set[int] = set()  # positions of the current epoch given out through loader[i]
        self._pinned = False  # set_epoch/set_state chose where the next fit starts
        self._moved_outside_fit = False  # the position inside the epoch comes from iteration outside fit
        self._fit: weakref.ref[Any] | None = None  # the Keras fit in progress (its epoch iterator)
        self._fit_epochs: dict[int, tuple[int, int, int]] = {}  # Keras epoch -> (epoch, first position, steps)
        self._pass: Pass | None = None  # the fit's current training pass (planned or running)
        self._first_length: int | None = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------- epochs
    @property
    def seed(self) -> int:
        return self._orders.seed

    @property
    def orders(self) -> Orders:
        """Each epoch's order (:mod:`gpuloader.orders`)."""
        return self._orders

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def signature(self) -> dict[str, Any]:
        """The values of :data:`SIGNATURE_KEYS` (a copy)."""
        return dict(self._signature)

    @property
    def epoch(self) -> int:
        """The epoch ``loader[i]`` serves outside Keras calls."""
        return self._epoch

    def next_batch(self) -> tuple[int, int]:
        """The stream's next batch to train: ``(epoch, position)``, position < steps."""
        return (self._epoch + 1, 0) if self._position >= self._steps else (self._epoch, self._position)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` from its first batch on; the next ``fit`` starts there."""
        self._move_to(check_epoch("set_epoch", epoch), 0)
        self._pinned = True

    def on_epoch_end(self) -> None:
        """Move to the next epoch if the current one finished; otherwise nothing."""
        if self._position >= self._steps:
            self._move_to(self._epoch + 1, 0)

    def _move_to(self, epoch: int, position: int) -> None:
        if (epoch, position) != (self._epoch, self._position):
            self._served = set()
        self._epoch, self._position = epoch, position

    # ------------------------------------------------------------- passes
    def item_pass(self, position: int, call: KerasCall | None) -> Pass:
        """What ``loader[position]`` serves: a one-batch pass; outside Keras, also records the use.

        Inside ``evaluate``/``predict`` (a callback or metric of theirs, validation
        inside ``fit`` included) the batch of those passes: the input order, not
        augmented. Inside ``fit``, the epoch that Keras epoch trains, augmented.
        """
        if call is not None and call.kind in ("evaluate", "predict"):
            return Pass(self._epoch, position, 1, shuffled=False, moves_stream=False, augmented=False)
        return Pass(self._epoch_for_item(position, call), position, 1, self._orders.shuffle, moves_stream=False,
                    augmented=True)

    def _epoch_for_item(self, position: int, call: KerasCall | None) -> int:
        if call is not None:
            if call.kind == "fit" and call.epoch is not None:
                self._enter_fit(call)
                if call.epoch in self._fit_epochs:
                    return self._fit_epochs[call.epoch][0]
                running = self._pass
                if running is not None and running.started and running.served < running.length:
                    return running.epoch
                return self.next_batch()[0]
            return self._epoch
        self._served.add(position)
        if len(self._served) == self._steps:
            self._position = self._steps
        return self._epoch

    def plan_fit_epoch(self, call: KerasCall) -> int | None:
        """Keras begins epoch ``call.epoch`` of a fit: the length of the pass it starts, or None if it goes on.

        Called before Keras computes the epoch's steps (its ``EpochIterator``
        calls the adapter's ``on_epoch_begin`` first), so Keras can be told.
        """
        self._enter_fit(call)
        running = self._pass
        goes_on = (
            running is not None and running.started and running.served < running.length
            and call.steps_per_epoch is not None  # Keras keeps its iterator between epochs only then
        )
        if goes_on:
            assert running is not None
            first = running.start + running.served
            self._note_keras_epoch(call, running.epoch, first, running.start + running.length - first)
            return None
        if running is None or running.started:
            running = self._plan(call)
        return running.length

    def begin_pass(self, call: KerasCall | None) -> Pass:
        """Start an iteration: which batches it serves and whether serving them moves the stream."""
        if call is not None and call.kind in ("evaluate", "predict"):
            return Pass(self._epoch, 0, self._steps, shuffled=False, moves_stream=False, augmented=False)
        if call is not None and call.epoch is None:  # fit reading a batch to build the model: what fit trains on
            return Pass(self._epoch, 0, self._steps, self._orders.shuffle, moves_stream=False, augmented=True)
        if call is not None:  # fit
            self._enter_fit(call)
            planned = self._pass
            if planned is None or planned.started:
                planned = self._plan(call)
            planned.started = True
            return planned
        epoch, position = self.next_batch()
        self._move_to(epoch, position)
        return Pass(epoch, position, self._steps - position, self._orders.shuffle, moves_stream=True, augmented=True,
                    started=True)

    def look_pass(self, call: KerasCall) -> Pass:
        """``for batch in loader`` inside a fit's epoch (a callback looking at the data): the epoch that Keras epoch
        trains, whole and augmented, as ``loader[i]`` serves it there; the stream does not move, so the fit's own
        passes keep every batch."""
        return Pass(self._epoch_for_item(0, call), 0, self._steps, self._orders.shuffle, moves_stream=False,
                    augmented=True)

    def served(self, running: Pass) -> None:
        """A training pass handed out its next batch: the stream moves past it."""
        running.served += 1
        if running.moves_stream and running.epoch == self._epoch:
            self._position = max(self._position, running.start + running.served)
            self._moved_outside_fit = not running.in_fit

    def _plan(self, call: KerasCall) -> Pass:
        epoch, position = self.next_batch()
        self._move_to(epoch, position)
        length = self._steps - position
        if self._first_length is not None:
            length, self._first_length = min(length, self._first_length), None
        self._pass = Pass(epoch, position, length, self._orders.shuffle, moves_stream=True, augmented=True,
                          in_fit=True)
        self._note_keras_epoch(call, epoch, position, length)
        return self._pass

    def _note_keras_epoch(self, call: KerasCall, epoch: int, first: int, left_in_pass: int) -> None:
        if call.epoch is not None and call.epoch not in self._fit_epochs:
            steps = min(call.steps_per_epoch or left_in_pass, left_in_pass)
            self._fit_epochs[call.epoch] = (epoch, first, steps)

    def _enter_fit(self, call: KerasCall) -> None:
        """The first time a fit shows itself: decide where it starts (see the module's rule)."""
        if self._fit is not None and self._fit() is call.token:
            return
        from gpuloader import resume  # imports Keras's callbacks

        self._fit, self._fit_epochs, self._pass, self._first_length = weakref.ref(call.token), {}, None, None
        start = resume.fit_start(call, self)
        if start is not None:
            self._move_to(start.epoch, start.position)
            self._first_length = start.first_length
        elif self._pinned:
            pass
        elif call.initial_epoch == 0:
            epoch, position = self.next_batch()
            if position and self._moved_outside_fit:
                self._warn_once("outside", (
                    f"fit starts at batch {position} of epoch {epoch}: an iteration outside fit took the first "
                    f"{position} batches of that epoch, so this fit trains the other {self._steps - position} "
                    f"first. To train epoch {epoch} from its first batch, call loader.set_epoch({epoch}) "
                    "before fit."
                ))
        else:
            self._move_to(check_epoch("initial_epoch", call.initial_epoch), 0)
            self._warn_once("no record", (
                f"fit resumes at epoch {call.initial_epoch} and nothing records where this loader stood, so it "
                f"trains epoch {call.initial_epoch}'s order from its first batch (order = Keras epoch + the "
                "epoch set by set_epoch/set_state). If this run continues an earlier one, resume it through "
                "keras.callbacks.BackupAndRestore or gpuloader.BackupAndRestore (the loader keeps a record "
                "next to its checkpoint), or call loader.set_state(state) with a state saved by "
                "loader.get_state() before fit."
            ))
        self._pinned = False
        self._moved_outside_fit = False

    def checkpoint(self, call: KerasCall, resumes_at: int) -> dict[str, Any] | None:
        """Where a checkpoint written now (resuming at Keras epoch ``resumes_at``) stands in the stream.

        None if this loader is not the one ``call`` trains on. ``start``: the
        stream position where that Keras epoch starts (or started); ``trained``:
        the position after the last trained batch; ``left``: that Keras
        epoch's remaining steps (None when it has not started).
        """
        if call.epoch is None or self._fit is None or self._fit() is not call.token:
            return None
        if resumes_at == call.epoch + 1 or call.epoch not in self._fit_epochs:
            following = list(self.next_batch())
            return {"start": following, "trained": following, "steps": 0, "left": None}
        epoch, first, steps = self._fit_epochs[call.epoch]
        trained = self._position - first if self._epoch == epoch else 0
        return {"start": [epoch, first], "trained": [epoch, first + trained], "steps": trained,
                "left": steps - trained}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"gpuloader: {message}", RuntimeWarning, stacklevel=5)

    # --------------------------------------------------------------- state
    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable dict naming the stream's next batch (epoch, position) and what decides it."""
        epoch, position = self.next_batch()
        return {"format": STATE_FORMAT, "seed": self.seed, "epoch": epoch, "position": position,
                **self._signature}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Serve exactly the batches from the one ``state`` names; refuse a state of other batches.

        The state's seed replaces the loader's (it decided the orders being resumed).
        """
        seed, epoch, position = check_state(state, self._signature, self._steps, self.seed, self._seed_owns_rows)
        self._orders.reseed(seed)
        self._move_to(epoch, position)
        self._pinned = True

    # ---------------------------------------- kept for the tests until they use public hooks
    def order(self, epoch: int) -> Any:
        return self._orders.order(epoch)

    @property
    def _order_ahead(self) -> Any:
        return self._orders.ahead


def check_state(
    state: Any, signature: Mapping[str, Any], steps: int, current_seed: int, seed_owns_rows: bool
) -> tuple[int, int, int]:
    """``(seed, epoch, position)`` of a state from ``get_state``, or a ValueError naming what does not match.

    A state is refused when it is no gpuloader state, of an older format, lacks
    a key, differs in one of ``signature``'s values (its batches would differ),
    has a seed or epoch outside [0, 2**64) or a position outside ``[0, steps)``,
    or, where the seed chose the rows held (``seed_owns_rows``), another seed.
    """
    if not isinstance(state, Mapping) or "format" not in state:
        raise ValueError(
            f"set_state expects a dict from Loader.get_state() (with format={STATE_FORMAT!r}); "
            f"received {state!r}."
        )
    if state["format"] != STATE_FORMAT:
        raise ValueError(
            f"set_state: the state has format={state['format']!r}, this gpuloader reads {STATE_FORMAT!r}. "
            "A gpuloader.Loader/2 state names neither the position inside its epoch nor the augmentation, so "
            "it cannot say which batches come next. If it was saved between epochs by a loader with the same "
            "arguments, use {**old_state, 'format': " + repr(STATE_FORMAT) + ", 'position': 0, 'augment': "
            "loader.get_state()['augment']}; else take a new state with loader.get_state()."
        )
    missing = [key for key in ("seed", "epoch", "position", *signature) if key not in state]
    if missing:
        raise ValueError(
            f"set_state: the state lacks {missing}; a {STATE_FORMAT} state names all of them, so this one was "
            "edited or truncated. Pass the dict Loader.get_state() returned, unchanged."
        )
    for key, mine in signature.items():
        if state[key] != mine:
            raise ValueError(
                f"set_state: the state was taken from a loader with {key}={state[key]!r}, "
                f"this loader has {key}={mine!r}; its batches would differ. Build the loader "
                "over the same data with the same arguments."
            )
    seed = state["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"set_state: the state has seed={seed!r}; a state's seed must be the int in [0, 2**64) that "
            "decided its orders (None would draw a new one, and the batches would differ). Pass the dict "
            "Loader.get_state() returned."
        )
    seed = int(seed)
    if seed != current_seed and seed_owns_rows:
        raise ValueError(
            f"set_state: the state has seed={seed}, this loader seed={current_seed}; the seed also decided "
            "which rows this loader holds (its shard), so its batches cannot match. Build the loader "
            f"with seed={seed}, then call set_state."
        )
    epoch = check_epoch("set_state", state["epoch"])
    position = state["position"]
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not (
        0 <= position < steps
    ):
        raise ValueError(
            f"set_state: the state has position={position!r}; a position is the number of batches of its "
            f"epoch already trained, an int in [0, {steps}) for this loader of {steps} batches. "
            "Pass the dict Loader.get_state() returned."
        )
    return int(seed), epoch, int(position)


def check_epoch(name: str, epoch: Any) -> int:
    """An epoch: an int in [0, 2**64) (the permutation's key is 64 bits wide)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(
            f"{name}: epoch must be an int in [0, 2**64); received {epoch!r}. Each epoch's order is keyed by a "
            "64-bit epoch, so a larger one would silently replay the order of epoch mod 2**64. Pass the epoch "
            "to train, counted from 0."
        )
    return int(epoch)
