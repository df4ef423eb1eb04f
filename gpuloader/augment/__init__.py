"""Deterministic image augmentation keyed by (seed, epoch, sample), run where the data lives.

``apply_augment(ops, images, sample_ids, seed, epoch, xp)`` applies a list of
ops, in order, to a gathered batch of images: ``(n, H, W, C)`` channels-last,
``(n, C, H, W)`` channels-first or ``(n, H, W)``, in the array namespace that
holds it (NumPy on the host, CuPy on the GPU, ``array_api_strict`` in the
tests). It returns a fresh array of the same shape, in the batch's dtype (uint8
stays uint8) unless the list ends with :class:`Normalize`
(:func:`output_dtype`). User guide: ``docs/augment.md``.

Data formats: every built-in op takes ``data_format="channels_last"`` or
``"channels_first"``; without it, ``keras.config.image_data_format()``, read
when the op is built (Keras is imported then, never at ``import gpuloader``).
The ops of a list must agree (:func:`data_format_of`).

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
- ``Normalize(mean, std, dtype="float32" | "float16" | "bfloat16")``: the last
  op of a list, ``(x - mean) / std`` per channel with the rounding rule of
  :mod:`gpuloader.augment.normalize`, applied as the fused kernel writes each
  pixel.

Keyed randomness
----------------
Inputs augmented with equal lists (``augment={"image": ops, "mask": ops}``)
get equal draws for each sample, so an image and its mask stay aligned; a
list wrapped in :class:`Stream` (``augment.Stream(ops, 1)``) draws from a
stream of its own, for example for two views of the same images. The Loader
warns when two inputs of the same shape and dtype would get equal draws.

Every random value is a pure function of ``(seed, epoch, sample id, stream, op
position in the list, word number)``, where the sample id is the row's index in the whole
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
  ``(n, H, W, C)``, or ``(n, C, H, W)`` in a channels-first list (a ``(n, H, W)``
  batch arrives with a channel axis of 1 and is reshaped back afterwards),
  ``bits`` a ``(n, draws)`` uint64 array whose row ``i`` holds sample ``i``'s
  words, ``xp`` the array namespace. Return a new array of the same shape and
  dtype; do not modify ``images`` nor return a view of it. Use only ``xp``
  functions (array-API operations) so it runs on the host and on the GPU;
- optionally ``check(shape, dtype, name)``, called by :func:`check_augment` at
  construction with the whole input's shape (``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``),
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
A list of built-in ops only (``RandomCrop``, ``RandomFlip``, ``Cutout``, at
most 32 of them writing fills, and a final ``Normalize``) runs as one fused kernel
(:mod:`~gpuloader.augment.fused`): per sample its words, the source row and
column of each output row and column traced back through the ops, then its
bytes written once. On the host it is a C extension built at install
(``_pixels.c``; whole runs of columns with ``memcpy``, a flip's reversed runs
16 bytes at a time with SSSE3, no GIL held); the Loader gives it the stored
images and the batch's rows, so the images are not gathered first. On the GPU
the same traced functions (``_pixels.h``) run as one CUDA launch per batch
(``gpuloader._cuda.GatherAugment``). Lists with an op of your own run op by op:
in a namespace other than NumPy each built-in op is one or two array-API passes
(``RandomCrop`` a ``take`` over flat pixel indices, plus a ``where`` for
``mode="constant"``; ``RandomFlip`` a ``flip`` and a ``where``; ``Cutout`` a
``where`` against a mask), and on the host a NumPy path that gives the same
bytes in a few passes (``_host.py``; also what runs when the C extension could
not be built: ``gpuloader.info()`` says so).

Measured (``bench/augment.py``, this project's 2 shared CPU cores, 50000 x 32 x
32 x 3 uint8, batch 512): see the README's benchmark section for the figures of
the current code.

An input that must stay in register with its images (a mask) takes their draws
with ``Same``: ``augment={"x": ops, "y": augment.Same("x", fill=255)}``
(:mod:`~gpuloader.augment.targets`; docs/augment-targets.md).

The modules: :mod:`~gpuloader.augment.keyed` (the words), :mod:`~gpuloader.augment.ops` (the ops and
their array-API path), :mod:`~gpuloader.augment.apply` (checking and applying a list),
:mod:`~gpuloader.augment.fused` (the fused kernel's table and host entry point; ``_pixels.h`` and
``_pixels.c`` its C), ``_host`` (the NumPy path), :mod:`~gpuloader.augment.assign` (the ``augment`` argument
resolved to inputs), :mod:`~gpuloader.augment.plan` (one input's path, chosen once).
"""

from __future__ import annotations

from gpuloader.augment.apply import (
    Stream,
    apply_augment,
    check_augment,
    data_format_of,
    ops_and_stream,
    output_dtype,
    output_shape,
)
from gpuloader.augment.keyed import integers, sample_words, uniform
from gpuloader.augment.normalize import Normalize
from gpuloader.augment.ops import AugmentOp, Cutout, RandomCrop, RandomFlip
from gpuloader.augment.targets import Same

__all__ = [
    "AugmentOp",
    "Cutout",
    "Normalize",
    "RandomCrop",
    "RandomFlip",
    "Same",
    "Stream",
    "apply_augment",
    "check_augment",
    "data_format_of",
    "integers",
    "ops_and_stream",
    "output_dtype",
    "output_shape",
    "sample_words",
    "uniform",
]
