"""``gpuloader.info()`` and ``python -m gpuloader info``: versions, devices, and the placement a Loader would choose."""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from fake_gpu import make_runtime

import gpuloader
from gpuloader import __main__ as cli
from gpuloader import __version__, _cuda, placement
from gpuloader.augment import fused
from gpuloader.sources import arrow

main, parser = cli.main, cli.parser
PUBLIC_NAMES = vars(gpuloader)["__all__"]

info_module = importlib.import_module("gpuloader.info")
CIFAR = (50000, 32, 32, 3)


class NoGpu:
    """A GPU runtime that finds nothing, whatever this machine has."""

    @staticmethod
    def probe(ordinal=None):
        return _cuda.DeviceStatus(False, "CuPy is not installed (pip install 'gpuloader[gpu]')")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(placement, "gpu_runtime", lambda: NoGpu)
    monkeypatch.delenv(placement.ENV_DEVICE, raising=False)


def test_info_is_public_and_import_stays_light():
    assert "info" in PUBLIC_NAMES
    assert PUBLIC_NAMES == sorted(PUBLIC_NAMES)
    assert gpuloader.info is info_module.info  # the function, even after the submodule was imported
    code = "import sys, json, gpuloader; gpuloader.info; print(json.dumps(sorted(m for m in "
    code += "('tensorflow', 'keras', 'cupy', 'jax', 'torch') if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_versions_frameworks_and_no_device(no_gpu, monkeypatch):
    import keras
    import tensorflow as tf

    monkeypatch.setenv(placement.ENV_DEVICE, "auto")
    report = gpuloader.info(frameworks=("tensorflow", "no_such_framework_here"))
    assert report["gpuloader"] == __version__
    assert report["numpy"] == np.__version__
    assert report["keras"] == {"version": keras.__version__, "backend": keras.backend.backend()}
    assert report["frameworks"]["tensorflow"] == {"imports": True, "version": tf.__version__}
    missing = report["frameworks"]["no_such_framework_here"]
    assert missing["imports"] is False
    assert "ModuleNotFoundError" in missing["error"]
    assert report["cuda"] == {"devices": [], "reason": "CuPy is not installed (pip install 'gpuloader[gpu]')"}
    assert report["env"][placement.ENV_DEVICE] == "auto"
    assert report["placement"] is None
    assert report["augment_kernel"] == {"built": fused.host_kernel() is not None, **(
        {} if fused.host_kernel() is not None else {"reason": fused.host_kernel_missing()})}
    assert report["arrow_gather"] == ({"built": True} if arrow._rows is not None else
                                      {"built": False, "reason": arrow.compiled_gather_missing()})
    json.dumps(report)  # serialisable as it is
    text = info_module.format_info(report)
    assert "CUDA       none: CuPy is not installed" in text
    assert f"tensorflow {tf.__version__}" in text
    assert "no_such_framework_here does not import (ModuleNotFoundError" in text


def test_a_missing_augmentation_kernel_is_reported_with_the_reason_and_the_fix(no_gpu, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_kernel(name, globals=None, locals=None, fromlist=(), level=0):
        if fromlist and "_pixels" in fromlist:
            raise ImportError("no compiled module here")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_kernel)
    report = gpuloader.info(frameworks=())
    assert report["augment_kernel"]["built"] is False
    assert "no compiled module here" in report["augment_kernel"]["reason"]
    assert "Fix: install a C compiler" in info_module.format_info(report)


COMPILED_PARTS = [  # (module, its compiled attribute, report key, line when built, line when missing)
    ("gpuloader.sources.arrow", "_rows", "arrow_gather", "rows       compiled row gather built",
     "rows       the C extension gpuloader.sources._rows is not built"),
    ("gpuloader.ingest.folder", "_stat", "folder_stat", "folder     compiled file stat built",
     "folder     the C extension gpuloader.ingest._stat is not built"),
]


@pytest.mark.parametrize(("module_name", "attribute", "key", "built_line", "missing_line"), COMPILED_PARTS)
def test_a_compiled_part_is_reported_built_or_missing_with_the_fix(no_gpu, monkeypatch, module_name, attribute, key,
                                                                  built_line, missing_line):
    import importlib

    module = importlib.import_module(module_name)
    if getattr(module, attribute) is not None:
        report = gpuloader.info(frameworks=())
        assert report[key] == {"built": True}
        assert built_line in info_module.format_info(report)
    monkeypatch.setattr(module, attribute, None)
    report = gpuloader.info(frameworks=())
    assert report[key]["built"] is False
    text = info_module.format_info(report)
    assert missing_line in text
    assert "Fix: install a C compiler" in text


