"""Host benchmark of keyed augmentation (issue 12): gpuloader.augment against tf.data and Keras layers.

Usage: ``python bench/augment.py [--rounds N] [--epochs E] [--tf-epochs E] [--rows N] [--cases a,b,...] [--out DIR]``

Data: the synthetic CIFAR-10 stand-in (``bench/synthetic.py``), 50000 x 32 x 32
x 3 uint8 and int32 labels; batches of 512 in a new shuffled order every epoch.
gpuloader's augmentation is ``RandomCrop(padding=4, mode="reflect")``,
``RandomFlip()``, ``Cutout(size=8)``.

Cases (``--cases``; the first four by default):

- ``plain``: the host gathered epoch, no augmentation: per batch the loader's
  own host gather (``gpuloader.gather.gather_batch``: x and y into one aligned
  block) at the epoch's permutation. No TensorFlow in the process.
- ``augment``: the same, then ``apply_augment(ops, x_batch, rows, seed, epoch,
  numpy, overwrite=True)`` on each gathered batch (what the loader does with a
  batch it has just gathered). No TensorFlow in the process.
- ``tfdata``: ``from_tensor_slices((ids, x_padded, y)).shuffle(n).map(crop,
  flip, num_parallel_calls=AUTOTUNE).batch(512).prefetch(AUTOTUNE)``, the map
  being ``tf.image.stateless_random_crop`` back to 32 x 32 and
  ``tf.image.stateless_random_flip_left_right`` keyed by the sample id;
  ``x_padded`` is x reflect-padded by 4 once, outside the timing. No cutout,
  so it does less work than ``augment``.
- ``keras``: per batch a NumPy gather (``x[rows]``), then Keras 3 layers
  ``RandomTranslation(4/32, 4/32, fill_mode="reflect")`` and
  ``RandomFlip("horizontal")`` called on it (``training=True``, TensorFlow
  backend, on the host). No cutout.
- ``augment_generic``: ``augment`` through the array-API reference path (the
  code CuPy runs) instead of the NumPy one, for information.
- ``loader_plain`` / ``loader_augment``: ``loader[i]`` for every batch, then
  ``on_epoch_end()``, of ``gpuloader.Loader(..., device="host")`` without and
  with ``augment=``; only when the Loader takes ``augment``.

Every case runs in a process of its own, and the cases are interleaved across
rounds (round 1: A B C D, round 2: A B C D, ...), as in ``bench/run.py``: after
``tf.data`` has run in a process, later work there runs slower. A case's figure
for a round is the median of its timed epochs (after a warm-up: one epoch, or
the first 10 batches of one for the TensorFlow cases); its reported figure is
the median over rounds. Ratios are of those medians, from the same run:
targets ``augment / plain <= 2``, ``tfdata / augment >= 3``, ``keras / augment
>= 3``. Wall-clock seconds; each case's CPU seconds (all its threads: tf.data
uses several) and the load average around it are recorded too, since this
machine's 2 cores are shared.

Writes ``<out>/augment.json`` (default ``bench/results``). Exit status 0 when
every case ran, whether or not the targets are met; 1 when a case failed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import synthetic  # noqa: E402

BATCH_SIZE = 512
PADDING = 4
CUTOUT = 8
SEED = 0
DEFAULT_CASES = ("plain", "augment", "tfdata", "keras")
OPTIONAL_CASES = ("augment_generic", "loader_plain", "loader_augment")
TF_CASES = ("tfdata", "keras", "loader_plain", "loader_augment")
TF_WARMUP_BATCHES = 10
CASE_TIMEOUT_S = 600
# (numerator, denominator, kind, bound): augment at most 2x plain; the baselines at least 3x augment.
TARGETS = (
    ("augment", "plain", "max", 2.0),
    ("tfdata", "augment", "min", 3.0),
    ("keras", "augment", "min", 3.0),
    ("loader_augment", "loader_plain", "max", 2.0),
)


def _ops() -> list[Any]:
    from gpuloader import augment

    return [augment.RandomCrop(padding=PADDING, mode="reflect"), augment.RandomFlip(), augment.Cutout(size=CUTOUT)]


def loader_takes_augment() -> bool:
    import gpuloader

    try:
        return "augment" in inspect.signature(gpuloader.Loader.__init__).parameters
    except Exception:  # a loader being edited must not stop the benchmark
        return False


# ------------------------------------------------------------------ cases (each in its own process)
EpochFn = Callable[..., int]  # run(epoch, batches=None) -> rows served


def case_plain(x: np.ndarray, y: np.ndarray) -> EpochFn:
    from gpuloader.gather import gather_batch
    from gpuloader.permutation import permutation

    def run(epoch: int, batches: int | None = None) -> int:
        order = permutation(np, len(x), SEED, epoch)
        served = 0
        for start in list(range(0, len(x), BATCH_SIZE))[:batches]:
            rows = order[start : start + BATCH_SIZE]
            xb, yb = gather_batch(np, [x, y], rows)
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def case_augment(x: np.ndarray, y: np.ndarray, generic: bool = False) -> EpochFn:
    from gpuloader import augment
    from gpuloader.gather import gather_batch
    from gpuloader.permutation import permutation

    ops = augment.check_augment(_ops(), x.shape, x.dtype, "x")
    augment._host._FAST_PATH_ENABLED = not generic

    def run(epoch: int, batches: int | None = None) -> int:
        order = permutation(np, len(x), SEED, epoch)
        served = 0
        for start in list(range(0, len(x), BATCH_SIZE))[:batches]:
            rows = order[start : start + BATCH_SIZE]
            xb, yb = gather_batch(np, [x, y], rows)
            xb = augment.apply_augment(ops, xb, rows, SEED, epoch, np, overwrite=True)
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def case_tfdata(x: np.ndarray, y: np.ndarray) -> EpochFn:
    import tensorflow as tf

    height, width, channels = x.shape[1:]
    padded = np.pad(x, ((0, 0), (PADDING, PADDING), (PADDING, PADDING), (0, 0)), mode="reflect")
    ids = np.arange(len(x), dtype=np.int64)

    def augment(sample: tf.Tensor, image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.image.stateless_random_crop(image, (height, width, channels), seed=tf.stack([sample, 0]))
        image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([sample, 1]))
        return image, label

    dataset = (
        tf.data.Dataset.from_tensor_slices((ids, padded, y))
        .shuffle(len(x), seed=SEED)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )

    def run(epoch: int, batches: int | None = None) -> int:
        served = 0
        for xb, yb in dataset.take(-1 if batches is None else batches):
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def case_keras(x: np.ndarray, y: np.ndarray) -> EpochFn:
    import keras

    height, width = x.shape[1:3]
    layers = keras.Sequential(
        [
            keras.layers.RandomTranslation(PADDING / height, PADDING / width, fill_mode="reflect", seed=SEED),
            keras.layers.RandomFlip("horizontal", seed=SEED),
        ]
    )
    rng = np.random.default_rng(SEED)

    def run(epoch: int, batches: int | None = None) -> int:
        order = rng.permutation(len(x))
        served = 0
        for start in list(range(0, len(x), BATCH_SIZE))[:batches]:
            rows = order[start : start + BATCH_SIZE]
            xb = layers(x[rows], training=True)
            yb = y[rows]
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        return served

    return run


def case_loader(x: np.ndarray, y: np.ndarray, augmented: bool) -> EpochFn:
    import gpuloader

    extra = {"augment": _ops()} if augmented else {}
    loader = gpuloader.Loader(
        x, y, batch_size=BATCH_SIZE, shuffle=True, seed=SEED, verbose=False, workers=1, device="host", **extra
    )

    def run(epoch: int, batches: int | None = None) -> int:
        served = 0
        for index in list(range(len(loader)))[:batches]:
            xb, yb = loader[index]
            served += xb.shape[0]
            assert yb.shape[0] == xb.shape[0]
        loader.on_epoch_end()
        return served

    return run


CASES: dict[str, Callable[[np.ndarray, np.ndarray], EpochFn]] = {
    "plain": case_plain,
    "augment": case_augment,
    "tfdata": case_tfdata,
    "keras": case_keras,
    "augment_generic": lambda x, y: case_augment(x, y, generic=True),
    "loader_plain": lambda x, y: case_loader(x, y, augmented=False),
    "loader_augment": lambda x, y: case_loader(x, y, augmented=True),
}


def run_case(name: str, rows: int | None, epochs: int) -> dict[str, Any]:
    """Build the case, warm it up, time ``epochs`` epochs; each must serve every row."""
    x, y = synthetic.make("cifar", rows)
    build_start = time.perf_counter()
    run = CASES[name](x, y)
    build_s = time.perf_counter() - build_start
    warmup_start = time.perf_counter()
    run(0, TF_WARMUP_BATCHES if name in TF_CASES else None)
    warmup_s = time.perf_counter() - warmup_start
    wall, cpu = [], []
    for epoch in range(1, epochs + 1):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        served = run(epoch)
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
        if served != len(x):
            raise RuntimeError(f"{name}: an epoch served {served} rows, expected {len(x)}")
    return {
        "case": name,
        "rows": len(x),
        "batches": -(-len(x) // BATCH_SIZE),
        "build_s": build_s,
        "warmup_s": warmup_s,
        "epoch_s": wall,
        "epoch_cpu_s": cpu,
        "median_s": statistics.median(wall),
        "median_cpu_s": statistics.median(cpu),
    }


# ------------------------------------------------------------------ the driver
def case_env() -> dict[str, str]:
    try:
        import run as harness

        return harness.case_env()
    except Exception:  # the main harness being edited must not stop this benchmark
        env = dict(os.environ)
        env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
        return env


def machine_info() -> dict[str, Any]:
    try:
        import run as harness

        return harness.machine_info()
    except Exception:
        import platform

        return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def load_average() -> list[float]:
    try:
        return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def spawn(name: str, rows: int | None, epochs: int) -> dict[str, Any]:
    """Run one case in a fresh process; its JSON, or ``{"error": ...}``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--epochs", str(epochs)]
    if rows is not None:
        command += ["--rows", str(rows)]
    load_before = load_average()
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=case_env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"exit status {done.returncode}:\n{tail}"}
    result = json.loads(lines[-1])
    result.update(process_s=time.perf_counter() - start, load_before=load_before, load_after=load_average())
    return result


