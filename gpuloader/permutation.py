"""Each epoch's sample order, as a pure function of (seed, epoch).

The order is the argsort of a keyed 64-bit hash of every sample index. The hash
is a bijection on uint64 (two rounds of the SplitMix64 finaliser, keyed by
values derived from the seed and the epoch), so no two samples share a key, the
sort has a single answer whatever the sorting algorithm, and NumPy, CuPy and any
other array-API namespace produce the bit-identical order. Only array-API
integer operations are used: ``arange``, ``astype``, ``+``, ``^``, ``>>``, ``*``
and ``argsort``.

Cost: O(n log n) per epoch, on the device that holds the data; 8 bytes of keys
and 8 bytes of indices per sample while it runs.
"""

from __future__ import annotations

from typing import Any

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
MAX_SEED = _MASK64


def _mix_int(value: int) -> int:
    """SplitMix64 finaliser on a Python int (wrapping at 64 bits)."""
    value &= _MASK64
    value = ((value ^ (value >> 30)) * _MUL1) & _MASK64
    value = ((value ^ (value >> 27)) * _MUL2) & _MASK64
    return value ^ (value >> 31)


def _mix_array(xp: Any, keys: Any) -> Any:
    """The same finaliser on a uint64 array; multiplication wraps modulo 2**64."""
    keys = keys ^ (keys >> 30)
    keys = keys * _MUL1
    keys = keys ^ (keys >> 27)
    keys = keys * _MUL2
    return keys ^ (keys >> 31)


def epoch_keys(seed: int, epoch: int) -> tuple[int, int]:
    """The two 64-bit round keys for one (seed, epoch)."""
    base = _mix_int(seed + _GOLDEN)
    first = _mix_int(base ^ ((epoch * _GOLDEN) & _MASK64))
    second = _mix_int(first + _GOLDEN)
    return first, second


def permutation(xp: Any, n: int, seed: int, epoch: int) -> Any:
    """Return the int64 order of ``n`` samples for ``(seed, epoch)`` in namespace ``xp``.

    Args:
        xp: an array-API namespace (``numpy``, ``cupy``, ``array_api_strict``).
        n: number of samples, at least 1.
        seed: integer in [0, 2**64).
        epoch: integer, at least 0.

    Returns:
        A 1-d int64 array holding every integer in [0, n) exactly once.
    """
    first, second = epoch_keys(seed, epoch)
    keys = xp.arange(n, dtype=xp.uint64)
    keys = _mix_array(xp, keys + first)
    keys = _mix_array(xp, keys ^ second)
    order = xp.argsort(keys)
    return order if order.dtype == xp.int64 else xp.astype(order, xp.int64)
