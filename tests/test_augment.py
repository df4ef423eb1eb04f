"""Deterministic augmentation: crop, flip and cutout keyed by (seed, epoch, sample), the same bytes everywhere.

Every output is checked against a slow reference written plainly here, one
sample at a time (``numpy.pad`` and slicing), from the words the keyed hash
gives each sample. The host's fast path, the array-API reference path on NumPy
and ``array_api_strict`` (standing in for CuPy) must give identical bytes.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import warnings

import array_api_strict as xps
import numpy as np
import pytest
from conftest import prepared

from gpuloader import augment
from gpuloader.augment import (
    Cutout,
    Normalize,
    RandomCrop,
    RandomFlip,
    apply_augment,
    check_augment,
    fused,
    sample_words,
)
from gpuloader.gather import is_aligned
from gpuloader.permutation import MAX_SEED

SEED, EPOCH = 1234, 3


# ------------------------------------------------------------------ references, one sample at a time
def below(word: int, high: int) -> int:
    """The documented draw: the top 32 bits of a word scaled to [0, high)."""
    return ((word >> 32) * high) >> 32


def reference(ops, images, ids, seed, epoch):
    """Apply ``ops`` to each sample on its own, with np.pad and slicing, from its keyed words.

    Channels-first ops (Keras's meaning): the channels-last ops on the images with their channels moved last.
    """
    images = np.asarray(images)
    if images.ndim == 4 and any(getattr(op, "data_format", None) == "channels_first" for op in ops):
        last = [
            dataclasses.replace(op, data_format="channels_last") if dataclasses.is_dataclass(op) else op for op in ops
        ]
        return reference(last, images.transpose(0, 2, 3, 1), ids, seed, epoch).transpose(0, 3, 1, 2)
    squeeze = images.ndim == 3
    batch = images[..., None] if squeeze else images
    out = []
    for row, sample in enumerate(np.asarray(ids).tolist()):
        image = batch[row].copy()
        for position, op in enumerate(ops):
            words = [int(w) for w in sample_words(np, np.array([sample]), seed, epoch, position, op.draws)[0]]
            image = reference_op(op, image, words)
        out.append(image)
    result = np.stack(out) if out else batch.copy()
    return result[..., 0] if squeeze else result


def reference_op(op, image, words):
    height, width = image.shape[:2]
    if isinstance(op, RandomCrop):
        p = op.padding
        dy, dx = below(words[0], 2 * p + 1) - p, below(words[1], 2 * p + 1) - p
        widths = ((p, p), (p, p), (0, 0))
        if op.mode == "reflect":
            padded = np.pad(image, widths, mode="reflect")
        else:
            padded = np.pad(image, widths, mode="constant", constant_values=op.fill or 0)
        return padded[p + dy : p + dy + height, p + dx : p + dx + width].copy()
    if isinstance(op, RandomFlip):
        return image[:, ::-1].copy() if words[0] >> 63 else image
    if isinstance(op, Cutout):
        cy, cx = below(words[0], height), below(words[1], width)
        top, left = cy - op.size // 2, cx - op.size // 2
        image[max(top, 0) : max(top + op.size, 0), max(left, 0) : max(left + op.size, 0)] = op.fill
        return image
    if isinstance(op, Normalize):  # the documented rule, one sample at a time
        channels = image.shape[-1]
        mean = np.broadcast_to(np.asarray(op.mean, np.float64), (channels,)).astype(np.float32)
        scale = (1.0 / np.broadcast_to(np.asarray(op.std, np.float64), (channels,))).astype(np.float32)
        values = np.subtract(image.astype(np.float32), mean, dtype=np.float32)
        values = np.multiply(values, scale, dtype=np.float32)
        target = pytest.importorskip("ml_dtypes").bfloat16 if op.dtype == "bfloat16" else op.dtype
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to infinity is the rule
            return values.astype(target)
    return np.asarray(op.apply(image[None], np.array([words], dtype=np.uint64), np))[0]


def images_of(n, height, width, channels=3, dtype=np.uint8, seed=0, low=1):
    """Random images whose values never equal a fill of 0 (``low=1``)."""
    rng = np.random.default_rng(seed)
    shape = (n, height, width) if channels is None else (n, height, width, channels)
    return rng.integers(low, 250, size=shape).astype(dtype)


KERNEL_BUILT = fused.host_kernel() is not None
needs_kernel = pytest.mark.skipif(not KERNEL_BUILT, reason=fused.host_kernel_missing() or "")


def run(ops, images, ids, path="fast", seed=SEED, epoch=EPOCH, **kwargs):
    """apply_augment through one path.

    ``fast``: what NumPy input gets (the host kernel when it is built); ``kernel``: the host kernel;
    ``bytewise``: the host kernel copying byte by byte with the CUDA kernel's loop; ``numpy``: the
    NumPy fast path (no kernel); ``generic``: the array-API ops on NumPy; ``strict``: array_api_strict.
    """
    if path == "strict":
        return np.asarray(apply_augment(ops, xps.asarray(images), xps.asarray(ids), seed, epoch, xps, **kwargs))
    if path in ("kernel", "bytewise") and not KERNEL_BUILT:
        pytest.skip(fused.host_kernel_missing())
    switches = {
        "generic": [(augment._host, "_FAST_PATH_ENABLED", False)],
        "numpy": [(fused, "_HOST_KERNEL_ENABLED", False)],
        "bytewise": [(fused, "_BYTEWISE", True)],
    }.get(path, [])
    previous = [(module, name, getattr(module, name)) for module, name, _ in switches]
    try:
        for module, name, value in switches:
            setattr(module, name, value)
        return apply_augment(ops, images, ids, seed, epoch, np, **kwargs)
    finally:
        for module, name, value in previous:
            setattr(module, name, value)


PATHS = ("kernel", "bytewise", "numpy", "generic", "strict")
STANDARD = [RandomCrop(padding=4, mode="reflect"), RandomFlip(), Cutout(size=8)]


# ------------------------------------------------------------------ each op does what its contract says
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("mode", "fill"), [("reflect", None), ("constant", None), ("constant", 9)])
def test_each_crop_output_is_the_padded_crop_of_its_input_at_its_drawn_offset(path, mode, fill):
    images = images_of(1000, 6, 7)
    ids = np.arange(1000, 2000, dtype=np.int64)
    op = RandomCrop(padding=4, mode=mode, fill=fill)
    out = run([op], images, ids, path)
    np.testing.assert_array_equal(out, reference([op], images, ids, SEED, EPOCH))
    # Every translation in [-4, 4] x [-4, 4] occurs and nothing else: each output is one of those crops.
    p, seen = 4, set()
    for image, result in zip(images, out):
        widths = ((p, p), (p, p), (0, 0))
        if mode == "reflect":
            padded = np.pad(image, widths, "reflect")
        else:
            padded = np.pad(image, widths, constant_values=fill or 0)
        matches = {
            (dy, dx)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if np.array_equal(padded[p + dy : p + dy + 6, p + dx : p + dx + 7], result)
        }
        assert matches, "an output is not a padded crop of its input"
        seen |= matches
    assert seen == {(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)}


@pytest.mark.parametrize("path", PATHS)
def test_a_flip_output_is_its_input_or_its_mirror_and_half_are_mirrored(path):
    n = 20000
    images = np.broadcast_to(np.array([1, 2], dtype=np.uint8).reshape(1, 1, 2), (n, 1, 2)).copy()
    out = run([RandomFlip()], images, np.arange(n, dtype=np.int64), path)
    kept = np.all(out == images, axis=(1, 2))
    mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2))
    assert np.all(kept ^ mirrored)
    assert 0.485 < mirrored.mean() < 0.515  # 4 standard deviations of a fair coin over 20000 samples


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [1, 4, 5, 8, 30])
def test_cutout_is_exactly_one_clipped_square_of_fill(path, size):
    height, width = 12, 10
    images = images_of(400, height, width, low=1)
    ids = np.arange(400, dtype=np.int64) * 7
    op = Cutout(size=size, fill=0)
    out = run([op], images, ids, path)
    np.testing.assert_array_equal(out, reference([op], images, ids, SEED, EPOCH))
    clipped_at = set()
    for image, result in zip(images, out):
        changed = np.any(result != image, axis=-1)
        assert np.all(result[changed] == 0) and np.all(result[~changed] == image[~changed])
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        assert changed.sum() == rows.size * cols.size, "the changed pixels are not one rectangle"
        assert rows.size == rows[-1] - rows[0] + 1 and cols.size == cols[-1] - cols[0] + 1
        assert rows.size <= size and cols.size <= size
        # A side shorter than size touches the border: the square was clipped there, nowhere else.
        for extent, low, high, limit in ((rows.size, rows[0], rows[-1], height), (cols.size, cols[0], cols[-1], width)):
            if extent < min(size, limit):
                assert low == 0 or high == limit - 1
                clipped_at.add("low" if low == 0 else "high")
            else:
                assert extent == min(size, limit)
    if 1 < size < min(height, width):
        assert clipped_at == {"low", "high"}  # squares were clipped at both edges somewhere


@pytest.mark.parametrize("path", PATHS)
def test_the_standard_recipe_matches_the_per_sample_reference(path):
    images = images_of(256, 32, 32)
    ids = np.random.default_rng(5).permutation(50000)[:256].astype(np.int64)
    out = run(STANDARD, images, ids, path)
    np.testing.assert_array_equal(out, reference(STANDARD, images, ids, SEED, EPOCH))


# ------------------------------------------------------------------ a pure function of (seed, epoch, sample)
def test_a_sample_gets_the_same_bytes_whatever_its_batch_its_position_or_the_batch_size():
    n = 600
    data = images_of(n, 16, 16)
    whole = run(STANDARD, data, np.arange(n, dtype=np.int64))
    rng = np.random.default_rng(9)
    for batch_size in (1, 7, 64, 256, 600):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            np.testing.assert_array_equal(run(STANDARD, data[rows], rows.astype(np.int64)), whole[rows])


def test_another_epoch_or_seed_changes_most_draws():
    ids = np.arange(5000, dtype=np.int64)
    base = sample_words(np, ids, SEED, EPOCH, 0, 2)
    for other in (sample_words(np, ids, SEED, EPOCH + 1, 0, 2), sample_words(np, ids, SEED + 1, EPOCH, 0, 2)):
        assert np.mean(other == base) < 0.001
    data = images_of(2000, 8, 8)
    ids = np.arange(2000, dtype=np.int64)
    first = run(STANDARD, data, ids)
    for seed, epoch in ((SEED, EPOCH + 1), (SEED + 1, EPOCH)):
        again = run(STANDARD, data, ids, seed=seed, epoch=epoch)
        assert np.mean(np.any(again != first, axis=(1, 2, 3))) > 0.9


def test_each_op_in_a_list_draws_its_own_words():
    ids = np.arange(4000, dtype=np.int64)
    assert np.mean(sample_words(np, ids, SEED, EPOCH, 0, 1) == sample_words(np, ids, SEED, EPOCH, 1, 1)) < 0.001
    # Two flips in a row: with shared draws every image would come back unchanged.
    images = np.broadcast_to(np.array([1, 2], dtype=np.uint8).reshape(1, 1, 2), (4000, 1, 2)).copy()
    out = run([RandomFlip(), RandomFlip()], images, ids)
    assert 0.45 < np.mean(out[:, 0, 0] == 2) < 0.55


def test_the_words_are_pinned_and_follow_the_documented_formula():
    words = sample_words(np, np.arange(3, dtype=np.int64), 42, 0, 0, 2)
    assert words.dtype == np.uint64 and words.shape == (3, 2)
    assert words.tolist() == PINNED_WORDS
    # The same words from their definition, in Python integers.
    from gpuloader.permutation import _mix_int, epoch_keys

    first, second = epoch_keys(42, 0)
    for sample in range(3):
        for word in range(2):
            lane = _mix_int(0x6175676D656E7421 ^ word)
            a, b = _mix_int(first ^ lane), _mix_int(second + lane)
            assert int(words[sample, word]) == _mix_int(_mix_int(sample + a) ^ b)


PINNED_WORDS = [
    [18410738593708735159, 14446706192363342496],
    [14169401716785135452, 8493913716974615916],
    [12849457769917906929, 8804609291635312935],
]


def test_draws_use_the_whole_seed_and_epoch_range():
    ids = np.arange(4, dtype=np.int64)
    for seed, epoch in ((0, 0), (MAX_SEED, 10**9)):
        np.testing.assert_array_equal(
            np.asarray(sample_words(xps, xps.asarray(ids), seed, epoch, 3, 2)),
            sample_words(np, ids, seed, epoch, 3, 2),
        )


# ------------------------------------------------------------------ same bytes on every path
ODD = [(h, w, c) for h in (1, 3, 5, 7) for w in (1, 3, 5, 7) for c in (1, 3, 5, 7)]


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
def test_odd_sizes_and_dtypes_match_the_reference_on_every_path(dtype):
    paths = [path for path in PATHS if path != "strict"] if dtype == np.float16 else PATHS  # strict has no float16
    for index, (height, width, channels) in enumerate(ODD):
        images = images_of(23, height, width, channels, dtype=dtype, seed=index)
        ids = np.arange(23, dtype=np.int64) * 3 + index
        pad = min(height, width) - 1
        ops = [RandomCrop(pad), RandomFlip(), Cutout(3, fill=7), RandomCrop(pad, mode="constant", fill=2)]
        expected = reference(ops, images, ids, SEED, EPOCH)
        for path in paths:
            if path in ("kernel", "bytewise") and not KERNEL_BUILT:
                continue
            out = run(ops, images, ids, path)
            assert out.dtype == dtype and out.shape == images.shape
            assert out.tobytes() == expected.tobytes(), (path, height, width, channels)


@pytest.mark.parametrize("path", PATHS)
def test_images_without_a_channel_axis(path):
    images = images_of(50, 7, 5, channels=None)
    ids = np.arange(50, dtype=np.int64)
    ops = [RandomCrop(3), RandomFlip(), Cutout(4, fill=250)]
    out = run(ops, images, ids, path)
    assert out.shape == (50, 7, 5)
    np.testing.assert_array_equal(out, reference(ops, images, ids, SEED, EPOCH))


@pytest.mark.parametrize("path", ["kernel", "bytewise", "numpy"])
def test_the_host_paths_give_the_reference_paths_bytes_over_many_draws(path):
    images = images_of(512, 32, 32)
    ids = np.random.default_rng(2).permutation(10**6)[:512].astype(np.int64)
    recipes = [
        STANDARD,
        [RandomFlip(), RandomCrop(4, mode="constant", fill=255), Cutout(16, fill=3)],
        [Cutout(8), RandomCrop(2), RandomFlip(), RandomCrop(4), Cutout(1)],
        [RandomFlip(), RandomCrop(3), Cutout(5)],
        [RandomFlip(), RandomFlip(), RandomCrop(4, mode="constant"), RandomFlip()],
    ]
    for ops in recipes:
        for epoch in range(3):
            fast, generic = run(ops, images, ids, path, epoch=epoch), run(ops, images, ids, "generic", epoch=epoch)
            assert fast.tobytes() == generic.tobytes()
            assert np.asarray(run(ops, images, ids, "strict", epoch=epoch)).tobytes() == fast.tobytes()


def test_the_same_bytes_on_a_second_stand_in_gpu():
    # array_api_strict devices play GPUs and refuse to mix arrays of two devices: every array the
    # augmentation makes must be made on the data's device, as CuPy's creation functions do.
    from fake_gpu import make_runtime

    runtime = make_runtime(gpus=2)
    xp, device = runtime.namespace(), runtime.state.devices[1]
    images = images_of(100, 12, 10)
    ids = np.arange(500, 600, dtype=np.int64)
    ops = [*STANDARD, RandomCrop(3, mode="constant", fill=5), Brightness(20.0)]
    with runtime.on_device(1):
        out = apply_augment(ops, xps.asarray(images, device=device), xps.asarray(ids, device=device), SEED, EPOCH, xp)
    assert out.device == device
    assert np.asarray(out.to_device(xps.Device("CPU_DEVICE"))).tobytes() == run(ops, images, ids).tobytes()


# ------------------------------------------------------------------ buffers
def test_the_input_is_untouched_and_the_result_is_a_fresh_aligned_array():
    images = images_of(64, 8, 8)
    before = images.copy()
    for ops in (STANDARD, [RandomFlip()], [Cutout(4)], []):
        out = apply_augment(ops, images, np.arange(64, dtype=np.int64), SEED, EPOCH, np)
        np.testing.assert_array_equal(images, before)
        assert not np.may_share_memory(out, images) and is_aligned(out)


@pytest.mark.parametrize("path", ["kernel", "numpy"])
def test_overwrite_gives_the_same_bytes_and_the_numpy_path_writes_into_the_batch(path):
    # The kernel reads each image while writing others, so it always writes a fresh buffer.
    images = images_of(64, 8, 8)
    ids = np.arange(64, dtype=np.int64)
    expected = run(STANDARD, images, ids, "generic")
    out = run(STANDARD, images, ids, path, overwrite=True)
    np.testing.assert_array_equal(out, expected)
    assert (out is images) == (path == "numpy")


def test_a_strided_input_gives_the_same_bytes():
    images = images_of(40, 8, 16)
    ids = np.arange(40, dtype=np.int64)
    view = images[:, :, ::2]
    np.testing.assert_array_equal(run(STANDARD, view, ids), reference(STANDARD, view, ids, SEED, EPOCH))


def test_batches_of_changing_sizes_and_threads_side_by_side_give_the_same_bytes():
    # The host path keeps work buffers between batches, one set per thread.
    from concurrent.futures import ThreadPoolExecutor

    data = images_of(700, 16, 16)
    whole = run(STANDARD, data, np.arange(700, dtype=np.int64), "generic")
    cuts = [(0, 512), (512, 519), (519, 700), (3, 600), (600, 601)]

    def batch(cut):
        rows = np.arange(*cut, dtype=np.int64)
        return run(STANDARD, data[rows], rows), whole[rows]

    for out, expected in map(batch, cuts * 2):
        np.testing.assert_array_equal(out, expected)
    with ThreadPoolExecutor(4) as pool:
        for out, expected in pool.map(batch, cuts * 8):
            np.testing.assert_array_equal(out, expected)


def test_an_empty_batch():
    images = images_of(0, 8, 8)
    out = run(STANDARD, images, np.zeros(0, dtype=np.int64))
    assert out.shape == (0, 8, 8, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------ ops of one's own
class Brightness(augment.AugmentOp):
    """The module docstring's example: a keyed brightness shift in [-delta, delta]."""

    draws = 1

    def __init__(self, delta):
        self.delta = delta

    def apply(self, images, bits, xp):
        shift = (2 * augment.uniform(bits[:, 0], xp) - 1) * self.delta
        out = xp.astype(images, xp.float32) + xp.reshape(shift, (-1, 1, 1, 1))
        return xp.astype(xp.clip(out, 0.0, 255.0), images.dtype)


def test_an_op_of_ones_own_gets_keyed_words_and_runs_on_every_backend():
    images = images_of(200, 6, 6)
    ids = np.arange(200, dtype=np.int64)
    ops = [RandomCrop(2), Brightness(40.0), RandomFlip()]
    assert check_augment(ops, images.shape, images.dtype, "x") == ops
    host = run(ops, images, ids)
    assert host.tobytes() == run(ops, images, ids, "strict").tobytes()
    np.testing.assert_array_equal(host, reference(ops, images, ids, SEED, EPOCH))
    np.testing.assert_array_equal(run(ops, images[::-1], ids[::-1]), host[::-1])  # batch-order independent
    assert np.mean(np.any(host != run(ops[:1] + ops[2:], images, ids), axis=(1, 2, 3))) > 0.9


@pytest.mark.parametrize("path", ["fast", "strict"])
def test_an_op_reading_more_words_than_it_draws_is_told_how_to_fix_it(path):
    class Greedy(Brightness):
        def apply(self, images, bits, xp):
            return super().apply(images, bits[:, 1:], xp)  # reads word 1 with draws = 1

    images = images_of(8, 4, 4)
    with pytest.raises(IndexError, match=r"draws=1 words each.*Fix: set the op's draws"):
        run([RandomFlip(), Greedy(10.0)], images, np.arange(8, dtype=np.int64), path)


def test_ops_after_an_op_of_ones_own_that_returns_a_strided_array():
    class Strided(augment.AugmentOp):  # the same values, in a fresh array that is not C-contiguous
        draws = 0

        def apply(self, images, bits, xp):
            return np.ascontiguousarray(np.swapaxes(images, 1, 2) + 0).swapaxes(1, 2)

    images = images_of(60, 9, 7)
    ids = np.arange(60, dtype=np.int64)
    for ops in ([Strided(), Cutout(4)], [Strided(), RandomFlip()], [Strided(), RandomCrop(3), RandomFlip()]):
        np.testing.assert_array_equal(run(ops, images, ids), reference(ops, images, ids, SEED, EPOCH))


def test_an_op_of_ones_own_that_changes_the_shape_is_refused():
    class Shrink(augment.AugmentOp):
        draws = 0

        def apply(self, images, bits, xp):
            return images[:, 1:]

    with pytest.raises(ValueError, match="must keep both"):
        apply_augment([Shrink()], images_of(4, 5, 5), np.arange(4, dtype=np.int64), SEED, EPOCH, np)


def test_helpers_turn_words_into_values_the_same_way_everywhere():
    words = sample_words(np, np.arange(10000, dtype=np.int64), SEED, EPOCH, 0, 1)[:, 0]
    values = augment.integers(words, 10, np)
    assert values.dtype == np.int64 and set(values.tolist()) == set(range(10))
    assert np.all(np.bincount(values) > 900)
    unit = augment.uniform(words, np)
    assert unit.dtype == np.float32 and 0.0 <= unit.min() and 0.999 < unit.max() < 1.0
    assert 0.49 < unit.mean() < 0.51
    np.testing.assert_array_equal(np.asarray(augment.uniform(xps.asarray(words), xps)), unit)
    np.testing.assert_array_equal(np.asarray(augment.integers(xps.asarray(words), 10, xps)), values)


# ------------------------------------------------------------------ refused at construction, with the fix
@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: RandomCrop(-1), ValueError, ["padding", "-1", ">= 0", "Fix"]),
        (lambda: RandomCrop(2.5), TypeError, ["padding", "2.5", "int", "Fix"]),
        (lambda: RandomCrop(True), TypeError, ["padding", "True", "int"]),
        (lambda: RandomCrop(4, mode="wrap"), ValueError, ["mode", "'wrap'", "'reflect' or 'constant'", "Fix"]),
        (lambda: RandomCrop(4, fill=1), ValueError, ["fill=1", "mode='constant' only", "Fix"]),
        (lambda: RandomCrop(4, mode="constant", fill="black"), TypeError, ["fill", "'black'", "Fix"]),
        (lambda: Cutout(-3), ValueError, ["size", "-3", ">= 0", "Fix"]),
        (lambda: Cutout(None), TypeError, ["size", "None", "Fix"]),
    ],
)
def test_bad_op_arguments_are_refused_naming_the_rule_the_value_and_the_fix(make, error, words):
    with pytest.raises(error) as raised:
        make()
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize(
    ("ops", "shape", "dtype", "error", "words"),
    [
        (RandomFlip(), (10, 8, 8, 3), "uint8", TypeError, ["must be a list", "augment=[RandomFlip("]),
        ("flip", (10, 8, 8, 3), "uint8", TypeError, ["must be a list", "'flip'", "Fix"]),
        ([RandomFlip(), "crop"], (10, 8, 8, 3), "uint8", TypeError, ["augment[1]", "'crop'", "draws"]),
        ([RandomFlip], (10, 8, 8, 3), "uint8", TypeError, ["augment[0]", "class RandomFlip", "RandomFlip(...)"]),
        ([RandomFlip()], (10, 784), "float32", ValueError, ["image arrays", "(10, 784)", "Fix"]),
        ([RandomFlip()], (10, 2, 8, 8, 3), "uint8", ValueError, ["image arrays", "5 dimensions"]),
        ([RandomFlip()], (10, 8, 8), "complex64", TypeError, ["numeric", "complex64", "Fix"]),
        ([RandomCrop(4)], (10, 4, 32, 3), "uint8", ValueError, ["padding=4", "4 x 32", "padding <= 3"]),
        ([RandomCrop(4)], (10, 3, 32, 32), "uint8", ValueError, ["padding <= 2", "other data format"]),
        ([RandomCrop(1, mode="constant", fill=-1)], (10, 8, 8), "uint8", ValueError, ["fill=-1", "uint8", "[0, 255]"]),
        ([Cutout(4, fill=0.5)], (10, 8, 8), "uint8", ValueError, ["fill=0.5", "uint8", "Fix"]),
        ([Cutout(4, fill=1e6)], (10, 8, 8), "float16", ValueError, ["fill=1000000.0", "float16"]),
    ],
)
@pytest.mark.filterwarnings("ignore:augment for x. shape")
def test_bad_augment_lists_are_refused_naming_the_rule_the_value_and_the_fix(ops, shape, dtype, error, words):
    with pytest.raises(error) as raised:
        check_augment(ops, shape, dtype, "x")
    for word in words:
        assert word in str(raised.value)
    assert "x" in str(raised.value)