def test_placement_without_a_gpu_is_the_host_with_the_reason(no_gpu):
    where = gpuloader.info(CIFAR, "uint8", frameworks=())["placement"]
    row = 32 * 32 * 3
    assert where["data_bytes"] == 50000 * row
    assert where["bytes_needed"] == 50000 * row + 4 * 32 * row + 24 * 50000
    assert where["placement"] == "host"
    assert where["reason"] == "host: CuPy is not installed (pip install 'gpuloader[gpu]')"
    assert where["device"] == "auto"


def test_device_lines_from_the_stand_in_runtime(fake_gpu):
    cuda = gpuloader.info(frameworks=())["cuda"]
    assert cuda == {
        "devices": [{"ordinal": 0, "name": "FakeGPU0", "free_bytes": 1 << 30, "total_bytes": 2 << 30}],
        "reason": "",
    }
    text = info_module.format_info(gpuloader.info(frameworks=()))
    assert "CUDA 0     FakeGPU0: 1.1 GB free of 2.1 GB" in text


def test_every_device_is_listed(monkeypatch):
    runtime = make_runtime(gpus=3, free_bytes=1 << 30)
    runtime.state.device_free[1] = 123_000_000
    monkeypatch.setattr(placement, "gpu_runtime", lambda: runtime)
    devices = info_module.cuda_devices()["devices"]
    assert [(d["ordinal"], d["name"], d["free_bytes"]) for d in devices] == [
        (0, "FakeGPU0", 1 << 30), (1, "FakeGPU1", 123_000_000), (2, "FakeGPU2", 1 << 30)
    ]


def test_a_device_that_cannot_be_queried_is_listed_with_why(monkeypatch):
    statuses = [
        _cuda.DeviceStatus(True, "usable", 5, 10, "A"),
        _cuda.DeviceStatus(False, "the CUDA device could not be queried (boom)"),
        _cuda.DeviceStatus(True, "usable", 7, 10, "C"),
        _cuda.DeviceStatus(False, "CUDA device 3 does not exist (3 visible)"),
    ]
    runtime = type("R", (), {"probe": staticmethod(lambda ordinal=None: statuses[ordinal])})
    monkeypatch.setattr(placement, "gpu_runtime", lambda: runtime)
    cuda = info_module.cuda_devices()
    assert [d["ordinal"] for d in cuda["devices"]] == [0, 1, 2]
    assert cuda["devices"][1]["error"] == "the CUDA device could not be queried (boom)"
    assert cuda["reason"] == ""


def test_placement_on_the_stand_in_gpu_fits_or_not(fake_gpu):
    fits = info_module.would_place(CIFAR, "uint8", batch_size=256)
    assert fits["placement"] == "gpu"
    assert fits["reason"].startswith("gpu: the data fits (needs ")
    assert fits["bytes_free"] == 1 << 30
    too_big = info_module.would_place((50000, 32, 32, 3), "float32", batch_size=256)  # 614 MB > 0.5 x 1.07 GB
    assert too_big["placement"] == "host"
    assert "the data does not fit on the GPU" in too_big["reason"]
    assert info_module.would_place((50000, 32, 32, 3), "float32", gpu_memory_fraction=0.9)["placement"] == "gpu"


@pytest.mark.parametrize("fraction", [0.5, 0.25])
@pytest.mark.parametrize("batch_size", [64, 1000])
def test_same_estimate_and_decision_as_a_real_loader(fake_gpu, batch_size, fraction):
    """At the budget's edge, info and a Loader built over the same data decide alike, with the same reason."""
    x = np.zeros((2000, 5, 3), np.float32)
    y = np.zeros(2000, np.int64)
    described = {"batch_size": batch_size, "gpu_memory_fraction": fraction}
    needed = info_module.would_place(x.shape, x.dtype, y_dtype=y.dtype, **described)["bytes_needed"]
    chosen = []
    for free in (int(needed / fraction) + 4, int(needed / fraction) - 4):  # just fits, just does not
        fake_gpu.state.free_bytes = free
        where = info_module.would_place(x.shape, x.dtype, y_dtype=y.dtype, **described)
        loader = gpuloader.Loader(x, y, verbose=False, **described)
        assert loader.plan.bytes_needed == where["bytes_needed"] == needed
        assert (loader.placement, loader.plan.reason) == (where["placement"], where["reason"])
        chosen.append(where["placement"])
    assert chosen == ["gpu", "host"]


