"""Keyed random words: each sample's draws as a pure function of (seed, epoch, sample id, op, word)."""

from __future__ import annotations

import functools
from typing import Any

from gpuloader.permutation import _MASK64, _mix_array, _mix_int, epoch_keys

# Separates the augmentation's words from the permutation's keys (ASCII "augment!").
_AUGMENT_DOMAIN = 0x6175676D656E7421
_STREAM_STEP = 0x9E3779B97F4A7C15  # streams' lanes step apart by the golden ratio (then mixed)
_PROTOCOL = "an op is an object with draws (int >= 0) and apply(images, bits, xp); see gpuloader.augment"


@functools.lru_cache(maxsize=64)
def _word_keys(seed: int, epoch: int, draws: tuple[int, ...], stream: int = 0) -> tuple[list[int], list[int]]:
    """The two round keys of every word of every op (``draws[k]`` words for op ``k``), ops in order.

    ``stream`` (an int >= 0, see :class:`gpuloader.augment.Stream`) gives other keys; stream 0 is the default.
    """
    first, second = epoch_keys(seed, epoch)
    adds, xors = [], []
    for op_index, count in enumerate(draws):
        for word in range(count):
            lane = _mix_int(_AUGMENT_DOMAIN ^ ((op_index << 32) | word))
            if stream:
                lane = _mix_int((lane + stream * _STREAM_STEP) & _MASK64)
            adds.append(_mix_int(first ^ lane))
            xors.append(_mix_int((second + lane) & _MASK64))
    return adds, xors


def _words(xp: Any, sample_ids: Any, seed: int, epoch: int, draws: tuple[int, ...], stream: int = 0) -> Any:
    """The ``(n, sum(draws))`` uint64 words of a list of ops, op ``k``'s in its own ``draws[k]`` columns."""
    n, total = sample_ids.shape[0], sum(draws)
    if total == 0:
        return xp.zeros((n, 0), dtype=xp.uint64)
    adds, xors = _word_keys(seed, epoch, draws, stream)
    ids = xp.reshape(xp.astype(sample_ids, xp.uint64), (n, 1))
    keys = _mix_array(xp, ids + xp.reshape(xp.asarray(adds, dtype=xp.uint64), (1, total)))
    return _mix_array(xp, keys ^ xp.reshape(xp.asarray(xors, dtype=xp.uint64), (1, total)))


def sample_words(
    xp: Any, sample_ids: Any, seed: int, epoch: int, op_index: int, count: int, stream: int = 0
) -> Any:
    """The ``(n, count)`` uint64 random words of the op at ``op_index`` for each sample of ``sample_ids``.

    Row ``i`` is a pure function of ``(seed, epoch, sample_ids[i], op_index)``:
    the same sample gets the same words in any batch, on any backend. These
    are the ``bits`` that :func:`apply_augment` gives that op.

    Args:
        xp: the array namespace of ``sample_ids``.
        sample_ids: 1-d integer array of global sample indices (>= 0).
        seed: integer in [0, 2**64).
        epoch: integer >= 0.
        op_index: the op's position in its list (>= 0).
        count: number of words per sample (>= 0).
        stream: the list's stream (:class:`gpuloader.augment.Stream`; 0 by default).
    """
    return _words(xp, sample_ids, seed, epoch, (0,) * op_index + (count,), stream)


def integers(words: Any, high: int, xp: Any) -> Any:
    """int64 values in ``[0, high)`` from uint64 ``words`` (their top 32 bits; ``1 <= high <= 2**32``).

    ``(words >> 32) * high >> 32``: exact integer arithmetic, identical on every backend.
    """
    return xp.astype(((words >> 32) * high) >> 32, xp.int64)


def uniform(words: Any, xp: Any) -> Any:
    """float32 values in ``[0, 1)`` from uint64 ``words`` (their top 24 bits, exactly representable)."""
    return xp.astype(words >> 40, xp.float32) * (2.0**-24)
