"""The fused kernel of the built-in ops: which lists it takes, its checks, and that it is built where it can be.

Its bytes are checked in tests/test_augment.py (paths ``kernel`` and ``bytewise``, the
latter the CUDA kernel's byte loop run on the host) and tests/test_loader_augment.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from gpuloader.augment import Cutout, Normalize, RandomCrop, RandomFlip, check_augment, fused

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
    pointer, i64 = ctypes.c_void_p, ctypes.c_longlong
    kernel.argtypes = [pointer, i64, pointer, pointer, i64, pointer, i64, i64, i64, i64, pointer, i64]
    kernel.restype = None
    return kernel


def cuda_targets(*targets):
    """The CUDA kernel's table of targets (``_cuda.AUGMENT_TARGET_FIELDS``), from ``(table, source, out)`` each;
    the fills and norm arrays it points to are returned too, to be kept alive."""
    from gpuloader import _cuda

    rows, alive = [], []
    for table, source, out in targets:
        fills = np.frombuffer(table.fills or b"\0" * 8, np.uint8)
        norm = np.frombuffer(table.norm or b"\0" * 8, np.float32)
        alive += [fills, norm]
        fields = {"source": source.ctypes.data, "out": out.ctypes.data, "fills": fills.ctypes.data,
                  "norm": norm.ctypes.data, "or_slots": table.or_slots, "and_slots": table.and_slots,
                  "planes": table.planes, "pixel_bytes": table.pixel_bytes, "in_kind": table.in_kind,
                  "out_kind": table.out_kind}
        rows.append([fields[name] for name in _cuda.AUGMENT_TARGET_FIELDS])
    return np.asarray(rows, dtype=np.uint64), alive


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
                out = np.zeros((len(chosen), *store.shape[1:]), store.dtype)
                targets, _alive = cuda_targets((table, store, out))
                kernel(index, first, id_table.ctypes.data, keys.ctypes.data, sum(table.draws),
                       table.table.ctypes.data, len(table.table), len(chosen), 7, 9, targets.ctypes.data, 1)
                np.testing.assert_array_equal(out, reference(ops, store[chosen], id_table[chosen], 11, 2))


def test_the_cuda_kernel_text_writes_the_images_and_their_followers_in_one_launch(tmp_path):
    # augment.Same: one launch writes the images and each follower (its own pixel size, dtype and fills) from the
    # one trace per sample; every target equals the per-sample reference of its own ops.
    from test_augment import images_of, reference

    from gpuloader.augment.targets import follower_ops

    kernel = cuda_text_on_the_host(tmp_path)
    ops = [RandomCrop(3, mode="constant", fill=9), RandomFlip(), Cutout(4, fill=2), RandomCrop(1)]
    id_table = np.arange(40, dtype=np.int64) * 5 + 1
    images = images_of(40, 7, 9, 3)
    followers = [(images_of(40, 7, 9, None, seed=1), 255), (images_of(40, 7, 9, 2, np.float32, seed=2), -1.0)]
    rows = np.random.default_rng(4).permutation(40)[:23].astype(np.int64)
    table = fused.fused_ops(ops, images.dtype, 3)
    keys = np.ascontiguousarray(table.keys(11, 2))
    targets = [(table, images, np.zeros((len(rows), *images.shape[1:]), images.dtype))]
    for follower, fill in followers:
        follower_table = fused.table_for(follower_ops(ops, fill), follower)
        assert fused.shares_draws(table, follower_table)
        targets.append((follower_table, follower, np.zeros((len(rows), *follower.shape[1:]), follower.dtype)))
    rows_table, _alive = cuda_targets(*targets)
    kernel(rows.ctypes.data, 0, id_table.ctypes.data, keys.ctypes.data, sum(table.draws), table.table.ctypes.data,
           len(table.table), len(rows), 7, 9, rows_table.ctypes.data, len(targets))
    np.testing.assert_array_equal(targets[0][2], reference(ops, images[rows], id_table[rows], 11, 2))
    for (follower, fill), (_, _, out) in zip(followers, targets[1:]):
        want = reference(follower_ops(ops, fill), follower[rows], id_table[rows], 11, 2)
        np.testing.assert_array_equal(out, want)
        assert np.any(want == fill)


# ------------------------------------------------------------------ one place for the codes, warning-free C
PIXELS_H = Path(fused.__file__).with_name("_pixels.h")
PIXELS_C = Path(fused.__file__).with_name("_pixels.c")


def test_the_op_codes_and_value_kinds_are_those_of_pixels_h():
    defined = {name: int(value) for name, value in re.findall(r"#define (GL_\w+) (\d+)\n", PIXELS_H.read_text())}
    written = {**fused.OP_CODES, **fused.VALUE_KINDS}
    assert written == {name: defined[name] for name in written}, "fused.py and _pixels.h disagree"
    assert set(defined) == set(written), "a code of _pixels.h is missing from fused.OP_CODES or fused.VALUE_KINDS"
    # every built-in op has its table encoder (a missing one would not fall into another op's branch)
    from gpuloader.augment.ops import GEOMETRIC

    assert set(fused._ENCODERS) == {*GEOMETRIC, Normalize}


def c_compiler():
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) or shutil.which("gcc") or shutil.which("cc")


def test_the_host_kernel_compiles_without_a_warning_under_wall_wextra(tmp_path):
    compiler = c_compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    command = [compiler, "-O2", "-Wall", "-Wextra", "-fPIC", f"-I{sysconfig.get_paths()['include']}", "-c",
               str(PIXELS_C), "-o", str(tmp_path / "pixels.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_cuda_text_compiles_for_the_host_without_a_warning_under_wall_wextra(tmp_path):
    from gpuloader import _cuda

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    source = tmp_path / "kernel.cpp"
    source.write_text(_CUDA_ON_THE_HOST + _cuda.augment_kernel_source())
    result = subprocess.run([compiler, "-O1", "-Wall", "-Wextra", "-fsyntax-only", str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


# ------------------------------------------------------------------ hardening found by fuzzing
def test_reflection_arithmetic_is_64_bit_for_images_over_2_to_the_30_rows(tmp_path):
    # host_trace_axis (for an axis over 2**30 pixels, trace_crop_wide) and the CUDA trace reflect with
    # gl_reflected: with int arithmetic a shifted row past 2**31 wraps negative and is reflected about the wrong edge.
    import ctypes

    compiler = c_compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    harness = tmp_path / "reflect.c"
    harness.write_text(f'#include "{PIXELS_H}"\nlong long reflected(long long c, long long last) '
                       "{ return gl_reflected(c, last); }\n")
    library = tmp_path / "reflect.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(harness)], check=True)
    reflected = ctypes.CDLL(str(library)).reflected
    reflected.argtypes, reflected.restype = [ctypes.c_longlong, ctypes.c_longlong], ctypes.c_longlong
    last = 2**31 - 2  # the largest image: 2**31 - 1 rows
    assert reflected(last + 10, last) == last - 10
    assert reflected(2**30 + 5, 2**30 + 1) == 2**30 - 3
    assert reflected(-(last - 3), last) == last - 3
    assert reflected(5, last) == 5


@needs_kernel
def test_crops_of_axes_over_2_to_the_30_pixels_traced_in_64_bit_give_the_reference_bytes(tmp_path, monkeypatch):
    # host_trace_axis traces in int arithmetic, whose loops vectorise, up to GL_INT_AXIS (2**30) pixels an axis,
    # and a crop of a longer axis in 64-bit arithmetic (trace_crop_wide). No image a test can hold has such an
    # axis: the kernel built with GL_INT_AXIS=0 runs the 64-bit loops on every axis.
    import importlib.util

    from test_augment import images_of, reference

    compiler = c_compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    library = tmp_path / f"_pixels{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-DGL_INT_AXIS=0", f"-I{sysconfig.get_paths()['include']}",
                    str(PIXELS_C), "-o", str(library)], check=True)
    spec = importlib.util.spec_from_file_location("_pixels", library)
    wide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wide)
    built = fused.host_kernel()
    recipes = [
        [RandomCrop(4, mode="reflect"), RandomFlip(), Cutout(3)],
        [RandomCrop(6, mode="constant", fill=9), RandomCrop(2)],
        [RandomFlip(), RandomCrop(4, mode="constant"), Cutout(5, fill=2), RandomCrop(3, mode="reflect")],
    ]
    for channels in (None, 3):
        store = images_of(60, 7, 9, channels)
        rows = np.random.default_rng(1).permutation(60)[:41].astype(np.int64)
        for ops in recipes:
            table = fused.fused_ops(ops, store.dtype, channels or 1)
            outs = []
            for kernel in (wide, built):
                monkeypatch.setattr(fused, "host_kernel", lambda kernel=kernel: kernel)
                out = np.empty((len(rows), *store.shape[1:]), store.dtype)
                outs.append(fused.gather_augment_host(table, store, rows, rows * 3 + 1, 11, 2, out))
            np.testing.assert_array_equal(outs[0], reference(ops, store[rows], rows * 3 + 1, 11, 2))
            np.testing.assert_array_equal(outs[1], outs[0])


def entry_point_arguments(**change):
    """The private entry point's arguments for a valid call (2 images of 4 x 4 x 3 uint8), with ``change``."""
    source = np.zeros((10, 4, 4, 3), np.uint8)
    table = fused.fused_ops([RandomCrop(2), RandomFlip(), Cutout(2)], np.uint8, 3)
    arguments = {
        "source": source, "rows": np.array([0, 9], np.int64), "ids": np.array([0, 9], np.int64),
        "keys": np.ascontiguousarray(table.keys(0, 0)), "ops": table.table, "fills": table.fills,
        "or_slots": table.or_slots, "and_slots": table.and_slots, "height": 4, "width": 4, "planes": 1,
        "pixel_bytes": 3, "out": np.empty((2, 4, 4, 3), np.uint8), "bytewise": False, "in_kind": 0,
        "out_kind": 0, "norm": b"",
    }
    arguments.update(change)
    return list(arguments.values())