def test_placement_follows_gpuloader_device(fake_gpu, monkeypatch):
    monkeypatch.setenv(placement.ENV_DEVICE, "host")
    report = gpuloader.info((1000, 4), frameworks=())
    assert report["env"][placement.ENV_DEVICE] == "host"
    assert (report["placement"]["device"], report["placement"]["placement"]) == ("host", "host")
    assert report["placement"]["reason"] == "host: device='host' was asked for"
    assert info_module.would_place((1000, 4), device="gpu")["placement"] == "gpu"  # the argument wins
    monkeypatch.setenv(placement.ENV_DEVICE, "tpu")
    wrong = gpuloader.info((1000, 4), frameworks=())["placement"]
    assert wrong["placement"] is None
    assert wrong["error"].startswith("ValueError: $GPULOADER_DEVICE must be one of")


def test_gpu_asked_for_without_one_says_why(no_gpu):
    where = info_module.would_place(nbytes=6_000_000_000, rows=1_000_000, device="gpu")
    assert where["placement"] is None
    assert where["error"].startswith("GPUUnavailableError: device='gpu' was asked for, but CuPy is not installed")
    text = info_module.format_info({**gpuloader.info(frameworks=()), "placement": where})
    assert "  would fail: GPUUnavailableError" in text


def test_bytes_with_and_without_rows(no_gpu):
    only = info_module.would_place(nbytes=6e9)
    assert only["bytes_needed"] == only["data_bytes"] == 6_000_000_000
    assert only["estimate"].startswith("data only")
    counted = info_module.would_place(nbytes=3000, rows=100, y_dtype="int32", batch_size=10)
    assert counted["data_bytes"] == 3000 + 400
    assert counted["bytes_needed"] == 3400 + 4 * 10 * 34 + 24 * 100


@pytest.mark.parametrize(
    "arguments",
    [
        {},  # neither, for would_place
        {"shape": (10, 3), "nbytes": 120},
        {"shape": (0, 3)},
        {"shape": (10, 3), "rows": 11},
        {"nbytes": 0},
        {"nbytes": 100, "y_dtype": "int32"},
        {"shape": (10, 3), "batch_size": 0},
    ],
)
def test_a_bad_description_is_refused(no_gpu, arguments):
    with pytest.raises(ValueError):
        info_module.would_place(**arguments)
    if arguments:
        with pytest.raises(ValueError):
            gpuloader.info(**arguments, frameworks=())


@pytest.mark.parametrize("dtype", ["object", "U5", "longdouble"])
def test_a_dtype_a_loader_refuses_is_refused_with_its_reason(no_gpu, dtype):
    with pytest.raises(TypeError, match="dtype"):
        info_module.would_place((10, 3), dtype)