def summarise(names: list[str], raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for name in names:
        good = [result for result in raw[name] if "error" not in result]
        row: dict[str, Any] = {"rounds_ok": len(good), "errors": [r["error"] for r in raw[name] if "error" in r]}
        if good:
            per_round = [result["median_s"] for result in good]
            row.update(
                per_round_s=per_round,
                median_s=statistics.median(per_round),
                min_s=min(per_round),
                max_s=max(per_round),
                median_cpu_s=statistics.median(result["median_cpu_s"] for result in good),
                rows=good[0]["rows"],
                batches=good[0]["batches"],
            )
        summary[name] = row
    return summary


def check_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for numerator, denominator, kind, bound in TARGETS:
        top, bottom = summary.get(numerator, {}), summary.get(denominator, {})
        if "median_s" not in top or "median_s" not in bottom:
            continue
        ratio = top["median_s"] / bottom["median_s"]
        passed = ratio <= bound if kind == "max" else ratio >= bound
        checks.append(
            {
                "ratio": f"{numerator} / {denominator}",
                "value": ratio,
                "target": f"{'<=' if kind == 'max' else '>='} {bound}",
                "met": passed,
            }
        )
    return checks


def format_report(summary: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    lines = [f"{'case':<16}{'epoch (median)':>16}{'min':>10}{'max':>10}{'CPU s':>10}{'batches/s':>12}  rounds"]
    for name, row in summary.items():
        if "median_s" not in row:
            lines.append(f"{name:<16}  failed: {row['errors'][-1].splitlines()[-1] if row['errors'] else '?'}")
            continue
        lines.append(
            f"{name:<16}{row['median_s'] * 1e3:>13.1f} ms{row['min_s'] * 1e3:>7.1f} ms{row['max_s'] * 1e3:>7.1f} ms"
            f"{row['median_cpu_s']:>10.3f}{row['batches'] / row['median_s']:>12.0f}  {row['rounds_ok']}"
        )
    lines.append("")
    for check in checks:
        verdict = "met" if check["met"] else "NOT met"
        lines.append(f"{check['ratio']:<34} = {check['value']:6.2f}   target {check['target']:<8} {verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every case (default 2)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per NumPy case process (default 5)")
    parser.add_argument("--tf-epochs", type=int, default=1, help="timed epochs per TensorFlow case process (default 1)")
    parser.add_argument("--rows", type=int, default=None, help="samples (default: 50000, the CIFAR-10 size)")
    parser.add_argument(
        "--cases",
        default=None,
        help=f"comma-separated from {', '.join(CASES)} (default: {', '.join(DEFAULT_CASES)}, "
        "plus the loader cases when the Loader takes augment)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/results)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1 or args.tf_epochs < 1:
        parser.error("--rounds, --epochs and --tf-epochs must be at least 1")
    if args.cases is None:
        args.cases = list(DEFAULT_CASES) + (["loader_plain", "loader_augment"] if loader_takes_augment() else [])
    else:
        args.cases = [name.strip() for name in args.cases.split(",") if name.strip()]
        unknown = [name for name in args.cases if name not in CASES]
        if unknown or not args.cases:
            parser.error(f"--cases: unknown or empty {unknown or args.cases}; choose from {', '.join(CASES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.rows, args.epochs)))
        return 0
    start = time.perf_counter()
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in args.cases}
    for round_index in range(args.rounds):
        for name in args.cases:
            epochs = args.tf_epochs if name in TF_CASES else args.epochs
            result = spawn(name, args.rows, epochs)
            raw[name].append(result)
            figure = f"{result['median_s'] * 1e3:.1f} ms/epoch" if "error" not in result else "FAILED"
            print(f"round {round_index + 1}/{args.rounds} {name:<16} {figure}", flush=True)
    summary = summarise(args.cases, raw)
    checks = check_targets(summary)
    report = format_report(summary, checks)
    print()
    print(report)
    elapsed = time.perf_counter() - start
    print(f"\n{args.rounds} rounds in {elapsed:.0f} s; load average now {load_average()}")
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "augment",
        "machine": machine_info(),
        "config": {
            "dataset": "cifar (synthetic, bench/synthetic.py)",
            "rows": args.rows or synthetic.SPECS["cifar"].rows,
            "batch_size": BATCH_SIZE,
            "gpuloader_ops": [repr(op) for op in _ops()],
            "baselines_do": "crop (pad 4, reflect) + horizontal flip, no cutout",
            "rounds": args.rounds,
            "epochs": args.epochs,
            "tf_epochs": args.tf_epochs,
            "cases": args.cases,
        },
        "summary": summary,
        "targets": checks,
        "raw": raw,
        "elapsed_s": elapsed,
    }
    target = args.out / "augment.json"
    target.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {target}")
    return 0 if all(row["rounds_ok"] == args.rounds for row in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