def unaligned(array):
    """The same int64 values at an address that is not a multiple of 8."""
    raw = np.zeros(array.nbytes + 1, np.uint8)
    raw[1:] = array.view(np.uint8).reshape(-1)
    return memoryview(raw[1:])


@needs_kernel
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"height": 2**31 - 1, "width": 2**31 - 1, "pixel_bytes": 2**62}, "at most 2\\*\\*48 bytes"),
        ({"height": 2**20, "width": 2**20, "planes": 2**20, "pixel_bytes": 2**20}, "at most 2\\*\\*48 bytes"),
        ({"height": 0}, ">= 1"),
        ({"planes": -3}, ">= 1"),
        ({"rows": unaligned(np.array([0, 9], np.int64))}, "8-byte aligned"),
        ({"ids": unaligned(np.array([0, 9], np.int64))}, "8-byte aligned"),
        ({"fills": bytes(33 * 3)}, "at most 32 pixels"),
        ({"out_kind": 9, "in_kind": 99, "norm": bytes(24)}, "in_kind"),
        ({"out_kind": 9, "in_kind": 1, "norm": bytes(8)}, "per channel"),
        ({"out_kind": 9, "in_kind": 1, "norm": bytes(24)}, "one image per row"),  # out is uint8, not float32
    ],
)
def test_the_private_entry_point_checks_every_argument_before_reading(change, message):
    with pytest.raises(ValueError, match=message):
        fused.host_kernel().gather_augment(*entry_point_arguments(**change))


