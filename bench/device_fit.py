"""Keras ``fit`` on a GPU: does training get faster when the batches are made on the GPU?

Runs where CuPy sees a CUDA device (the lent GPU machine: Keras on JAX, or torch
with ``KERAS_BACKEND=torch``; no TensorFlow there), and anywhere else says why it
cannot and exits 0. Data: 50000x32x32x3 float32 images (600 MB) and int32 labels,
batch 256, shuffled every epoch. Cases, each in a process of its own, interleaved
over ``--rounds`` rounds (shared/notes/pitfalls.md, item 5):

- ``seed``: ``fit(SeedSequence(x, y, 256, shuffle=True))``, the seed document's
  Sequence: NumPy batches that the backend copies to the GPU every step;
- ``arrays``: ``fit(x, y, batch_size=256, shuffle=True)``, Keras's own array path;
- ``host``: ``fit(gpuloader.Loader(x, y, batch_size=256, device="host"))``;
- ``gpu``: ``fit(gpuloader.Loader(x, y, batch_size=256, device="gpu"))``: the data
  uploaded once, each batch gathered on the GPU and handed over through DLPack.

Two models (``bench/cases.py``: ``build_model``): ``dense`` (Flatten -> Dense, where
feeding the data is most of a step) and ``conv`` (two small convolutions). Each
case runs one warm-up epoch (compilation included), then ``--epochs`` timed
epochs; the table shows the median seconds per epoch over all rounds and the
gpu case's speedup over each baseline. No targets: the figures are reported.

Usage: python3 bench/device_fit.py [--rounds R] [--epochs E] [--json PATH]
       python3 bench/device_fit.py --case CASE --model MODEL [--epochs E]   (one case, one JSON line)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

# As in bench/device.py: a backend that is installed, and JAX must not take 75% of the GPU.
_requested = os.environ.get("KERAS_BACKEND", "tensorflow")
if importlib.util.find_spec(_requested) is None:
    for _backend in ("jax", "torch", "tensorflow"):
        if importlib.util.find_spec(_backend) is not None:
            os.environ["KERAS_BACKEND"] = _backend
            break
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CASES = ("seed", "arrays", "host", "gpu")
MODELS = ("dense", "conv")
ROWS, SHAPE, BATCH_SIZE = 50000, (32, 32, 3), 256
CASE_TIMEOUT_S = 240


def run_case(case: str, model: str, epochs: int) -> dict[str, Any]:
    """Train one case in this process and return its epoch times."""
    import numpy as np
    from cases import fit_epochs
    from seed_sequence import SeedSequence

    import gpuloader

    rng = np.random.default_rng(0)
    x = rng.random((ROWS, *SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, ROWS).astype(np.int32)
    info: dict[str, Any] = {}
    if case == "seed":
        warmup, times = fit_epochs(SeedSequence(x, y, BATCH_SIZE, shuffle=True), SHAPE, epochs, model)
    elif case == "arrays":
        warmup, times = fit_epochs(x, SHAPE, epochs, model, y=y, batch_size=BATCH_SIZE, shuffle=True)
    elif case in ("host", "gpu"):
        started = time.perf_counter()
        loader = gpuloader.Loader(x, y, batch_size=BATCH_SIZE, seed=0, device=case, verbose=False)
        info = {"build_s": time.perf_counter() - started, "plan": str(loader.plan)}
        if loader.placement != case:
            raise RuntimeError(f"asked for {case}, got {loader.plan}")
        warmup, times = fit_epochs(loader, SHAPE, epochs, model)
        if loader.epoch != 1 + epochs:
            raise RuntimeError(f"the loader served {loader.epoch} epochs, expected {1 + epochs}")
    else:
        raise ValueError(f"case must be one of {CASES}; received {case!r}")
    return {"case": case, "model": model, "warmup_s": warmup, "epoch_s": times, **info}


def run_all(rounds: int, epochs: int) -> dict[str, Any]:
    """Every (model, case) once per round, each in a fresh process, cases interleaved."""
    results: dict[str, dict[str, list[float]]] = {model: {case: [] for case in CASES} for model in MODELS}
    extras: dict[str, Any] = {}
    for round_index in range(rounds):
        for model in MODELS:
            order = CASES if round_index % 2 == 0 else tuple(reversed(CASES))
            for case in order:
                command = [sys.executable, __file__, "--case", case, "--model", model, "--epochs", str(epochs)]
                done = subprocess.run(command, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
                if done.returncode != 0:
                    raise RuntimeError(f"{case}/{model} failed:\n{done.stderr[-3000:]}")
                report = json.loads(done.stdout.strip().splitlines()[-1])
                results[model][case].extend(report["epoch_s"])
                if "plan" in report:
                    extras[f"{case}_plan"] = report["plan"]
                print(f"  round {round_index + 1} {model:5s} {case:6s} "
                      f"{statistics.median(report['epoch_s']):.3f} s/epoch", flush=True)
    table = {}
    for model in MODELS:
        medians = {case: statistics.median(results[model][case]) for case in CASES}
        table[model] = {
            "median_epoch_s": medians,
            "gpu_speedup": {case: medians[case] / medians["gpu"] for case in CASES if case != "gpu"},
        }
    return {"rows": ROWS, "shape": list(SHAPE), "batch_size": BATCH_SIZE, "rounds": rounds, "epochs": epochs,
            "keras_backend": os.environ["KERAS_BACKEND"], "epoch_times": results, "table": table, **extras}


def print_table(result: dict[str, Any]) -> None:
    print(f"\nKeras fit on the GPU ({result['keras_backend']} backend), {result['rows']}x32x32x3 float32, "
          f"batch {result['batch_size']}: median seconds per epoch over {result['rounds']} rounds x "
          f"{result['epochs']} epochs")
    print(f"  {'model':6s}" + "".join(f"{case:>9s}" for case in CASES) + "   gpu speedup vs seed / arrays / host")
    for model, row in result["table"].items():
        medians, speedup = row["median_epoch_s"], row["gpu_speedup"]
        print(f"  {model:6s}" + "".join(f"{medians[case]:9.3f}" for case in CASES)
              + f"   {speedup['seed']:.2f}x / {speedup['arrays']:.2f}x / {speedup['host']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--model", choices=MODELS, default="dense")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.epochs)))
        return 0
    from gpuloader import _cuda

    status = _cuda.probe()
    if not status.usable:
        print(f"device fit benchmark skipped: {status.reason}")
        return 0
    print(f"device fit benchmark on {status.name}, KERAS_BACKEND={os.environ['KERAS_BACKEND']}", flush=True)
    result = {"device": status.name, **run_all(args.rounds, args.epochs)}
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
