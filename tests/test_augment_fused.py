"""The fused kernel of the built-in ops: which lists it takes, its checks, and that it is built where it can be.

Its bytes are checked in tests/test_augment.py (paths ``kernel`` and ``bytewise``, the
latter the CUDA kernel's byte loop run on the host) and tests/test_loader_augment.py.
"""

from __future__ import annotations

import shutil
import sysconfig

import numpy as np
import pytest

from gpuloader.augment import Cutout, RandomCrop, RandomFlip, fused

needs_kernel = pytest.mark.skipif(fused.host_kernel() is None, reason=fused.host_kernel_missing() or "")


def test_the_kernel_is_built_wherever_a_c_compiler_is():
    # setup.py builds it as an optional extension: a failed build must not pass unnoticed on CI.
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here; the NumPy path runs instead")
    assert fused.host_kernel() is not None, fused.host_kernel_missing()


def test_a_list_of_built_in_ops_is_a_table_with_one_fill_slot_per_painting_op():
    ops = [RandomCrop(2), RandomFlip(), Cutout(3, fill=7), RandomCrop(1, mode="constant", fill=9)]
    table = fused.fused_ops(ops, np.uint8, 3)
    assert table.table.tolist() == [[1, 2, 0, -1], [3, 0, 2, -1], [4, 3, 3, 0], [2, 1, 5, 1]]
    assert table.fills == bytes([7, 7, 7, 9, 9, 9])
    assert (table.or_slots, table.and_slots) == (0b10, 0b01)
    assert table.pixel_bytes == 3


def test_lists_the_kernel_cannot_run_fall_back_to_the_ops_one_by_one():
    class MyCrop(RandomCrop):
        pass

    class Jitter:
        draws = 1

        def apply(self, images, bits, xp):
            return images + 1

    assert fused.fused_ops([RandomFlip(), Jitter()], np.uint8, 3) is None
    assert fused.fused_ops([MyCrop(2)], np.uint8, 3) is None  # a subclass may change what apply does
    assert fused.fused_ops([Cutout(1)] * fused.MAX_FILL_SLOTS, np.uint8, 3) is not None
    assert fused.fused_ops([Cutout(1)] * (fused.MAX_FILL_SLOTS + 1), np.uint8, 3) is None


@needs_kernel
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rows": np.array([0, 10], dtype=np.int64)}, "row index is outside"),
        ({"rows": np.array([-1, 0], dtype=np.int64)}, "row index is outside"),
        ({"out": np.empty((2, 4, 5, 3), np.uint8)}, "must hold 2 images"),
        ({"out": np.empty((2, 4, 4, 3), np.float32)}, "must hold 2 images"),
        ({"ids": np.zeros(3, dtype=np.int64)}, "bad size"),
    ],
)
def test_the_kernel_refuses_what_would_read_or_write_out_of_bounds(change, message):
    source = np.zeros((10, 4, 4, 3), np.uint8)
    arguments = {
        "rows": np.array([0, 9], dtype=np.int64),
        "ids": np.array([0, 9], dtype=np.int64),
        "out": np.empty((2, 4, 4, 3), np.uint8),
    }
    arguments.update(change)
    table = fused.fused_ops([RandomCrop(2), RandomFlip(), Cutout(2)], np.uint8, 3)
    with pytest.raises(ValueError, match=message):
        fused.gather_augment_host(table, source, arguments["rows"], arguments["ids"], 0, 0, arguments["out"])


@needs_kernel
def test_the_kernel_refuses_a_table_that_does_not_fit_the_images():
    source = np.zeros((10, 4, 4, 3), np.uint8)
    out = np.empty((1, 4, 4, 3), np.uint8)
    rows = np.zeros(1, dtype=np.int64)
    table = fused.fused_ops([RandomCrop(4)], np.uint8, 3)  # padding 4 on 4 x 4 images: no reflection exists
    with pytest.raises(ValueError, match="padding must be in"):
        fused.gather_augment_host(table, source, rows, rows, 0, 0, out)
    with pytest.raises(ValueError, match="overlaps"):
        fused.gather_augment_host(fused.fused_ops([RandomFlip()], np.uint8, 3), source, rows, rows, 0, 0, source[:1])


def test_without_the_kernel_the_reason_and_the_fix_are_stated(monkeypatch):
    monkeypatch.setattr(fused, "_HOST_KERNEL_ENABLED", False)
    assert fused.host_kernel() is None
    with pytest.raises(RuntimeError):
        fused.gather_augment_host(
            fused.fused_ops([RandomFlip()], np.uint8, 1),
            np.zeros((2, 2, 2), np.uint8),
            np.zeros(1, dtype=np.int64),
            np.zeros(1, dtype=np.int64),
            0,
            0,
            np.empty((1, 2, 2), np.uint8),
        )