@needs_kernel
def test_the_private_entry_point_refuses_an_unaligned_source_or_out_for_typed_values():
    source = np.zeros(10 * 4 * 4 * 3 * 4 + 1, np.uint8)[1:].view(np.uint8)  # float32 values at an odd address
    out = np.empty((2, 4, 4, 3), np.float32)
    change = {"source": source, "pixel_bytes": 12, "in_kind": fused.VALUE_KINDS["GL_VALUE_F32"],
              "out_kind": fused.VALUE_KINDS["GL_VALUE_F32"], "norm": bytes(24), "out": out, "fills": bytes(12)}
    with pytest.raises(ValueError, match="aligned for their values"):
        fused.host_kernel().gather_augment(*entry_point_arguments(**change))


@pytest.mark.parametrize(
    "make", [lambda: Cutout(4, fill=10**400), lambda: RandomCrop(1, mode="constant", fill=-(10**400))]
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_a_fill_beyond_any_dtype_is_a_value_error_naming_the_fill(make, dtype):
    with pytest.raises(ValueError, match=r"fill=-?1000000"):
        check_augment([make()], (4, 8, 8, 3), dtype, "x")


def test_a_fill_that_does_not_fit_a_float_is_a_value_error_at_construction():
    from fractions import Fraction

    with pytest.raises(ValueError, match=r"fill=Fraction.*Fix"):
        Cutout(4, fill=Fraction(10**400, 3))


def follower_arguments(**change):
    """A follower of ``entry_point_arguments()``'s images for the private entry point: a 4 x 4 uint8 mask."""
    table = fused.fused_ops([RandomCrop(2), RandomFlip(), Cutout(2, fill=255)], np.uint8, 1)
    arguments = {"source": np.zeros((10, 4, 4), np.uint8), "out": np.empty((2, 4, 4), np.uint8),
                 "fills": table.fills, "or_slots": table.or_slots, "and_slots": table.and_slots, "planes": 1,
                 "pixel_bytes": 1, "in_kind": 0, "out_kind": 0, "norm": b""}
    arguments.update(change)
    return tuple(arguments.values())


@needs_kernel
@pytest.mark.parametrize(
    ("follower", "error", "message"),
    [
        (None, None, None),  # the valid call
        ([1, 2], TypeError, "follower 0 must be a tuple"),
        (follower_arguments()[:5], TypeError, "a follower is"),
        (follower_arguments(out=np.empty((2, 4, 5), np.uint8)), ValueError, "follower 0: out does not hold"),
        (follower_arguments(source=np.zeros((5, 4, 4), np.uint8)), ValueError, "row index is outside"),
        (follower_arguments(source=np.zeros((10, 4, 3), np.uint8)), ValueError, "follower 0: source is not"),
        (follower_arguments(fills=b""), ValueError, "follower 0: a fill slot lies outside the fills"),
        (follower_arguments(fills=bytes(33)), ValueError, "follower 0: fills must be whole pixels, at most 32"),
        (follower_arguments(planes=2**40, pixel_bytes=2**20), ValueError, "follower 0: an image of height"),
        (follower_arguments(out_kind=9, in_kind=1, norm=bytes(4)), ValueError, "follower 0: norm must hold"),
    ],
)
def test_the_private_entry_point_checks_each_followers_arguments_before_reading(follower, error, message):
    arguments = entry_point_arguments()
    valid = follower_arguments()
    if error is None:
        fused.host_kernel().gather_augment(*arguments, [valid])
        assert valid[1].shape == (2, 4, 4)
        return
    with pytest.raises(error, match=message):
        fused.host_kernel().gather_augment(*arguments, [valid, follower] if message == "a follower is" else [follower])


# ------------------------------------------------------------------ rows of 16 to 64 bytes: written by table lookups
# The host kernel writes rows of 16, 32, 48 or 64 bytes whole by byte shuffles from a template per distinct row
# slots (_pixels.c, lookup_rows): masks, int16 masks, small images, channels-first planes, odd widths of wide
# pixels. Each shape meets every draw over its samples: flipped or not, crop borders on either side (rows wholly
# in the border), cutouts clipped at every edge, and more distinct row slots than the templates kept.
LOOKUP_SHAPES = [  # (height, width, channels or None, dtype): rows of 16, 32, 48 and 64 bytes
    (6, 16, None, np.uint8), (5, 32, None, np.uint8), (7, 48, None, np.uint8), (9, 64, None, np.uint8),
    (6, 8, None, np.int16), (5, 24, None, np.int16), (6, 32, None, np.int16),
    (6, 16, 1, np.uint8), (7, 16, 3, np.uint8), (6, 4, 4, np.uint8), (5, 16, 4, np.uint8),
    (5, 3, 4, np.float32),  # an odd width: 3 pixels of 16 bytes, flipped as whole pixels
]


def lookup_recipes(height, width):
    """Ops for images of height x width: constant crops that leave rows wholly in the border, a flip, a reflect
    crop, cutouts touching the edges, and five painting ops (more distinct row slots than templates kept)."""
    pad = min(4, height - 1, width - 1)
    return [
        [RandomCrop(pad, mode="constant", fill=7), RandomFlip(), Cutout(3, fill=9)],
        [RandomFlip(), RandomCrop(pad, mode="reflect"), Cutout(width, fill=0)],
        [RandomCrop(pad, mode="constant", fill=5), Cutout(2, fill=6), Cutout(3, fill=8), Cutout(4, fill=10),
         Cutout(5, fill=12), RandomFlip()],
        [Cutout(3, fill=4), RandomCrop(pad, mode="constant", fill=11), RandomFlip(), RandomCrop(1)],
    ]


@needs_kernel
@pytest.mark.parametrize("shape", LOOKUP_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}-{np.dtype(s[3]).name}")
def test_rows_written_by_table_lookups_give_the_reference_bytes(shape):
    from test_augment import images_of, reference, run

    height, width, channels, dtype = shape
    images = images_of(300, height, width, channels, dtype)
    ids = np.random.default_rng(5).permutation(10**5)[:300].astype(np.int64)
    for ops in lookup_recipes(height, width):
        want = reference(ops, images, ids, 21, 4)
        np.testing.assert_array_equal(run(ops, images, ids, "kernel", seed=21, epoch=4), want)


@needs_kernel
@pytest.mark.parametrize(("channels", "dtype"), [(3, np.uint8), (2, np.int16)])
def test_channels_first_planes_written_by_table_lookups_give_the_reference_bytes(channels, dtype):
    from test_augment import images_of, reference, run

    width = 16 // np.dtype(dtype).itemsize  # each plane's rows are one 16-byte chunk
    images = np.ascontiguousarray(images_of(300, 6, width, channels, dtype).transpose(0, 3, 1, 2))
    ids = np.arange(300, dtype=np.int64) * 3
    for ops in lookup_recipes(6, width):
        first = [type(op)(**{**vars(op), "data_format": "channels_first"}) for op in ops]
        want = reference(first, images, ids, 21, 4)
        np.testing.assert_array_equal(run(first, images, ids, "kernel", seed=21, epoch=4), want)


@needs_kernel
@pytest.mark.parametrize(("image_shape", "mask_dtype"), [((32, 32, 3), np.uint8), ((16, 16, 3), np.uint8),
                                                         ((16, 16, 3), np.int16), ((12, 32, None), np.int16)])
def test_followers_written_by_table_lookups_give_the_reference_bytes(image_shape, mask_dtype):
    # a mask following images whose rows take the other path (32 x 32 x 3: 96-byte rows) or the same one
    from test_augment import images_of, reference

    from gpuloader.augment.targets import follower_ops
    from gpuloader.gather import aligned_empty

    height, width, channels = image_shape
    images = images_of(300, height, width, channels)
    masks = images_of(300, height, width, None, mask_dtype, seed=1)
    fill = 255 if mask_dtype == np.uint8 else -1
    rows = np.random.default_rng(6).permutation(300)[:200].astype(np.int64)
    ids = rows * 7 + 1
    for ops in lookup_recipes(height, width):
        table, mask_table = fused.table_for(ops, images), fused.table_for(follower_ops(ops, fill), masks)
        out = aligned_empty((len(rows), *images.shape[1:]), images.dtype)
        mask_out = aligned_empty((len(rows), *masks.shape[1:]), masks.dtype)
        fused.gather_augment_host(table, images, rows, ids, 21, 4, out, followers=[(mask_table, masks, mask_out)])
        np.testing.assert_array_equal(out, reference(ops, images[rows], ids, 21, 4))
        want = reference(follower_ops(ops, fill), masks[rows], ids, 21, 4)
        np.testing.assert_array_equal(mask_out, want)
        assert np.any(want == fill)
