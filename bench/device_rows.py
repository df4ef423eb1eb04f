"""The device suite: ``bench/device.py`` and ``bench/device_fit.py``, when CuPy sees a usable CUDA device.

Each script runs once (its own rounds inside), in a fresh process that
inherits ``KERAS_BACKEND`` (``device.py`` picks an installed backend when it is
unset: the GPU machine has no TensorFlow), and writes its JSON next to
``bench.json``; its printed table is shown after the run. Without a device the
suite runs nothing and says why. ``make gpu-check`` (``bench/gpu_check.sh``)
runs the same two scripts directly.
"""

from __future__ import annotations

import argparse
from typing import Any

from suite import Case, Plan, Report, Result

DEVICE_TIMEOUT_S = 600
DEVICE_FIT_TIMEOUT_S = 1800
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def plan(args: argparse.Namespace) -> Plan:
    from gpuloader import _cuda

    status = _cuda.probe()
    if not status.usable:
        return Plan("device", [], 0, skipped=status.reason)
    smoke = args.profile == "smoke"
    device_json, fit_json = args.out / "device.json", args.out / "device_fit.json"
    found = [
        Case("device", "device.py", ("--json", str(device_json), *(("--quick",) if smoke else ())),
             label="device.py", env=QUIET, timeout_s=DEVICE_TIMEOUT_S, result_file=device_json),
        Case("device_fit", "device_fit.py", ("--json", str(fit_json), *(("--rounds", "1", "--epochs", "1") if smoke
             else ())), label="device_fit.py", env=QUIET, timeout_s=DEVICE_FIT_TIMEOUT_S, result_file=fit_json),
    ]
    return Plan("device", found, 1, about=[f"{status.name}: bench/device.py, bench/device_fit.py"])


def progress_figure(case: Case, result: Result) -> str:
    return f"wrote {case.result_file.name}" if case.result_file else "done"


def report(plan: Plan, results: dict[str, list[Result]]) -> Report:
    """The scripts' own tables; their JSON as they wrote it."""
    data: dict[str, Any] = {}
    text = []
    for name, rounds in results.items():
        result = dict(rounds[-1]) if rounds else {"error": "did not run"}
        text.append(f"{name}: failed: {result['error']}" if "error" in result else result.pop("stdout", "").rstrip())
        data[name] = result
    return Report("\n".join(text), [], data)