def test_dataset_flags_without_a_shape_are_refused_not_ignored(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--dtype", "uint8", "--rows", "10"])
    assert exit_info.value.code == 2
    assert "--dtype, --rows only apply to a dataset given by --shape or --bytes" in capsys.readouterr().err


def test_command_line_json_is_info(no_gpu, monkeypatch, capsys):
    # main() reads info from the module when called; skip importing torch and JAX into this process.
    monkeypatch.setattr(info_module, "info", functools.partial(gpuloader.info, frameworks=()))
    assert main(["info", "--shape", "50000,32,32,3", "--dtype", "uint8", "--batch-size", "256", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = gpuloader.info(CIFAR, "uint8", batch_size=256, frameworks=())
    printed.pop("platform"), expected.pop("platform")
    assert printed == expected
    assert printed["placement"]["placement"] == "host"


def test_command_line_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--shape", "10,abc"])
    assert exit_info.value.code == 2
    assert "expected sizes >= 1 separated by commas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "--shape", "10,3", "--bytes", "100"])
    assert main(["info", "--shape", "10,3", "--dtype", "not-a-dtype"]) == 2
    assert "gpuloader info: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--bytes", "1e400"], "--bytes: expected a number of bytes from 1 to 2**63 - 1; got '1e400'"),
        (["--bytes", "2.5e0"], "--bytes: expected a whole number of bytes; got '2.5e0'"),
        (["--bytes", "1.5"], "--bytes: expected a whole number of bytes; got '1.5'"),
        (["--bytes", "inf"], "--bytes: expected a whole number of bytes, e.g. 6000000000 or 6e9; got 'inf'"),
        (["--bytes", "100", "--rows", "1e30"], "--rows: expected a number of samples from 1 to 2**63 - 1"),
        (["--shape", "10,3", "--batch-size", "0"], "--batch-size: expected a number of samples per batch from 1"),
        (["--shape", "99999999999999999999,3"], "--shape: each size must be at most 2**63 - 1"),
        (["--bytes", "100", "--device", "banana"], "--device: device must be one of 'auto', 'gpu', 'host', 'disk'; "
                                                   "received 'banana'. Use 'auto'"),
        (["--bytes", "100", "--gpu-memory-fraction", "5"], "--gpu-memory-fraction: expected the share of free GPU "
                                                           "memory the data may take, a number in (0, 1]; got '5'"),
        (["--bytes", "100", "--gpu-memory-fraction", "nan"], "--gpu-memory-fraction: expected the share"),
    ],
)
def test_every_invalid_flag_exits_2_with_one_line_naming_the_rule_and_value(flags, named, capsys, monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("a refused flag must stop before anything is looked at")

    monkeypatch.setattr(info_module, "info", not_reached)
    with pytest.raises(SystemExit) as exit_info:
        main(["info", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m gpuloader info: error: argument ")
    assert named in err


def test_a_dtype_refused_after_parsing_also_exits_2_with_one_line(capsys):
    assert main(["info", "--shape", "10,3", "--y-dtype", "no-such-dtype"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m gpuloader info: error: y has dtype 'no-such-dtype'")
    assert "give a NumPy dtype name such as float32, uint8 or int64" in err


def test_whole_sizes_in_float_notation_are_taken_exactly():
    args = parser().parse_args(["info", "--bytes", "6e9", "--rows", "1_000_000", "--batch-size", "2.56e2"])
    assert (args.nbytes, args.rows, args.batch_size) == (6_000_000_000, 1_000_000, 256)
    assert parser().parse_args(["info", "--bytes", "100", "--gpu-memory-fraction", "1"]).gpu_memory_fraction == 1.0


@pytest.mark.parametrize("arguments", [{"nbytes": 2.5}, {"nbytes": float("inf")}, {"shape": (2, 2**40, 2**40)}])
def test_sizes_are_never_rounded_or_wrapped_silently(no_gpu, arguments):
    # nbytes=2.5 was truncated to 2 bytes; 2**80 bytes per row wrapped around int64 to a row of 0 bytes.
    with pytest.raises(ValueError, match=r"whole number of bytes|over the 2\*\*63 - 1 bytes"):
        info_module.would_place(**arguments)


def test_python_dash_m_gpuloader_info_runs():
    """The real command in a fresh process, on whatever this machine has."""
    command = [sys.executable, "-m", "gpuloader", "info", "--shape", "50000,32,32,3", "--dtype", "uint8"]
    text = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    assert text.startswith(f"gpuloader {__version__}")
    for line in ("numpy ", "keras ", "tensorflow ", "jax ", "torch ", "cupy ", "$GPULOADER_DEVICE = "):
        assert f"\n{line}" in text
    assert "a Loader over x 50000x32x32x3 uint8, batch_size=32" in text
    assert "  would place it on: " in text
    assert "  why: " in text


def test_input_libraries_are_listed_with_versions(no_gpu):
    from importlib import metadata

    report = gpuloader.info(frameworks=())
    assert set(report["inputs"]) == {"pillow", "datasets", "tensorflow"}
    for name, found in report["inputs"].items():
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = None
        assert (found["installed"], found["version"]) == (expected is not None, expected)
    text = info_module.format_info(report)
    assert f"pillow     {metadata.version('pillow')}  (input: image folders)" in text
