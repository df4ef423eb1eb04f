"""``augment.Same``: a mask (any image-shaped input) gets its images' draws and stays in register, bit for bit.

The mask of each test is a function of its image (``mask = image[..., 0] > 127``
or the channel itself), and the images hold values in [1, 254]: a 0 in an
augmented image can only be its fill, and a 255 in the mask only the mask's.
So a pair is in register exactly when ``mask == where(image == 0, 255, f(image))``,
checked batch by batch through the iterators ``fit`` uses, on every tier and path.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import ClassVar

import numpy as np
import pytest
from conftest import prepared, prepared_parts

from gpuloader import Loader, augment
from gpuloader.augment import apply_augment, fused
from gpuloader.augment import plan as plan_lib

N, SIZE = 96, 12
IGNORE = 255


def pairs(n=N, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 255, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    return images, images[..., 0].copy()  # the mask: the first channel itself


def ops(crop_mode="constant"):
    crop = augment.RandomCrop(padding=3, mode=crop_mode)
    return [crop, augment.RandomFlip(), augment.Cutout(size=4)]


class VerticalFlip(augment.AugmentOp):
    """An op of one's own that moves pixels (up-down, with probability 1/2)."""

    draws = 1
    geometric = True

    def apply(self, images, bits, xp):
        flip = xp.reshape((bits[:, 0] >> 63) == 1, (images.shape[0], 1, 1, 1))
        return xp.where(flip, xp.flip(images, axis=1), images)

    def for_target(self, fill):
        return self


class Draws(augment.AugmentOp):
    """An op of one's own that draws a word and changes no pixel: a follower skips it, keeping its place."""

    draws = 1

    def apply(self, images, bits, xp):
        return images + 0

    def for_target(self, fill):
        return None


class Mine(augment.AugmentOp):
    """An op of one's own that does not say what a follower gets."""

    draws = 1

    def apply(self, images, bits, xp):
        return images + 0


def in_register(image_batch, mask_batch) -> None:
    image0 = np.asarray(image_batch)[..., 0]
    mask = np.asarray(mask_batch)
    np.testing.assert_array_equal(mask, np.where(image0 == 0, IGNORE, image0))


def check_pass(batches) -> tuple[int, int]:
    """Every pair of every batch in register; returns (samples, painted mask pixels)."""
    samples = painted = 0
    for x, y in batches:
        in_register(x, y)
        samples += len(np.asarray(y))
        painted += int(np.sum(np.asarray(y) == IGNORE))
    return samples, painted


def pair_loader(x, y, image_ops=None, **kwargs):
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("batch_size", 16)
    image_ops = ops() if image_ops is None else image_ops
    return Loader(x, y, augment={"x": image_ops, "y": augment.Same("x", fill=IGNORE)}, verbose=False, **kwargs)


@pytest.mark.parametrize("crop_mode", ["constant", "reflect"])
@pytest.mark.parametrize("path", ["host kernel", "NumPy path", "own ops"])
def test_a_mask_stays_in_register_on_the_host_epoch_after_epoch(monkeypatch, path, crop_mode):
    image_ops = ops(crop_mode)
    if path == "host kernel" and fused.host_kernel() is None:
        pytest.skip(fused.host_kernel_missing())
    if path == "NumPy path":
        monkeypatch.setattr(fused, "_HOST_KERNEL_ENABLED", False)
    if path == "own ops":  # a photometric op in the middle: the mask skips it and keeps the next ops' draws
        image_ops = [image_ops[0], Draws(), VerticalFlip(), *image_ops[1:]]
    x, y = pairs()
    loader = pair_loader(x, y, image_ops)
    want = {"host kernel": plan_lib.FROM_STORE, "NumPy path": plan_lib.NUMPY, "own ops": plan_lib.NUMPY}[path]
    assert [a.path for a in loader.pipeline.augmentations] == [want, want]
    first = list(loader.get_numpy_iterator())
    second = list(loader.get_numpy_iterator())  # the next epoch: other draws, still in register
    for batches in (first, second):
        samples, painted = check_pass(batches)
        assert samples == N and painted > 0
    assert not np.array_equal(np.concatenate([b[1] for b in first]), np.concatenate([b[1] for b in second]))
    moved = np.concatenate([b[1] for b in first]) != np.concatenate([b[1] for b in list(Loader(
        x, y, batch_size=16, seed=7, verbose=False).get_numpy_iterator())])
    assert moved.mean() > 0.3  # it did move the masks


