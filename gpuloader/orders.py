"""Each epoch's order of one loader: the seed that keys them, computed once each, the next one ahead.

The order of epoch ``e`` is ``permutation(xp, n, order_seed, e)``
(:mod:`gpuloader.permutation`), where ``order_seed`` is the worker's seed
derived from the loader's (:meth:`gpuloader.config.LoaderConfig.order_seed`).
:class:`Orders` owns the loader's current seed (``set_state`` replaces it with
the state's) and the orders computed for it.

Cost: one permutation per epoch (O(n log n)) in the namespace that holds the
data, and one int64 per sample for the order kept; on the host the next
epoch's order is computed on a background thread while the current one is served.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

from gpuloader.config import LoaderConfig
from gpuloader.permutation import permutation
from gpuloader.prefetch import in_background


class Orders:
    """The orders of one loader's epochs, in ``xp``, keyed by its current seed.

    Args:
        xp: the namespace the orders are computed in (where the data lives).
        n: samples this loader holds.
        config: the loader's configuration (its seed, shard and ``shuffle``).
    """

    def __init__(self, xp: Any, n: int, config: LoaderConfig) -> None:
        self._xp = xp
        self._n = n
        self._config = config  # its seed is the current one: replaced by reseed
        self._cache: tuple[tuple[int, int], Any] | None = None
        self._ahead: tuple[tuple[int, int], Future[Any]] | None = None
        self._lock = threading.Lock()

    @property
    def seed(self) -> int:
        """The loader's seed now (its configured one until ``set_state`` gives another)."""
        return self._config.seed

    @property
    def order_seed(self) -> int:
        """This worker's seed, derived from :attr:`seed`: what keys its orders and its GPUs' shares."""
        return self._config.order_seed()

    @property
    def shuffle(self) -> bool:
        return self._config.shuffle

    def reseed(self, seed: int) -> None:
        """Key the orders by ``seed`` from now on; what was computed for the old seed is dropped."""
        self._config = dataclasses.replace(self._config, seed=seed)
        self._cache = self._ahead = None

    def order(self, epoch: int) -> Any:
        """The permutation of ``epoch`` (None when not shuffling), computed once and kept.

        On the host the next epoch's permutation is then computed on a
        background thread (NumPy's sort releases the GIL), so moving to the
        next epoch does not wait for it. Cost: one more int64 per sample.
        """
        if not self._config.shuffle:
            return None
        cached = self._cache  # read once: another thread may replace it, never mutate it
        key = (self.seed, epoch)
        if cached is not None and cached[0] == key:
            return cached[1]
        with self._lock:
            if self._cache is None or self._cache[0] != key:
                ahead, self._ahead = self._ahead, None
                order = ahead[1].result() if ahead is not None and ahead[0] == key else self._permute(key)
                self._cache = (key, order)
                if self._xp is np:
                    following = (key[0], epoch + 1)
                    self._ahead = (following, in_background(self._permute, following))
            return self._cache[1]

    @property
    def ahead(self) -> tuple[tuple[int, int], Future[Any]] | None:
        """``((seed, epoch), future)`` of the order being computed ahead, or None."""
        return self._ahead

    def _permute(self, key: tuple[int, int]) -> Any:
        seed, epoch = key
        return permutation(self._xp, self._n, self._config.order_seed(seed), epoch)
