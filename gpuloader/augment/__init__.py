"""Deterministic image augmentation keyed by (seed, epoch, sample), run where the data lives.

``apply_augment(ops, images, sample_ids, seed, epoch, xp)`` applies a list of
ops, in order, to a gathered batch of images: ``(n, H, W, C)`` channels-last or
``(n, H, W)``, in the array namespace that holds it (NumPy on the host, CuPy on
the GPU, ``array_api_strict`` in the tests), in the batch's dtype (uint8 stays
uint8). It returns a fresh array of the same shape and dtype.

The built-in ops:

- ``RandomCrop(padding, mode="reflect" | "constant", fill=None)``: pad by
  ``padding`` pixels on each side (a reflection without repeating the edge, as
  ``numpy.pad(mode="reflect")``; or ``fill``, default 0) and crop back to
  ``H x W`` at a random offset: a translation by ``(dy, dx)``, each uniform in
  ``[-padding, padding]``. Output pixel ``(y, x)`` is padded-image pixel
  ``(y + padding + dy, x + padding + dx)``.
- ``RandomFlip()``: a horizontal flip (``x -> W - 1 - x``) with probability 1/2.
- ``Cutout(size, fill=0)``: one ``size x size`` square set to ``fill``, centred
  at a pixel ``(cy, cx)`` uniform over the image, clipped at the border: rows
  ``[cy - size // 2, cy - size // 2 + size)`` and the same for columns.

Keyed randomness
----------------
Every random value is a pure function of ``(seed, epoch, sample id, op position
in the list, word number)``, where the sample id is the row's index in the whole
dataset. So a sample gets the same augmentation whatever its batch, the batch
size, shuffling, worker threads, device or shard layout, and a resumed epoch
replays it bit for bit; two ``RandomFlip()`` in one list draw independently.
Word ``j`` of op ``k`` for sample ``i`` is two keyed rounds of the SplitMix64
finaliser of :mod:`gpuloader.permutation` (the same hash that orders the
epochs), with round keys derived from :func:`gpuloader.permutation.epoch_keys`
and ``(k, j)``::

    word = mix(mix(i + a[k, j]) ^ b[k, j])        # uint64, wrapping arithmetic

It uses only integer array-API operations, so NumPy, CuPy and any other
namespace produce identical words, hence identical bytes.

Writing an op of your own
-------------------------
An op is any object with:

- ``draws``: the number of random 64-bit words it needs per sample (an int >= 0);
- ``apply(images, bits, xp) -> images``: ``images`` is the batch as
  ``(n, H, W, C)`` (a ``(n, H, W)`` batch arrives as ``(n, H, W, 1)`` and is
  reshaped back afterwards), ``bits`` a ``(n, draws)`` uint64 array whose row
  ``i`` holds sample ``i``'s words, ``xp`` the array namespace. Return a new
  array of the same shape and dtype; do not modify ``images`` nor return a view
  of it. Use only ``xp`` functions (array-API operations) so it runs on the host
  and on the GPU;
- optionally ``check(shape, dtype, name)``, called by :func:`check_augment` at
  construction with the whole input's shape (``(n, H, W)`` or ``(n, H, W, C)``),
  its NumPy dtype and its name; raise ``ValueError`` (or ``TypeError``) naming
  the rule, the value and the fix.

:func:`integers` and :func:`uniform` turn words into values the same way on
every backend. Subclassing :class:`AugmentOp` is optional. A brightness jitter::

    class Brightness(augment.AugmentOp):
        draws = 1

        def __init__(self, delta):
            self.delta = delta

        def apply(self, images, bits, xp):
            shift = (2 * augment.uniform(bits[:, 0], xp) - 1) * self.delta  # (n,) float32
            out = xp.astype(images, xp.float32) + xp.reshape(shift, (-1, 1, 1, 1))
            return xp.astype(xp.clip(out, 0.0, 255.0), images.dtype)

Cost
----
The words: about 10 integer operations on ``n x sum(draws)`` uint64 values per
batch. In a namespace other than NumPy (CuPy) each built-in op is one or two
passes over the batch through array-API calls: ``RandomCrop`` one ``take`` over
flat pixel indices (plus a ``where`` for ``mode="constant"``), ``RandomFlip`` a
``flip`` and a ``where``, ``Cutout`` a ``where`` against a mask.

On the host (``xp`` is NumPy) the built-in ops take a faster path that gives the
same bytes (tests/test_augment.py checks it against the array-API path and
``array_api_strict``). A crop, with a flip next to it in the list fused into it:
a ``take`` of whole image rows (the vertical shift, samples sorted by flip and
horizontal offset), one strided pass per channel over the flipped samples (the
mirror: the only pass that moves single values, over half the batch on
average), one slice copy per (flip, offset) group for the kept columns, the
``|dx|`` border columns (reflected pixels copied a column at a time, or runs of
the unflipped image, or ``fill``), and a ``take`` back to the batch order. A
flip alone: the same mirror pass. Cutout: one indexed write of four
overlapping blocks per square. The first op writes a fresh 64-byte-aligned
buffer (what the hand-off to TensorFlow needs; or the batch itself with
``overwrite=True``), the next ones write into it; intermediate buffers are kept
per thread from batch to batch (up to about 3 batches' worth: fresh pages cost
more than these copies). NumPy cannot move 3-byte pixels in bulk, so on the
host the mirror alone costs about as much as gathering the batch.

Measured (bench/augment.py, this project's 2 shared CPU cores, 50000 x 32 x 32
x 3 uint8, batch 512, medians of 2 rounds): a plain gathered epoch 22.8 ms;
with ``RandomCrop(4)``, ``RandomFlip()``, ``Cutout(8)`` 121 ms (5.3x: the
issue's target of 2x is not met on the host); the array-API path on NumPy
1.25 s; tf.data with per-sample stateless crop and flip 2.16 s (17.9x slower);
Keras ``RandomTranslation`` and ``RandomFlip`` per batch 3.59 s (29.7x slower).

The modules: :mod:`~gpuloader.augment.keyed` (the words), :mod:`~gpuloader.augment.ops` (the ops and
their array-API path), :mod:`~gpuloader.augment.apply` (checking and applying a list),
``_host`` (the NumPy fast path).
"""

from __future__ import annotations

from gpuloader.augment.apply import apply_augment, check_augment
from gpuloader.augment.keyed import integers, sample_words, uniform
from gpuloader.augment.ops import AugmentOp, Cutout, RandomCrop, RandomFlip

__all__ = [
    "AugmentOp",
    "Cutout",
    "RandomCrop",
    "RandomFlip",
    "apply_augment",
    "check_augment",
    "integers",
    "sample_words",
    "uniform",
]
