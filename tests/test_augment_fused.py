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


# ------------------------------------------------------------------ the CUDA kernel's text, run on the host
_CUDA_ON_THE_HOST = r"""
#include <cstring>
struct gl_dim3 { unsigned int x; };
static gl_dim3 blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __syncthreads() ((void)0)
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
unsigned long long shared[1 << 16];
"""


def cuda_text_on_the_host(tmp_path):
    """``_cuda.augment_kernel_source()`` compiled by the host's C++ compiler with one thread per block."""
    import ctypes
    import subprocess

    from gpuloader import _cuda

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA kernel's text for the host")
    # The CUDA prefix defines GL_FUNCTION with __device__ __forceinline__, which the stubs above empty.
    source = tmp_path / "kernel.cpp"
    source.write_text(_CUDA_ON_THE_HOST + _cuda.augment_kernel_source())
    library = tmp_path / "kernel.so"
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    kernel = ctypes.CDLL(str(library)).gpuloader_gather_augment
    pointer, i64, u32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_uint
    i32 = ctypes.c_int
    kernel.argtypes = [pointer, pointer, i64, pointer, pointer, i64, pointer, i64, pointer, u32, u32, i64, i64, i64,
                       i64, i64, i32, i32, pointer, pointer]
    kernel.restype = None
    return kernel


def test_the_cuda_kernel_text_run_on_the_host_gives_the_reference_bytes(tmp_path):
    from test_augment import STANDARD, images_of, reference

    kernel = cuda_text_on_the_host(tmp_path)
    recipes = [
        STANDARD,
        [RandomFlip(), RandomCrop(3, mode="constant", fill=9), Cutout(5, fill=2), RandomCrop(1)],
        [Cutout(7), RandomFlip(), RandomFlip(), Cutout(2, fill=3)],
    ]
    id_table = np.arange(40, dtype=np.int64) * 7 + 3  # the dataset index of each stored row
    for channels in (None, 1, 3, 5):
        store = images_of(40, 7, 9, channels)
        shuffled = np.random.default_rng(channels or 0).permutation(40)[:23].astype(np.int64)
        for rows in (shuffled, slice(5, 30)):
            index, first = (rows.ctypes.data, 0) if isinstance(rows, np.ndarray) else (None, rows.start)
            chosen = rows if isinstance(rows, np.ndarray) else np.arange(rows.start, rows.stop)
            for ops in recipes:
                table = fused.fused_ops(ops, store.dtype, channels or 1)
                keys = np.ascontiguousarray(table.keys(11, 2))
                fills = np.frombuffer(table.fills or b"\0", np.uint8)
                out = np.zeros((len(chosen), *store.shape[1:]), store.dtype)
                kernel(store.ctypes.data, index, first, id_table.ctypes.data, keys.ctypes.data, sum(table.draws),
                       table.table.ctypes.data, len(table.table), fills.ctypes.data, table.or_slots,
                       table.and_slots, len(chosen), 7, 9, 1, table.pixel_bytes, 0, 0, None, out.ctypes.data)
                np.testing.assert_array_equal(out, reference(ops, store[chosen], id_table[chosen], 11, 2))