def test_a_mask_on_disk_stays_in_register(tmp_path):
    x, y = pairs()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    loader = pair_loader(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), device="disk")
    assert loader.placement == "disk"
    want = plan_lib.ON_BATCH if fused.host_kernel() is not None else plan_lib.NUMPY
    assert [a.path for a in loader.pipeline.augmentations] == [want, want]
    samples, painted = check_pass(loader.get_numpy_iterator())
    assert samples == N and painted > 0


@pytest.mark.parametrize("kernel", ["fused kernel", "array API"])
def test_a_mask_on_the_stand_in_gpu_stays_in_register(fake_gpu, monkeypatch, kernel):
    if kernel == "fused kernel" and fused.host_kernel() is None:
        pytest.skip(fused.host_kernel_missing())
    if kernel == "array API":
        monkeypatch.setattr(fake_gpu, "gather_augment", lambda table, leaf, followers=(): None)
    x, y = pairs()
    loader = pair_loader(x, y, device="gpu")
    assert loader.placement == "gpu"
    want = plan_lib.CUDA if kernel == "fused kernel" else plan_lib.ARRAY_API
    assert [a.path for a in loader.pipeline.augmentations] == [want, want]
    batches = [[np.from_dlpack(part) for part in prepared(loader, i)[1]] for i in range(len(loader))]
    samples, painted = check_pass(batches)
    assert samples == N and painted > 0
    # one launch a batch writes the images and their masks (one trace per sample)
    assert fake_gpu.state.augment_kernels == (len(loader) if kernel == "fused kernel" else 0)


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_a_mask_on_gpus_under_a_strategy_stays_in_register(monkeypatch, layout):
    from fake_gpu import make_runtime

    from gpuloader import placement, replicas

    x, y = pairs()
    runtime = make_runtime(gpus=2)
    row_bytes = SIZE * SIZE * 3 + 8 + SIZE * SIZE  # image, id, mask
    if layout == "sharded":  # a 1/2 share fits the 0.5 budget, a whole copy does not
        share = N // 2
        runtime.state.free_bytes = 2 * (share * row_bytes + 4 * 8 * row_bytes + 24 * share) + 64
    monkeypatch.setattr(placement, "gpu_runtime", lambda: runtime)
    monkeypatch.setattr(replicas, "strategy_replica_devices", lambda: ["/gpu:0", "/gpu:1"])
    monkeypatch.setattr(replicas, "gpu_ordinals", lambda devices: [0, 1])
    ids = np.arange(N, dtype=np.int64)
    plan = {"image": ops(), "y": augment.Same("image", fill=IGNORE)}

    def loader(device):
        return Loader({"image": x, "id": ids}, y, batch_size=16, seed=7, drop_remainder=True, augment=plan,
                      device=device, verbose=False)

    on_gpus = loader("auto")
    assert on_gpus.plan.layout == layout
    parts = [part for i in range(len(on_gpus)) for part in prepared_parts(on_gpus, i, 0)]
    got = {}
    for _, (image, sample, mask) in parts:
        image, mask = np.from_dlpack(image), np.from_dlpack(mask)
        in_register(image, mask)
        got.update((int(i), (im.tobytes(), m.tobytes())) for i, im, m in zip(np.from_dlpack(sample), image, mask))
    want = {int(i): (im.tobytes(), m.tobytes()) for xb, yb in loader("host").get_numpy_iterator()
            for i, im, m in zip(np.asarray(xb["id"]), np.asarray(xb["image"]), np.asarray(yb))}
    assert len(got) == len(on_gpus) * 16 and all(got[i] == want[i] for i in got)  # each sample's own pair
    if fused.host_kernel() is not None:
        assert runtime.state.augment_kernels == len(parts)  # image and mask in one launch, each replica's own


