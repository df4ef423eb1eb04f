"""Which order each pass over the data serves: the epoch schedule, its state and its rule.

The order of epoch ``e`` is ``permutation(seed, e)`` (see :mod:`gpuloader.permutation`),
so the whole question is which ``e`` a pass serves. The rule:

- **Training inside Keras ``fit``** follows the epoch Keras is training. A fit
  that starts at epoch 0 continues from this loader's next epoch (so a loop of
  ``fit(loader, epochs=1)`` calls sees a new order each time); a fit that
  resumes at ``initial_epoch = k > 0`` (given, or set by ``BackupAndRestore``)
  trains Keras epoch ``k`` on the order an uninterrupted run would have used:
  the epochs the model's optimizer has stepped through (its step count is
  restored with the weights, so a resumed second training phase continues
  where it was), else the numbering of the previous fit (order ``k`` in a new
  process). After ``set_epoch``/``set_state`` the next fit's first epoch serves
  the epoch that was set. With ``steps_per_epoch`` slicing a pass into ``S``
  Keras epochs, one order serves ``S`` consecutive Keras epochs.
- **Evaluation and prediction** passes serve the input order and move nothing.
- **Anything else** (a custom loop over an iterator or ``for batch in loader``,
  or ``loader[i]`` for every batch): an epoch counts as finished when an
  iterator reached its last batch or every batch went out through
  ``loader[i]``; ``on_epoch_end()`` or the next iterator then moves to the next
  epoch. ``loader[i]`` itself never moves it (the ``Sequence`` contract: the
  same index gives the same batch until ``on_epoch_end``). A peek finishes nothing.

State (:meth:`EpochSchedule.get_state`) names the epoch the next pass serves,
so a finished but not yet advanced epoch is never replayed.

Cost: one permutation per epoch (O(n log n)) on the device that holds the data;
on the host the next epoch's is computed on a background thread ahead of time.
No Keras import: the Keras frame is read by :mod:`gpuloader._keras_compat` and
passed in as a :class:`~gpuloader._keras_compat.KerasCall`.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from gpuloader import sharding
from gpuloader._keras_compat import KerasCall
from gpuloader.inputs import check_non_negative_int, check_seed
from gpuloader.permutation import permutation
from gpuloader.prefetch import in_background

STATE_FORMAT = "gpuloader.Loader/2"
#: The state keys that must match for a state to replay this loader's batches.
SIGNATURE_KEYS = (
    "num_samples", "batch_size", "shuffle", "drop_remainder", "num_shards", "shard_index", "inputs", "augment",
)
# Keys that states saved before they existed lack: such a state is not checked on them.
_LATER_KEYS = ("augment",)


class EpochSchedule:
    """The epoch each pass serves, and each epoch's order, for one loader.

    Args:
        xp: the namespace the order is computed in (where the data lives).
        seed: the loader's seed.
        shuffle: False serves the input order in every pass.
        steps: batches per pass.
        signature: the values of :data:`SIGNATURE_KEYS` for this loader.
        seed_owns_rows: the seed also chose which rows this loader holds
            (worker or GPU shards), so a state with another seed is refused.
    """

    def __init__(
        self, xp: Any, seed: int, shuffle: bool, steps: int, signature: Mapping[str, Any], seed_owns_rows: bool
    ) -> None:
        self._xp = xp
        self._seed = seed
        self._shuffle = shuffle
        self._steps = steps
        self._signature = dict(signature)
        self._seed_owns_rows = seed_owns_rows
        self._epoch = 0
        self._finished = False  # the current epoch went through whole (iterator or every loader[i])
        self._served: set[int] = set()  # positions of the current epoch given out through loader[i]
        self._pinned = False  # set_epoch/set_state chose the epoch the next fit starts at
        self._fit: weakref.ref[Any] | None = None  # the Keras fit whose numbering is in force
        self._fit_offset = 0  # order index = Keras epoch // slices + offset, for that fit
        self._warned_mid_pass = False
        self._order_cache: tuple[tuple[int, int], Any] | None = None
        self._order_ahead: tuple[tuple[int, int], Future[Any]] | None = None
        self._order_lock = threading.Lock()

    # ------------------------------------------------------------- epochs
    @property
    def seed(self) -> int:
        return self._seed

    @property
    def signature(self) -> dict[str, Any]:
        """The values of :data:`SIGNATURE_KEYS` (a copy)."""
        return dict(self._signature)

    @property
    def epoch(self) -> int:
        """The epoch ``loader[i]`` serves outside Keras calls."""
        return self._epoch

    @property
    def next_epoch(self) -> int:
        """The epoch the next training pass serves (the current one unless it finished)."""
        return self._epoch + 1 if self._finished else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` from now on; the next ``fit`` starts its first epoch on it."""
        self._move_to(check_non_negative_int("epoch", epoch))
        self._pinned = True

    def on_epoch_end(self) -> None:
        """Move to the next epoch if the current one finished; otherwise nothing."""
        if self._finished:
            self._move_to(self._epoch + 1)

    def epoch_for_item(self, position: int, call: KerasCall | None) -> int:
        """The epoch ``loader[position]`` serves; outside Keras, also records the use."""
        if call is not None:
            return self._fit_epoch(call) if call.kind == "fit" and call.epoch is not None else self._epoch
        self._served.add(position)
        if len(self._served) == self._steps:
            self._finished = True
        return self._epoch

    def begin_pass(self, call: KerasCall | None) -> tuple[int, bool, bool]:
        """Start an iteration over every batch: ``(epoch, shuffled, counts)``.

        ``counts`` says whether reaching the last batch finishes the epoch
        (training passes and custom loops; not evaluation, prediction or the
        one-batch peek Keras takes to build a model).
        """
        if call is not None and call.kind in ("evaluate", "predict"):
            return self._epoch, False, False
        if call is not None:  # fit
            if call.epoch is None:  # Keras reading a batch to build the model, before the epochs start
                return self._epoch, self._shuffle, False
            epoch = self._fit_epoch(call)
            if epoch != self._epoch:
                self._move_to(epoch)
            self._finished = False
            return epoch, self._shuffle, True
        if self._finished:
            self._move_to(self._epoch + 1)
        return self._epoch, self._shuffle, True

    def finish_pass(self, epoch: int) -> None:
        """An iteration of ``epoch`` reached its last batch."""
        if epoch == self._epoch:
            self._finished = True

    def _move_to(self, epoch: int) -> None:
        self._epoch = epoch
        self._finished = False
        self._served = set()

    def _fit_epoch(self, call: KerasCall) -> int:
        """The order index of Keras epoch ``call.epoch`` of the fit ``call`` belongs to."""
        slices = 1
        if call.steps_per_epoch and call.steps_per_epoch < self._steps:
            slices = math.ceil(self._steps / call.steps_per_epoch)
        current = self._fit() if self._fit is not None else None
        if current is None or current is not call.token:
            first = call.initial_epoch // slices
            if self._pinned:
                self._fit_offset = self.next_epoch - first
            elif call.initial_epoch == 0:
                self._fit_offset = self.next_epoch
            elif steps := call.optimizer_steps():
                # A resumed fit: the optimizer's step count (restored with the weights by BackupAndRestore)
                # says how many epochs the model trained before this one, whatever this process did before.
                per_epoch = min(call.steps_per_epoch or self._steps, self._steps)
                self._fit_offset = max(steps // per_epoch // slices - first, 0)
            # else (an optimizer that never stepped): the numbering of the previous fit, 0 in a new process
            self._pinned = False
            self._fit = weakref.ref(call.token)
            if slices > 1 and call.initial_epoch % slices and not self._warned_mid_pass:
                self._warned_mid_pass = True
                warnings.warn(
                    f"gpuloader: fit resumes at epoch {call.initial_epoch} with steps_per_epoch="
                    f"{call.steps_per_epoch}, so a pass over the data ({self._steps} batches) spans {slices} "
                    "Keras epochs and this one starts in the middle of a pass; the loader serves that pass "
                    "from its first batch, so the resumed run sees other batches than an uninterrupted one "
                    "would. For an exact resume use steps_per_epoch=None (one pass per epoch).",
                    RuntimeWarning, stacklevel=4,
                )
        return call.epoch // slices + self._fit_offset

    # --------------------------------------------------------------- state
    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable dict naming the epoch the next pass serves."""
        return {"format": STATE_FORMAT, "seed": self._seed, "epoch": self.next_epoch, **self._signature}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Serve exactly the batches of the epoch ``state`` names; refuse a state of other batches.

        The state's seed replaces the loader's (it decided the orders being resumed).
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"set_state expects a dict from Loader.get_state() with format={STATE_FORMAT!r}; "
                f"received {state!r}."
            )
        for key, mine in self._signature.items():
            if key in _LATER_KEYS and key not in state:
                continue
            if state.get(key) != mine:
                raise ValueError(
                    f"set_state: the state was taken from a loader with {key}={state.get(key)!r}, "
                    f"this loader has {key}={mine!r}; its batches would differ. Build the loader "
                    "over the same data with the same arguments."
                )
        seed = check_seed(state.get("seed"))
        if seed != self._seed and self._seed_owns_rows:
            raise ValueError(
                f"set_state: the state has seed={seed}, this loader seed={self._seed}; the seed also decided "
                "which rows this loader holds (its shard), so its batches cannot match. Build the loader "
                f"with seed={seed}, then call set_state."
            )
        epoch = check_non_negative_int("epoch", state.get("epoch"))
        self._seed = seed
        self._order_cache = self._order_ahead = None
        self.set_epoch(epoch)

    # --------------------------------------------------------------- orders
    def order(self, epoch: int) -> Any:
        """The permutation of ``epoch`` (None when not shuffling), computed once and kept.

        On the host the next epoch's permutation is then computed on a
        background thread (NumPy's sort releases the GIL), so moving to the
        next epoch does not wait for it. Cost: one more int64 per sample.
        """
        if not self._shuffle:
            return None
        cached = self._order_cache  # read once: another thread may replace it, never mutate it
        key = (self._seed, epoch)
        if cached is not None and cached[0] == key:
            return cached[1]
        with self._order_lock:
            if self._order_cache is None or self._order_cache[0] != key:
                ahead, self._order_ahead = self._order_ahead, None
                order = ahead[1].result() if ahead is not None and ahead[0] == key else self._permute(key)
                self._order_cache = (key, order)
                if self._xp is np:
                    following = (self._seed, epoch + 1)
                    self._order_ahead = (following, in_background(self._permute, following))
            return self._order_cache[1]

    def _permute(self, key: tuple[int, int]) -> Any:
        seed, epoch = key
        shard_seed = sharding.shard_seed(seed, self._signature["shard_index"])
        return permutation(self._xp, self._signature["num_samples"], shard_seed, epoch)
