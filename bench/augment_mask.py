"""Host benchmark: an image and its mask with the same draws against the image alone (issue 18).

Usage: ``python bench/augment_mask.py [--rounds N] [--epochs E] [--rows N] [--out DIR]``

Data: the synthetic CIFAR-10 stand-in (``bench/synthetic.py``), 50000 x 32 x 32
x 3 uint8, and a uint8 mask per image, ``(x[..., 0] > 127)`` (50000 x 32 x 32);
batches of 512 in a new shuffled order every epoch; the ops
``RandomCrop(4, mode="constant")``, ``RandomFlip()``, ``Cutout(8)``.

Cases, all ``gpuloader.Loader(..., batch_size=512, seed=0, device="host")``,
each epoch being ``loader.pipeline.prepare(i, epoch, shuffled)`` for every batch (the gather and
the augmentation, no hand-off):

- ``image``: ``Loader(x, labels, augment=ops)``: the image alone (the baseline).
- ``image_mask``: ``Loader(x, masks, augment={"x": ops, "y": augment.Same("x",
  fill=255)})``: the mask gets the images' draws (the case the target is about).
- ``image_mask_plain``: ``Loader(x, masks, augment={"x": ops, "y": []})``: the
  mask carried but not augmented (what its bytes cost without the ops).

Every case runs in a process of its own, interleaved across rounds (round 1:
A B C, round 2: A B C, ...); a case's figure for a round is the median of its
timed epochs after one warm-up epoch, its reported figure the median over
rounds. Target: ``image_mask / image <= 1.3``. The machine's cores may be shared:
the load average around each case is recorded.

Writes ``<out>/augment_mask.json`` (default ``bench/results``). Exit status 0
when every case ran, whether or not the target is met; 1 when a case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import synthetic  # noqa: E402
from augment import load_average  # noqa: E402

BATCH_SIZE = 512
CASES = ("image", "image_mask", "image_mask_plain")
TARGET = ("image_mask", "image", 1.3)
CASE_TIMEOUT_S = 600


def _ops() -> list[Any]:
    from gpuloader import augment

    return [augment.RandomCrop(padding=4, mode="constant"), augment.RandomFlip(), augment.Cutout(size=8)]


def build(name: str, rows: int | None) -> Any:
    import gpuloader
    from gpuloader import augment

    x, labels = synthetic.make("cifar", rows)
    masks = (x[..., 0] > 127).astype(np.uint8)
    if name == "image":
        y, plan = labels, _ops()
    elif name == "image_mask":
        y, plan = masks, {"x": _ops(), "y": augment.Same("x", fill=255)}
    else:
        y, plan = masks, {"x": _ops(), "y": []}
    return gpuloader.Loader(x, y, batch_size=BATCH_SIZE, seed=0, device="host", augment=plan, verbose=False)


def run_case(name: str, rows: int | None, epochs: int) -> dict[str, Any]:
    loader = build(name, rows)

    def epoch(number: int) -> int:
        return sum(int(loader.pipeline.prepare(i, number, loader.shuffle)[1][0].shape[0]) for i in range(len(loader)))

    epoch(0)  # warm-up
    wall = []
    for number in range(1, epochs + 1):
        start = time.perf_counter()
        served = epoch(number)
        wall.append(time.perf_counter() - start)
        if served != loader.num_samples:
            raise RuntimeError(f"{name}: an epoch served {served} rows, expected {loader.num_samples}")
    return {"case": name, "rows": loader.num_samples, "epoch_s": wall, "median_s": statistics.median(wall),
            "plan": str(loader.plan.reason)}


def spawn(name: str, rows: int | None, epochs: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--epochs", str(epochs)]
    if rows is not None:
        command += ["--rows", str(rows)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    before = load_average()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}: {done.stderr.strip()[-800:]}"}
    return {**json.loads(lines[-1]), "load_before": before, "load_after": load_average()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.rows, args.epochs)))
        return 0
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
    for round_index in range(args.rounds):
        for name in CASES:
            result = spawn(name, args.rows, args.epochs)
            raw[name].append(result)
            shown = f"{result['median_s'] * 1e3:.1f} ms" if "median_s" in result else result["error"]
            print(f"round {round_index + 1} {name}: {shown}", flush=True)
    medians = {
        name: statistics.median(r["median_s"] for r in results if "median_s" in r)
        for name, results in raw.items() if any("median_s" in r for r in results)
    }
    numerator, denominator, bound = TARGET
    ratio = medians[numerator] / medians[denominator] if {numerator, denominator} <= set(medians) else None
    for name, value in medians.items():
        print(f"{name:18s} {value * 1e3:8.1f} ms/epoch")
    if ratio is not None:
        print(f"{numerator} / {denominator} = {ratio:.2f} (target <= {bound}: {'met' if ratio <= bound else 'MISSED'})")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"medians_s": medians, "ratio": ratio, "target": bound, "raw": raw}
    (args.out / "augment_mask.json").write_text(json.dumps(report, indent=1))
    return 0 if all("median_s" in r for results in raw.values() for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------ as a suite of bench/run.py (bench/suite.py)
#: (rounds, timed epochs, rows) of each profile: quick (make bench) 2 rounds, full (make bench-full) the 5
#: rounds the README quotes, smoke a check of the machinery on 2048 rows.
SUITE_ROUNDS = {"quick": (2, 3, None), "full": (5, 3, None), "smoke": (1, 1, 2048)}


def plan(run_args: argparse.Namespace) -> Any:
    """The three case processes of one round (each ``python bench/augment_mask.py --case NAME``)."""
    from suite import Case, Plan

    if run_args.profile not in SUITE_ROUNDS:
        return Plan("augment_mask", [], 0, skipped=f"{run_args.profile} profile")
    rounds, epochs, rows = SUITE_ROUNDS[run_args.profile]
    argv = ("--epochs", str(epochs), *(("--rows", str(rows)) if rows else ()))
    found = [Case(name, "augment_mask.py", ("--case", name, *argv), label=f"mask   {name}") for name in CASES]
    about = [f"cifar 32x32x3 with a 32x32 uint8 mask, batch {BATCH_SIZE}: {', '.join(CASES)}; "
             f"{epochs} timed epochs a process"]
    return Plan("augment_mask", found, run_args.rounds or rounds, about=about)


def report(plan: Any, results: dict[str, list[dict[str, Any]]]) -> Any:
    """The median epoch of each case over rounds; the target image_mask / image <= 1.3 (MISSING: a case failed)."""
    from suite import Report, Target

    medians = {name: statistics.median(r["median_s"] for r in rounds)
               for name, rounds in results.items() if rounds and all("median_s" in r for r in rounds)}
    lines = [f"{'case':<18} {'epoch (median)':>15} {'min':>9} {'max':>9}"]
    for name in CASES:
        if name in medians:
            every = [r["median_s"] * 1e3 for r in results[name]]
            lines.append(f"{name:<18} {medians[name] * 1e3:12.1f} ms {min(every):6.1f} ms {max(every):6.1f} ms")
        else:
            lines.append(f"{name:<18} {'FAILED':>15}")
    numerator, denominator, bound = TARGET
    what = f"{numerator} / {denominator}"
    if {numerator, denominator} <= set(medians):
        ratio = medians[numerator] / medians[denominator]
        target = Target("augment_mask", "epoch", what, f"{ratio:.2f}x", f"<= {bound}",
                        "met" if ratio <= bound else "MISSED")
    else:
        ratio, target = None, Target("augment_mask", "epoch", what, "n/a", f"<= {bound}", "MISSING")
    data = {"medians_s": medians, "ratio": ratio, "target": bound, "raw": results}
    return Report("\n".join(lines), [target], data)