def test_masks_with_worker_shards_stay_in_register_and_together_make_one_process_masks():
    x, y = pairs()
    ids = np.arange(N, dtype=np.int64)
    union = {}
    for index in range(3):
        shard = Loader({"image": x, "id": ids}, y, batch_size=8, seed=7, num_shards=3, shard_index=index,
                       augment={"image": ops(), "y": augment.Same("image", fill=IGNORE)}, verbose=False)
        for x_batch, y_batch in shard.get_numpy_iterator():
            in_register(x_batch["image"], y_batch)
            for sample, mask in zip(np.asarray(x_batch["id"]).tolist(), np.asarray(y_batch)):
                assert sample not in union
                union[sample] = mask.tobytes()
    whole = Loader({"image": x, "id": ids}, y, batch_size=8, seed=7,
                   augment={"image": ops(), "y": augment.Same("image", fill=IGNORE)}, verbose=False)
    one = {s: m.tobytes() for xb, yb in whole.get_numpy_iterator()
           for s, m in zip(np.asarray(xb["id"]).tolist(), np.asarray(yb))}
    assert union == one


@pytest.mark.parametrize("stream", [0, 2])
def test_the_mask_gets_its_own_fill_in_the_crop_border_and_the_cutout(stream):
    x, y = pairs()
    ids = np.arange(N, dtype=np.int64)
    image_ops = augment.Stream(ops(), stream) if stream else ops()  # a follower draws from its input's stream
    loader = Loader({"image": x, "id": ids}, y, batch_size=16, seed=7, verbose=False,
                    augment={"image": image_ops, "y": augment.Same("image", fill=IGNORE)})
    got = {}
    for x_batch, y_batch in loader.get_numpy_iterator():
        got.update(zip(np.asarray(x_batch["id"]).tolist(), np.asarray(y_batch)))
    masks = np.stack([got[i] for i in range(N)])
    # The reference path, with the mask's ops written out by hand: the same crop and cutout, filled with 255.
    by_hand = [augment.RandomCrop(padding=3, mode="constant", fill=IGNORE), augment.RandomFlip(),
               augment.Cutout(size=4, fill=IGNORE)]
    previous, augment._host._FAST_PATH_ENABLED = augment._host._FAST_PATH_ENABLED, False
    try:
        want = apply_augment(by_hand, y, ids, 7, 0, np, stream=stream)
    finally:
        augment._host._FAST_PATH_ENABLED = previous
    np.testing.assert_array_equal(masks, want)
    border_rows = np.all(masks == IGNORE, axis=2).sum()  # whole rows of the crop's border
    assert border_rows > 0
    cutout = (masks == IGNORE) & ~np.all(masks == IGNORE, axis=2, keepdims=True) & ~np.all(
        masks == IGNORE, axis=1, keepdims=True)  # painted pixels in neither a painted row nor column
    assert cutout.any()
    assert not np.any(y == IGNORE) and np.mean(masks == 0) == 0  # 255 is the mask's fill, never the image's 0