def test_good_augment_lists_are_accepted_as_new_lists():
    ops = (RandomCrop(3), RandomFlip(), Cutout(0), RandomCrop(0, mode="constant", fill=1.5))
    checked = check_augment(ops, (10, 4, 4), np.float32, "x")
    assert checked == list(ops) and isinstance(checked, list)
    assert check_augment([Cutout(4, fill=255)], (1, 8, 8, 3), xps.uint8, "x") == [Cutout(4, fill=255)]


# ------------------------------------------------------------------ subclasses and arguments users pass
@pytest.mark.parametrize("path", PATHS)
def test_a_subclass_of_a_built_in_op_runs_its_own_apply_on_every_path(path):
    # Neither the fused kernel nor the NumPy path may stand in for an apply the subclass changed.
    calls = []

    class NoisyCrop(RandomCrop):
        def apply(self, images, bits, xp):
            calls.append(1)
            return xp.astype(super().apply(images, bits, xp) // 2, images.dtype)

    class AlwaysFlip(RandomFlip):  # changes only the draw; the built-in apply must consult it
        def flips(self, bits, xp):
            return bits[:, 0] == bits[:, 0]

    images = images_of(40, 6, 5)
    ids = np.arange(40, dtype=np.int64)
    ops = [NoisyCrop(2), AlwaysFlip(), Cutout(2)]
    out = run(ops, images, ids, path)
    assert calls == [1]
    flipped = (reference([RandomCrop(2)], images, ids, SEED, EPOCH) // 2)[:, :, ::-1]
    words = sample_words(np, ids, SEED, EPOCH, 2, 2)  # the cutout's, third in the list
    expected = [reference_op(Cutout(2), image.copy(), [int(w) for w in row]) for image, row in zip(flipped, words)]
    np.testing.assert_array_equal(out, np.stack(expected))


def test_numpy_integers_and_floats_as_arguments_act_as_python_ones():
    images = images_of(30, 7, 7)
    ids = np.arange(30, dtype=np.int64)
    numpy_args = [RandomCrop(np.int64(3), mode="constant", fill=np.uint8(9)), RandomFlip(), Cutout(np.int32(3))]
    python_args = [RandomCrop(3, mode="constant", fill=9), RandomFlip(), Cutout(3)]
    assert numpy_args == python_args and type(numpy_args[0].padding) is int
    for path in ("fast", "numpy", "generic", "strict"):
        np.testing.assert_array_equal(run([*numpy_args, Brightness(5.0)], images, ids, path),
                                      run([*python_args, Brightness(5.0)], images, ids, "generic"))


@pytest.mark.parametrize("first", [0.0, -0.0])
def test_a_fill_of_minus_zero_is_not_taken_for_plus_zero(first):
    images = images_of(20, 4, 4, dtype=np.float32)
    ids = np.arange(20, dtype=np.int64)
    for fill in (first, -first):
        out = run([Cutout(4, fill=fill)], images, ids)
        assert np.all(np.signbit(out[out == 0]) == (np.copysign(1.0, fill) < 0)), fill


def test_a_cutout_larger_than_any_image_is_refused_at_construction():
    for size in (2**30 + 1, 10**20):
        with pytest.raises(ValueError, match=r"Cutout\(size=...\) must be <= 2\*\*30"):
            Cutout(size)
    out = run([Cutout(2**30, fill=3)], images_of(5, 4, 4), np.arange(5, dtype=np.int64))
    assert np.all(out == 3)


@pytest.mark.parametrize(
    ("returned", "shown"),
    [(lambda images: None, "None (a missing return?)"), (lambda images: images.tolist(), "list")],
)
def test_an_op_returning_something_else_than_an_array_is_named_with_the_fix(returned, shown):
    class Wrong(augment.AugmentOp):
        def apply(self, images, bits, xp):
            return returned(images)

    with pytest.raises(TypeError, match=rf"Wrong.*returned {re.escape(shown)}.*Fix: return a new array"):
        run([Wrong()], images_of(4, 3, 3), np.arange(4, dtype=np.int64))


def test_an_op_class_without_apply_is_refused_at_construction():
    class Misspelt(augment.AugmentOp):
        draws = 1

        def aply(self, images, bits, xp):
            return images

    with pytest.raises(TypeError, match=r"does not define apply.*check its spelling"):
        check_augment([Misspelt()], (4, 3, 3, 1), np.uint8, "x")


# ------------------------------------------------------------------ data formats
FORMATS = ("channels_last", "channels_first")


def recipes_in(data_format, pad=4):
    return [
        [RandomCrop(pad, data_format=data_format), RandomFlip(data_format=data_format),
         Cutout(8, data_format=data_format)],
        [RandomFlip(data_format=data_format), RandomCrop(3, mode="constant", fill=9, data_format=data_format),
         Cutout(5, fill=2, data_format=data_format), RandomCrop(1, data_format=data_format)],
        [Cutout(7, data_format=data_format), RandomFlip(data_format=data_format), Brightness(9),
         RandomCrop(2, data_format=data_format)],
    ]


def in_format(images, data_format):
    """Channels-last test images laid out in ``data_format`` (a copy, C-contiguous)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2) if data_format == "channels_first" else images)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_both_data_formats_match_the_per_sample_reference_on_every_path(path, data_format, channels):
    images = in_format(images_of(61, 9, 11, channels), data_format)
    ids = np.arange(61, dtype=np.int64) * 5 + 2
    for ops in recipes_in(data_format):
        out = run(ops, images, ids, path)
        assert out.shape == images.shape and out.dtype == images.dtype
        np.testing.assert_array_equal(out, reference(ops, images, ids, SEED, EPOCH))


@pytest.mark.parametrize("path", PATHS)
def test_channels_first_ops_move_the_same_pixels_as_channels_last_ones(path):
    # The two layouts of the same images get the same augmentation, only laid out differently.
    images = images_of(200, 12, 10, 3)
    ids = np.arange(200, dtype=np.int64)
    last = run(recipes_in("channels_last")[1], images, ids, path)
    first = run(recipes_in("channels_first")[1], in_format(images, "channels_first"), ids, path)
    np.testing.assert_array_equal(first, in_format(last, "channels_first"))


@pytest.mark.parametrize("path", PATHS)
def test_a_channels_first_flip_reverses_the_columns_not_the_rows(path):
    # The case: (n, 3, H, W) with RandomFlip() used to reverse rows (a vertical flip).
    n = 4000
    image = np.arange(3 * 4 * 6, dtype=np.uint8).reshape(1, 3, 4, 6)
    images = np.broadcast_to(image, (n, 3, 4, 6)).copy()
    out = run([RandomFlip(data_format="channels_first")], images, np.arange(n, dtype=np.int64), path)
    mirrored = np.array([np.array_equal(o, image[0, :, :, ::-1]) for o in out])
    kept = np.array([np.array_equal(o, image[0]) for o in out])
    assert (mirrored | kept).all() and 0.45 < mirrored.mean() < 0.55


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("data_format", FORMATS)
def test_images_without_a_channel_axis_in_either_format(path, data_format):
    images = images_of(50, 7, 5, channels=None)
    ids = np.arange(50, dtype=np.int64)
    ops = [RandomCrop(3, data_format=data_format), RandomFlip(data_format=data_format), Cutout(4, fill=250,
                                                                                              data_format=data_format)]
    out = run(ops, images, ids, path)
    assert out.shape == (50, 7, 5)
    np.testing.assert_array_equal(out, reference(recipes_in("channels_last")[0][:0] + [
        dataclasses.replace(op, data_format="channels_last") for op in ops], images, ids, SEED, EPOCH))


def test_an_op_without_a_data_format_follows_keras_where_it_runs_alone():
    keras = pytest.importorskip("keras")
    images = np.random.default_rng(3).integers(0, 256, size=(16, 3, 8, 8), dtype=np.uint8)
    flip = RandomFlip()
    assert flip.data_format is None  # kept open: a Loader gives it the Loader's
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format("channels_first")
        assert Normalize(0, 1).data_format is None
        alone = apply_augment([flip], images, np.arange(16), seed=0, epoch=0, xp=np)
        named = apply_augment([RandomFlip(data_format="channels_first")], images, np.arange(16), seed=0,
                              epoch=0, xp=np)
        np.testing.assert_array_equal(alone, named)
        assert RandomCrop(2, data_format="channels_last").data_format == "channels_last"
    finally:
        keras.config.set_image_data_format(previous)


@pytest.mark.parametrize("channels", [3, 8])
def test_built_in_ops_without_a_data_format_follow_the_loaders(channels):
    """Loader(data_format="channels_first") with RandomFlip(): horizontal flips (the width reversed), no warning."""
    from gpuloader import Loader

    images = np.random.default_rng(4).integers(0, 256, size=(64, channels, 12, 10), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = Loader(images, None, batch_size=64, seed=0, shuffle=False, augment=[RandomFlip()],
                        data_format="channels_first", verbose=False)
    out = np.asarray(loader[0][0])
    flipped = (out != images).any(axis=(1, 2, 3))
    assert 0 < flipped.sum() < 64
    np.testing.assert_array_equal(out[flipped], images[flipped][..., ::-1])
    np.testing.assert_array_equal(out[~flipped], images[~flipped])


def test_importing_gpuloader_or_naming_a_data_format_does_not_import_keras():
    code = (
        "import sys, gpuloader\n"
        "from gpuloader import augment\n"
        "augment.RandomCrop(4, data_format='channels_first'); augment.Normalize(0, 1, data_format='channels_last')\n"
        "print('keras' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_ops_of_one_list_must_share_a_data_format_and_a_bad_one_is_named():
    ops = [RandomFlip(data_format="channels_first"), Cutout(2, data_format="channels_last")]
    with pytest.raises(ValueError, match="share a data_format"):
        check_augment(ops, (4, 3, 8, 8), np.uint8, "x")
    with pytest.raises(ValueError, match=r"'channels_last' .* 'channels_first'.*received 'NHWC'"):
        RandomCrop(2, data_format="NHWC")


@pytest.mark.parametrize(
    ("shape", "data_format", "warns"),
    [
        ((10, 3, 32, 32), "channels_last", True),
        ((10, 32, 32, 3), "channels_first", True),
        ((10, 32, 32, 3), "channels_last", False),
        ((10, 3, 32, 32), "channels_first", False),
        ((10, 32, 32), "channels_first", False),
    ],
)
def test_an_input_that_looks_like_the_other_format_is_warned_about_naming_data_format(shape, data_format, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_augment([RandomFlip(data_format=data_format)], shape, np.uint8, "x")
    messages = [str(w.message) for w in caught]
    assert bool(messages) == warns
    if warns:
        assert "data_format=" in messages[0] and str(shape) in messages[0]


# ------------------------------------------------------------------ Normalize: floats in the same pass
NORMALIZE_DTYPES = ("float32", "float16", "bfloat16")


def normalize_paths(dtype):
    """array_api_strict has neither float16 nor bfloat16; the generic path has no bfloat16 either (NumPy has)."""
    return [path for path in PATHS if path != "strict" or dtype == "float32"]


@pytest.mark.parametrize("dtype", NORMALIZE_DTYPES)
@pytest.mark.parametrize("data_format", FORMATS)
def test_normalized_batches_match_the_per_sample_reference_on_every_path(dtype, data_format):
    images = in_format(images_of(57, 9, 11, 3, low=0), data_format)
    ids = np.arange(57, dtype=np.int64) * 3
    mean, std = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
    for ops in [*recipes_in(data_format), []]:
        ops = [*ops, Normalize(mean, std, dtype=dtype, data_format=data_format)]
        expected = reference(ops, images, ids, SEED, EPOCH)
        assert expected.dtype.name == dtype
        for path in normalize_paths(dtype):
            out = run(ops, images, ids, path)
            assert out.dtype == expected.dtype and out.shape == images.shape, path
            assert out.tobytes() == expected.tobytes(), (path, ops)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64,
                                   np.float32, np.float64, np.bool_])
def test_normalize_reads_every_stored_dtype_the_kernel_takes_as_the_reference_does(dtype):
    rng = np.random.default_rng(7)
    if dtype == np.bool_:
        images = rng.integers(0, 2, (40, 6, 7, 2)).astype(bool)
    elif np.dtype(dtype).kind == "f":
        images = (rng.standard_normal((40, 6, 7, 2)) * 1e4).astype(dtype)
    else:
        info = np.iinfo(dtype)
        images = rng.integers(info.min, info.max, (40, 6, 7, 2), dtype=dtype, endpoint=True)
    ids = np.arange(40, dtype=np.int64)
    ops = [RandomCrop(2, mode="constant", fill=1), RandomFlip(), Normalize((3.5, -7.25), (0.3, 1e3), "float16")]
    expected = reference(ops, images, ids, SEED, EPOCH)
    for path in ("kernel", "bytewise", "numpy", "generic"):
        assert run(ops, images, ids, path).tobytes() == expected.tobytes(), path


def float32_patterns():
    """float32 values that probe each rounding case: random bits (normals, subnormals, infinities, NaNs),
    every float16 and bfloat16 halfway point and its neighbours, and the edges of both ranges."""
    rng = np.random.default_rng(3)
    bits = [rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32)]
    halves = np.arange(2**16, dtype=np.uint32)
    for width in (13, 16):  # float16's (relative to a float32 with the same exponent) and bfloat16's dropped bits
        grid = rng.integers(0, 2**32, 30000, dtype=np.uint64).astype(np.uint32) & ~np.uint32((1 << width) - 1)
        tie = grid | np.uint32(1 << (width - 1))
        bits += [tie, tie - np.uint32(1), tie + np.uint32(1), grid]
    as_half = halves.astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32)  # every float16 value
    bits += [as_half, as_half + np.uint32(1 << 12), as_half + np.uint32(1 << 12) - np.uint32(1), as_half + np.uint32(1)]
    values = np.concatenate(bits).view(np.float32)
    edges = np.array([65504, 65519.99, 65520, 65536, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 2.0**-14, 3.4e38,
                      -0.0, 0.0, np.inf, -np.inf, np.nan], dtype=np.float32)
    return np.concatenate([values, edges, -edges])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("path", ["kernel", "bytewise"])
def test_the_kernels_round_float32_to_the_output_dtype_as_numpy_and_ml_dtypes_do(dtype, path):
    # Normalize(0, 1) leaves each float32 as it is (x - 0 and x * 1 are exact), so the output is the rounding alone.
    values = float32_patterns()
    values = values[: values.size // 64 * 64].reshape(-1, 4, 4, 4)
    ids = np.arange(values.shape[0], dtype=np.int64)
    out = run([Normalize(0.0, 1.0, dtype=dtype)], values, ids, path)
    target = pytest.importorskip("ml_dtypes").bfloat16 if dtype == "bfloat16" else np.float16
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(target)
    nan = np.isnan(values)
    # NaNs stay NaN with their sign (float16's payload: NumPy's and the hardware's conversions differ there).
    assert np.isnan(out.astype(np.float32)[nan]).all()
    assert (np.signbit(out.astype(np.float32)[nan]) == np.signbit(values[nan])).all()
    if dtype == "bfloat16":
        assert out.tobytes() == expected.tobytes()
    else:
        assert out.view(np.uint16)[~nan].tobytes() == expected.view(np.uint16)[~nan].tobytes()


def test_the_rounding_rule_is_the_stated_one_not_a_division():
    # (x - mean) * float32(1 / std) differs from (x - mean) / std for some values: the rule says which one.
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    op = Normalize(0.0, 3.0)
    out = run([op], x, np.zeros(1, dtype=np.int64), "kernel")
    centred = x.astype(np.float32)
    assert out.tobytes() == (centred * np.float32(1 / 3)).tobytes()
    assert out.tobytes() != (centred / np.float32(3)).tobytes()


def test_output_dtype_and_shape_tell_the_pipeline_what_to_allocate():
    assert augment.output_dtype([RandomFlip()], np.uint8) == np.uint8
    assert augment.output_dtype([RandomFlip(), Normalize(0, 1, "float16")], np.uint8) == np.float16
    assert augment.output_dtype([Normalize(0, 1, "bfloat16")], np.uint8).name == "bfloat16"
    assert augment.output_dtype([], np.int16) == np.int16
    assert augment.output_shape([RandomCrop(2)], (10, 8, 8, 3)) == (10, 8, 8, 3)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: Normalize(0, 0), ValueError, ["std", "> 0", "Fix"]),
        (lambda: Normalize(0, 1, dtype="int8"), ValueError, ["dtype", "float32, float16, bfloat16", "Fix"]),
        (lambda: Normalize((1, 2), (1, 2, 3)), ValueError, ["2 values", "std 3"]),
        (lambda: Normalize("a", 1), TypeError, ["mean", "'a'", "Fix"]),
        (lambda: Normalize(float("nan"), 1), ValueError, ["finite", "Fix"]),
        (lambda: Normalize(0, 1e-40), ValueError, ["overflows float32", "Fix"]),
        # These gave all-zero and all-infinite batches without a word:
        (lambda: Normalize(0, (1, 1e300, 1)), ValueError, ["rounds to 0 in float32", "every pixel", "Fix"]),
        (lambda: Normalize((0, 1e40, 0), 1), ValueError, ["beyond float32's range", "1e+40", "Fix"]),
    ],
)
def test_bad_normalize_arguments_are_refused_naming_the_rule_the_value_and_the_fix(make, error, words):
    with pytest.raises(error) as raised:
        make()
    for word in words:
        assert word in str(raised.value)


def test_normalize_must_come_last_and_fit_the_channels():
    with pytest.raises(ValueError, match=r"must be the last op.*Fix: move it to the end"):
        check_augment([Normalize(0, 1), RandomFlip()], (4, 8, 8, 3), np.uint8, "x")
    with pytest.raises(ValueError, match=r"2 means or stds but x has 3 channels.*Fix"):
        check_augment([Normalize((1, 2), (1, 2))], (4, 8, 8, 3), np.uint8, "x")
    assert check_augment([Normalize((1, 2, 3), 2, data_format="channels_first")], (4, 3, 8, 8), np.uint8, "x")


def test_normalize_op_by_op_in_a_namespace_without_the_dtype_is_refused_with_the_fix():
    images, ids = xps.asarray(images_of(2, 4, 4)), xps.asarray(np.arange(2))
    for dtype in ("float16", "bfloat16"):
        with pytest.raises(TypeError, match="Fix"):
            apply_augment([Brightness(1), Normalize(0, 1, dtype)], images, ids, SEED, EPOCH, xps)


# ------------------------------------------------------------------ Normalize through the Loader
def loader_reference(ops, x, seed):
    """Every sample's expected bytes: the array-API reference path over the whole dataset (sample id = row)."""
    previous, augment._host._FAST_PATH_ENABLED = augment._host._FAST_PATH_ENABLED, False
    try:
        out = apply_augment(ops, x, np.arange(len(x), dtype=np.int64), seed, 0, np)
    finally:
        augment._host._FAST_PATH_ENABLED = previous
    return {i: out[i].tobytes() for i in range(len(x))}, out.dtype


def loader_samples(batches):
    found, dtypes = {}, set()
    for bx, by in batches:
        bx, by = np.asarray(bx), np.asarray(by)
        dtypes.add(bx.dtype)
        for image, sample in zip(bx, by.tolist()):
            found[sample] = image.tobytes()
    return found, dtypes


@pytest.mark.parametrize("dtype", NORMALIZE_DTYPES)
@pytest.mark.parametrize("data_format", FORMATS)
def test_the_loader_serves_normalized_batches_equal_to_the_reference_path(dtype, data_format, tmp_path):
    from gpuloader import Loader

    x = in_format(images_of(90, 10, 12, 3, low=0, seed=4), data_format)
    y = np.arange(90, dtype=np.int64)
    ops = [RandomCrop(3, data_format=data_format), RandomFlip(data_format=data_format),
           Cutout(4, data_format=data_format), Normalize((120, 115, 100), (60, 61, 62), dtype, data_format)]
    want, want_dtype = loader_reference(ops, x, seed=5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    loaders = [
        Loader(x, y, batch_size=16, seed=5, augment=ops, verbose=False),  # the host kernel from the store
        Loader(x, y, batch_size=25, seed=5, augment=ops, workers=2, verbose=False),
        Loader(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), batch_size=16, seed=5, augment=ops,
               device="disk", verbose=False),
    ]
    for loader in loaders:
        found, dtypes = loader_samples(loader.get_numpy_iterator())
        assert dtypes == {want_dtype} and found == want, loader.placement


def test_the_stand_in_gpu_serves_the_normalized_batches_of_the_host(fake_gpu, monkeypatch):
    from gpuloader import Loader

    x, y = images_of(64, 8, 8, 3, low=0), np.arange(64, dtype=np.int64)
    ops = [RandomCrop(2), RandomFlip(), Cutout(3), Normalize(127.5, 64.0)]
    want, _ = loader_reference(ops, x, seed=5)
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(fake_gpu, "gather_augment", lambda table, leaf: None)  # the ops one by one
        loader = Loader(x, y, batch_size=16, seed=5, augment=ops, device="gpu", verbose=False)
        launched = fake_gpu.state.augment_kernels
        batches = [prepared(loader, i)[1] for i in range(len(loader))]
        found, dtypes = loader_samples(batches)
        assert dtypes == {np.dtype(np.float32)} and found == want
        assert fake_gpu.state.augment_kernels - launched == (len(loader) if kernel else 0)


def test_bfloat16_batches_reach_tensorflow_and_torch_without_a_copy():
    from gpuloader.gather import aligned_empty
    from gpuloader.handoff import hand_off

    tf = pytest.importorskip("tensorflow")
    batch = aligned_empty((4, 3), augment.output_dtype([Normalize(0, 1, "bfloat16")], np.uint8))
    batch[:] = np.arange(12).reshape(4, 3)
    tensor = hand_off(batch, "tensorflow")
    assert tensor.dtype == tf.bfloat16 and tensor.numpy().astype(np.float32).tolist() == batch.astype(
        np.float32).tolist()
    batch[0, 0] = 7  # the tensor reads the batch's own buffer
    assert float(tensor.numpy()[0, 0]) == 7.0
    torch = pytest.importorskip("torch")
    shared = hand_off(batch, "torch")
    assert shared.dtype == torch.bfloat16 and shared.data_ptr() == batch.ctypes.data


def test_a_model_fits_on_bfloat16_batches():
    import keras

    from gpuloader import Loader

    x, y = images_of(64, 8, 8, 3, low=0), (np.arange(64) % 2).astype(np.float32)
    ops = [RandomFlip(data_format="channels_last"), Normalize(127.5, 64.0, "bfloat16")]
    loader = Loader(x, y, batch_size=16, seed=1, augment=ops, verbose=False)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(loader, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_a_normalize_on_the_unit_scale_over_uint8_pixels_is_warned_about_at_the_users_line():
    from gpuloader import Loader

    images = np.zeros((16, 8, 8, 3), np.uint8)
    imagenet = Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # torchvision's [0, 1] habit
    with pytest.warns(UserWarning, match=r"on the \[0, 1\] scale.*uint8.*mean=\(123\.675, 116\.28, 103\.53\)") as seen:
        Loader(images, None, batch_size=8, augment=[imagenet], verbose=False)
    assert seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Loader(images, None, batch_size=8, augment=[Normalize(127.5, 64.0)], verbose=False)
        Loader(images.astype(np.float32) / 255, None, batch_size=8, augment=[imagenet], verbose=False)


def test_augment_same_inside_a_list_says_it_takes_the_whole_lists_place():
    from gpuloader import Loader

    images = np.zeros((16, 8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match=r"inside a list; augment\.Same takes the place of the whole list"):
        Loader(images, images[..., 0], batch_size=8, verbose=False,
               augment={"x": [RandomFlip()], "y": [augment.Same("x")]})


def test_bool_masks_take_true_or_false_as_their_fill():
    from gpuloader import Loader

    images = np.random.default_rng(5).integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
    masks = images[..., 0] > 127
    loader = Loader(images, masks, batch_size=16, seed=0, shuffle=False, verbose=False,
                    augment={"x": [Cutout(size=4)], "y": augment.Same("x", fill=False)})
    x_batch, y_batch = (np.asarray(part) for part in loader[0])
    painted = (x_batch == 0).all(axis=-1) & (images != 0).any(axis=-1)
    assert painted.any() and not y_batch[painted].any()
    assert Cutout(size=2, fill=True).fill == 1