def test_fit_trains_a_segmentation_model_on_pairs_in_register():
    import keras

    x, channel = pairs(n=64)
    masks = (channel > 127).astype(np.uint8)  # two classes, 255 ignored
    seen = []

    def spy(batch, xp):  # runs on every batch fit trains on, after the augmentation
        seen.append((np.asarray(batch[0]).copy(), np.asarray(batch[1]).copy()))
        return batch

    loader = Loader(x, masks, batch_size=16, seed=5, transform=spy, verbose=False,
                    augment={"x": ops(), "y": augment.Same("x", fill=IGNORE)})
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(2, 3, padding="same")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE))
    history = model.fit(loader, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert len(seen) >= 2 * len(loader)
    painted = 0
    for images, mask in seen:
        image0 = images[..., 0]
        np.testing.assert_array_equal(mask, np.where(image0 == 0, IGNORE, image0 > 127))
        painted += int(np.sum(mask == IGNORE))
    assert painted > 0


def test_a_mask_without_a_fill_is_refused_when_the_ops_paint_and_needs_none_when_they_only_move():
    x, y = pairs()
    with pytest.raises(ValueError, match=r"paints pixels.*augment.Same\('x', fill=255\)"):
        Loader(x, y, augment={"x": ops(), "y": augment.Same("x")}, verbose=False)
    moving = [augment.RandomCrop(padding=3), augment.RandomFlip()]
    loader = Loader(x, y, batch_size=16, seed=3, augment={"x": moving, "y": augment.Same("x")}, verbose=False)
    for x_batch, y_batch in loader.get_numpy_iterator():
        np.testing.assert_array_equal(np.asarray(x_batch)[..., 0], np.asarray(y_batch))


@pytest.mark.parametrize(
    ("augment_value", "message"),
    [
        ({"x": ops(), "y": augment.Same("z", fill=1)}, r"augment.Same\('z'\) names input 'z', but x is one array"),
        ({"y": augment.Same("x", fill=1)}, r"names x, which has no ops of its own"),
        ({"x": ops(), "y": augment.Same("x", fill=256)}, r"\(fill=256\) must be a value y's dtype uint8"),
        ({"x": [Draws(), VerticalFlip()], "y": augment.Same("x")}, None),
        ({"x": [Mine()], "y": augment.Same("x")}, r"cannot tell what Mine does.*define for_target"),
    ],
)
def test_a_bad_same_is_refused_at_construction_with_the_fix(augment_value, message):
    x, y = pairs()
    if message is None:  # accepted: a photometric op first, then one that moves pixels
        Loader(x, y, augment=augment_value, verbose=False)
        return
    with pytest.raises((TypeError, ValueError), match=message):
        Loader(x, y, augment=augment_value, verbose=False)


def test_an_input_of_a_dict_y_is_named_as_a_part_and_its_key():
    x, y = pairs()
    labels = np.arange(N)
    loader = Loader(x, {"label": labels, "mask": y}, batch_size=16, seed=7, verbose=False,
                    augment={"x": ops(), ("y", "mask"): augment.Same("x", fill=IGNORE)})
    samples, painted = check_pass((xb, yb["mask"]) for xb, yb in loader.get_numpy_iterator())
    assert samples == N and painted > 0
    with pytest.raises(ValueError, match=r"key 'y' names y, which is a nest of arrays.*\('y', 'mask'\)"):
        Loader(x, {"mask": y, "label": labels}, augment={"x": ops(), "y": augment.Same("x", fill=IGNORE)},
               verbose=False)
    with pytest.raises(ValueError, match=r"key 'y' is ambiguous.*\('x', 'y'\) for x\['y'\]"):
        Loader({"image": x, "y": x}, y, augment={"image": ops(), "y": augment.Same("image", fill=IGNORE)},
               verbose=False)
    with pytest.raises(ValueError, match=r"augment names y twice"):
        Loader(x, y, augment={"x": ops(), "y": [], ("y",): []}, verbose=False)


def test_a_mask_of_another_size_is_refused():
    x, y = pairs()
    with pytest.raises(ValueError, match=r"differ in size: \(11, 12\) against \(12, 12\)"):
        Loader(x, y[:, :11], augment={"x": ops(), "y": augment.Same("x", fill=IGNORE)}, verbose=False)


# ------------------------------------------------------------------ warnings
def left_behind(record) -> list[str]:
    return [str(w.message) for w in record if "gives y no ops" in str(w.message)]


def test_an_image_shaped_y_left_without_ops_is_warned_about_once_naming_the_fix():
    x, y = pairs()
    with pytest.warns(UserWarning) as record:
        Loader(x, y, augment=ops(), verbose=False)
    messages = left_behind(record)
    assert len(messages) == 1
    assert "RandomCrop, RandomFlip" in messages[0] and "augment.Same('x', fill=255)" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Loader(x, y, augment={"x": ops(), "y": []}, verbose=False)  # said: y is not aligned with x
        Loader(x, np.arange(N), augment=ops(), verbose=False)  # labels: no image shape
        Loader(x, y, augment=[augment.Cutout(size=4)], verbose=False)  # nothing moves: y stays in register
        pair_loader(x, y)


def test_a_y_at_the_images_size_divided_by_an_integer_left_without_ops_is_warned_about_at_the_users_line():
    x, _ = pairs()  # 12 x 12 images
    half = np.zeros((N, 6, 6), np.uint8)  # an output-stride-2 mask
    with pytest.warns(UserWarning, match=r"gives y no ops, and y \(\d+, 6, 6\) is x's height and width divided "
                      r"by 2.*augment=\{\.\.\., 'y': \[\]\}") as record:
        Loader(x, half, augment=ops(), verbose=False)
    assert [w.filename for w in record if "divided by" in str(w.message)] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Loader(x, half, augment={"x": ops(), "y": []}, verbose=False)
        Loader(x, np.zeros((N, 5, 6), np.uint8), augment=ops(), verbose=False)  # not a scaled copy of the images


def test_channels_first_looking_images_are_warned_about_naming_data_format():
    x, _ = pairs()
    first = np.ascontiguousarray(np.moveaxis(x, 3, 1))  # (n, 3, 12, 12)
    with pytest.warns(UserWarning, match=r"looks channels_first.*Loader\(\.\.\., data_format='channels_first'\)"):
        Loader(first, np.arange(N), augment=[augment.RandomFlip()], data_format="channels_last", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Loader(x, np.arange(N), augment=[augment.RandomFlip()], data_format="channels_last", verbose=False)


def test_the_loaders_data_format_reaches_the_ops_without_their_own_and_defaults_to_keras(monkeypatch):
    import keras

    @dataclasses.dataclass(frozen=True)
    class Reads(augment.AugmentOp):
        data_format: str | None = None
        draws: ClassVar[int] = 0
        seen: ClassVar[list] = []

        def apply(self, images, bits, xp):
            Reads.seen.append(self.data_format)
            return images + 0

    x, y = pairs()
    first = np.ascontiguousarray(np.moveaxis(x, 3, 1))
    next(iter(Loader(first, y, augment=[Reads()], data_format="channels_first", verbose=False)))
    next(iter(Loader(x, y, augment=[Reads(data_format="channels_last")], data_format="channels_first",
                     verbose=False)))
    monkeypatch.setattr(keras.config, "image_data_format", lambda: "channels_first")
    next(iter(Loader(first, y, augment=[Reads()], verbose=False)))
    assert Reads.seen == ["channels_first", "channels_last", "channels_first"]
    with pytest.raises(ValueError, match=r"data_format must be 'channels_last'.*received 'NHWC'"):
        Loader(x, y, augment=[Reads()], data_format="NHWC", verbose=False)


def test_an_op_without_data_format_is_refused_for_channels_first_images():
    x, y = pairs()
    first = np.ascontiguousarray(np.moveaxis(x, 3, 1))
    with pytest.raises(ValueError, match=r"reads channels_last images only"):
        Loader(first, y, augment=[VerticalFlip()], data_format="channels_first", verbose=False)


# ------------------------------------------------------------------ one pass writes the images and their masks
def one_pass_case(data_format, mask_dtype, n=40, size=16):
    """Images and a mask each (values never equal to a fill), the ops, the mask's fill and the mask's ops written
    by hand (what ``augment.Same`` gives it); ``size`` 16: a uint8 mask's rows are one 16-byte chunk."""
    rng = np.random.default_rng(3)
    images = rng.integers(1, 255, size=(n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, 100, size=(n, size, size)).astype(mask_dtype)
    if data_format == "channels_first":
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        masks = np.ascontiguousarray(masks[:, None])  # (n, 1, H, W)
    fill = 255 if mask_dtype == np.uint8 else -1  # an "ignore" label

    def made(fill_value):
        return [augment.RandomCrop(padding=3, mode="constant", fill=fill_value, data_format=data_format),
                augment.RandomFlip(data_format=data_format),
                augment.Cutout(size=5, fill=fill_value, data_format=data_format)]

    return images, masks, made(0), fill, made(fill)


@pytest.mark.parametrize("tier", ["host", "disk", "stand-in GPU"])
@pytest.mark.parametrize("mask_dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_one_pass_writes_the_images_and_their_masks_with_the_reference_bytes(
    tmp_path, request, tier, mask_dtype, data_format
):
    from test_augment import reference

    if fused.host_kernel() is None:
        pytest.skip(fused.host_kernel_missing())
    images, masks, image_ops, fill, mask_ops = one_pass_case(data_format, mask_dtype)
    device = {"host": "host", "disk": "disk", "stand-in GPU": "gpu"}[tier]
    x, y = images, masks
    if tier == "disk":
        np.save(tmp_path / "x.npy", images)
        np.save(tmp_path / "y.npy", masks)
        x, y = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    if tier == "stand-in GPU":
        request.getfixturevalue("fake_gpu")
    loader = Loader(x, y, batch_size=16, seed=7, shuffle=False, device=device, data_format=data_format,
                    augment={"x": image_ops, "y": augment.Same("x", fill=fill)}, verbose=False)
    assert loader.placement == device
    path = {"host": plan_lib.FROM_STORE, "disk": plan_lib.ON_BATCH, "stand-in GPU": plan_lib.CUDA}[tier]
    # loader.plan says the mask is written in its images' pass (one trace per sample for both)
    follower = re.escape(path) + r", in x( \('[^']*'\))?'s pass \(one trace per sample writes both\)"
    assert re.search(r"; y( \('[^']*'\))? \(x[^;]*'s draws\): " + follower, loader.plan.reason), loader.plan.reason
    got_x, got_y = [], []
    for position in range(len(loader)):
        batch_x, batch_y = prepared(loader, position, 0)[1]
        got_x.append(np.from_dlpack(batch_x))
        got_y.append(np.from_dlpack(batch_y))
    ids = np.arange(len(images), dtype=np.int64)  # unshuffled: batch rows in order, each keyed by its index
    np.testing.assert_array_equal(np.concatenate(got_x), reference(image_ops, images, ids, 7, 0))
    want = reference(mask_ops, masks, ids, 7, 0)
    np.testing.assert_array_equal(np.concatenate(got_y), want)
    assert np.any(want == fill) and np.concatenate(got_y).dtype == mask_dtype


def test_a_mask_whose_images_run_op_by_op_keeps_a_pass_of_its_own_and_the_plan_says_why():
    from test_augment import reference

    if fused.host_kernel() is None:
        pytest.skip(fused.host_kernel_missing())
    rng = np.random.default_rng(5)
    images = rng.standard_normal((32, 16, 16, 3)).astype(np.float16)  # Normalize reads no float16 in the kernel
    masks = rng.integers(0, 100, size=(32, 16, 16)).astype(np.uint8)
    moves = [augment.RandomCrop(padding=2, mode="constant"), augment.RandomFlip()]
    loader = Loader(images, masks, batch_size=8, seed=7, shuffle=False, verbose=False,
                    augment={"x": [*moves, augment.Normalize(0.5, 2.0)], "y": augment.Same("x", fill=255)})
    assert [a.path for a in loader.pipeline.augmentations] == [plan_lib.NUMPY, plan_lib.FROM_STORE]
    assert ("y (x's draws): the host kernel, reading the stored images, in a pass of its own (its draws traced "
            "again) since x runs op by op on the NumPy path") in loader.plan.reason
    got = np.concatenate([np.asarray(prepared(loader, i, 0)[1][1]) for i in range(len(loader))])
    by_hand = [augment.RandomCrop(padding=2, mode="constant", fill=255), augment.RandomFlip()]
    np.testing.assert_array_equal(got, reference(by_hand, masks, np.arange(32, dtype=np.int64), 7, 0))
