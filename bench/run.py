"""Host benchmark of gpuloader against named baselines (``make bench``).

Usage: ``python bench/run.py [--rounds N] [--quick] [--modes epoch,fit]
[--datasets mnist,cifar] [--out DIR] [--jobs N]``

Every case runs in a process of its own (``bench/cases.py``), and the cases are
interleaved across rounds (round 1: A B C D, round 2: A B C D, ...): after
``tf.data`` has run in a process, later work there runs about 2x slower
(shared/notes/pitfalls.md, item 5). A case's figure for one round is the median
of its timed epochs; its reported figure is the median over rounds. Speedups
are ``baseline seconds / gpuloader seconds`` from the medians of the same run.

Writes ``<out>/bench.json`` (every raw figure, the machine, the targets) and
``<out>/bench.png``; ``<out>`` defaults to ``bench/results``. When a CUDA device
is usable, ``bench/device.py`` adds the device rows. Exit status: 0 when every
case ran (whether or not the targets are met), 1 when a case failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import cases
import synthetic

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results"
GPULOADER = "gpuloader"

# Timed epochs per case process (after one warm-up epoch), tuned so that the
# default run (5 rounds, both modes and datasets) takes about 10 minutes on 2 cores.
TIMED_EPOCHS = {"epoch": 30, "fit": 12}
QUICK_ROWS = 4096
QUICK_ROUNDS = 2
QUICK_JOBS = 2
CASE_TIMEOUT_S = 600

# Minimum speedup of gpuloader over each baseline: baseline seconds / gpuloader seconds.
TARGETS: dict[str, dict[str, float]] = {
    "epoch": {"seed": 1.5, "tfdata": 3.0, "gather": 0.75},
    "fit": {"seed": 1.4, "arrays": 1.3, "tfdata": 1.2},
}


def case_env() -> dict[str, str]:
    """The environment of a case process: TensorFlow quiet, Keras on TensorFlow, the rest inherited."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["KERAS_BACKEND"] = "tensorflow"
    return env


def run_case(case: str, dataset: str, mode: str, rows: int | None, epochs: int) -> dict[str, Any]:
    """Run one case in a fresh process; return its JSON, or ``{"error": ...}`` when it failed."""
    command = [sys.executable, str(BENCH_DIR / "cases.py"), case, dataset, mode, "--epochs", str(epochs)]
    if rows is not None:
        command += ["--rows", str(rows)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=case_env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    process_s = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"exit status {done.returncode}:\n{tail}"}
    result = json.loads(lines[-1])
    result["process_s"] = process_s
    return result


Key = tuple[str, str, str]  # (mode, dataset, case)


def summarise(plan: list[Key], raw: dict[Key, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Median over rounds of each case's per-round median, with its spread and batches per second."""
    rows = []
    for key in plan:
        mode, dataset, case = key
        good = [result for result in raw[key] if "error" not in result]
        row: dict[str, Any] = {"mode": mode, "dataset": dataset, "case": case, "rounds_ok": len(good)}
        if good:
            per_round = [result["median_s"] for result in good]
            median = statistics.median(per_round)
            row.update(
                per_round_s=per_round,
                median_s=median,
                min_s=min(per_round),
                max_s=max(per_round),
                batches=good[0]["batches"],
                batches_per_s=good[0]["batches"] / median,
            )
        rows.append(row)
    return rows


def speedups(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """gpuloader against every other case of the same mode and dataset: baseline_s / gpuloader_s."""
    medians = {(row["mode"], row["dataset"], row["case"]): row.get("median_s") for row in summary}
    ratios = []
    for (mode, dataset, case), baseline_s in medians.items():
        if case == GPULOADER:
            continue
        gpuloader_s = medians.get((mode, dataset, GPULOADER))
        ratio = baseline_s / gpuloader_s if baseline_s and gpuloader_s else None
        ratios.append(
            {
                "mode": mode,
                "dataset": dataset,
                "baseline": case,
                "baseline_s": baseline_s,
                "gpuloader_s": gpuloader_s,
                "speedup": ratio,
            }
        )
    return ratios


def check_targets(ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/FAIL of every target that has a measured ratio (MISSING when a case failed)."""
    checks = []
    for ratio in ratios:
        minimum = TARGETS.get(ratio["mode"], {}).get(ratio["baseline"])
        if minimum is None:
            continue
        speedup = ratio["speedup"]
        status = "MISSING" if speedup is None else "PASS" if speedup >= minimum else "FAIL"
        checks.append({**ratio, "target": minimum, "status": status})
    return checks


def format_table(summary: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table, one row per case."""
    by_case = {(r["mode"], r["dataset"], r["baseline"]): r["speedup"] for r in ratios}
    header = (
        f"{'mode':<6} {'dataset':<8} {'case':<10} {'median s':>9} {'min s':>9} {'max s':>9} "
        f"{'batches/s':>10} {'gpuloader speedup':>18}"
    )
    lines = [header, "-" * len(header)]
    for row in summary:
        key = (row["mode"], row["dataset"], row["case"])
        if "median_s" not in row:
            lines.append(f"{key[0]:<6} {key[1]:<8} {key[2]:<10} {'failed':>9}")
            continue
        speedup = by_case.get(key)
        shown = "-" if row["case"] == GPULOADER else "n/a" if speedup is None else f"{speedup:.2f}x"
        lines.append(
            f"{key[0]:<6} {key[1]:<8} {key[2]:<10} {row['median_s']:>9.4f} {row['min_s']:>9.4f} "
            f"{row['max_s']:>9.4f} {row['batches_per_s']:>10.0f} {shown:>18}"
        )
    return "\n".join(lines)


def format_targets(checks: list[dict[str, Any]]) -> str:
    """One PASS/FAIL line per target."""
    lines = []
    for check in checks:
        speedup = "n/a" if check["speedup"] is None else f"{check['speedup']:.2f}x"
        lines.append(
            f"  {check['status']:<7} {check['mode']:<6} {check['dataset']:<6} gpuloader vs "
            f"{check['baseline']:<7} {speedup:>7}  (target >= {check['target']:g}x)"
        )
    return "\n".join(lines)


def device_rows(out: Path, quick: bool) -> dict[str, Any]:
    """Run ``bench/device.py`` when a CUDA device is usable and print its table; otherwise say why not.

    Its process inherits ``KERAS_BACKEND`` (device.py picks one when it is unset:
    the GPU machine has no TensorFlow).
    """
    from gpuloader import _cuda

    status = _cuda.probe()
    if not status.usable:
        print(f"device rows: skipped ({status.reason})")
        return {"skipped": status.reason}
    script = BENCH_DIR / "device.py"
    if not script.exists():
        print("device rows: skipped (bench/device.py is missing)")
        return {"skipped": "bench/device.py is missing", "device": status.name}
    target = out / "device.json"
    command = [sys.executable, str(script), "--json", str(target)] + (["--quick"] if quick else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"device rows: failed (timed out after {CASE_TIMEOUT_S} s)")
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    if done.returncode != 0 or not target.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"device rows: failed (exit status {done.returncode}):\n{tail}")
        return {"error": f"exit status {done.returncode}", "stderr_tail": tail}
    print(f"device rows ({target}):")
    print(done.stdout.rstrip())
    return json.loads(target.read_text())


def source_fingerprint() -> str:
    """SHA-256 of gpuloader's source files, to notice code that changes while the benchmark runs."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "gpuloader").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    """CPU count, platform, package versions, git commit and date of this run."""
    versions = {}
    for package in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "gpuloader", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "git_dirty": bool(dirty.strip()),
        "env": {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
    }


def write_chart(summary: list[dict[str, Any]], ratios: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of median seconds per epoch (min-max over rounds), one panel per mode, speedups on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(row["mode"] for row in summary))
    by_case = {(r["mode"], r["dataset"], r["baseline"]): r["speedup"] for r in ratios}
    figure, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for axis, mode in zip(axes[0], modes):
        rows = [row for row in summary if row["mode"] == mode and "median_s" in row]
        datasets = list(dict.fromkeys(row["dataset"] for row in rows))
        names = list(cases.MODES[mode])
        width = 0.8 / len(names)
        for index, name in enumerate(names):
            picked = [next((r for r in rows if r["dataset"] == d and r["case"] == name), None) for d in datasets]
            xs = [d + (index - (len(names) - 1) / 2) * width for d in range(len(datasets))]
            heights = [r["median_s"] * 1000 if r else 0.0 for r in picked]
            errors = [
                [(r["median_s"] - r["min_s"]) * 1000 if r else 0.0 for r in picked],
                [(r["max_s"] - r["median_s"]) * 1000 if r else 0.0 for r in picked],
            ]
            axis.bar(xs, heights, width, yerr=errors, capsize=3, label=name)
            for x, height, dataset in zip(xs, heights, datasets):
                speedup = by_case.get((mode, dataset, name))
                if speedup is not None:
                    axis.annotate(
                        f"{speedup:.2f}x",
                        (x, height),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 4),
                        textcoords="offset points",
                    )
        axis.set_xticks(range(len(datasets)), datasets)
        axis.set_ylabel("ms per epoch (median over rounds; lower is better)")
        axis.set_title(f"{mode}: label = baseline s / gpuloader s")
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every case (default 5; 2 with --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ROWS} rows, {QUICK_ROUNDS} rounds, 1 timed epoch, {QUICK_JOBS} processes at a time",
    )
    parser.add_argument("--modes", default="epoch,fit", help="comma-separated: epoch, fit (default both)")
    parser.add_argument("--datasets", default="mnist,cifar", help="comma-separated: mnist, cifar (default both)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/results)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"case processes at a time (default 1; {QUICK_JOBS} with --quick); above 1 timings are not comparable",
    )
    args = parser.parse_args(argv)
    args.modes = _choices(parser, "--modes", args.modes, cases.MODES)
    args.datasets = _choices(parser, "--datasets", args.datasets, synthetic.SPECS)
    args.rounds = args.rounds or (QUICK_ROUNDS if args.quick else 5)
    args.jobs = args.jobs or (QUICK_JOBS if args.quick else 1)
    if args.rounds < 1 or args.jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    return args


def _choices(parser: argparse.ArgumentParser, flag: str, value: str, known: Any) -> list[str]:
    picked = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in picked if item not in known]
    if unknown or not picked:
        parser.error(f"{flag}: unknown or empty {unknown or value!r}; choose from {', '.join(known)}")
    return picked


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = machine_info()
    fingerprint = source_fingerprint()
    rows = QUICK_ROWS if args.quick else None
    epochs = {mode: 1 if args.quick else TIMED_EPOCHS[mode] for mode in args.modes}
    plan = [(mode, dataset, case) for mode in args.modes for dataset in args.datasets for case in cases.MODES[mode]]
    sizes = ", ".join(f"{name} {rows or synthetic.SPECS[name].rows} rows" for name in args.datasets)
    print(
        f"gpuloader host benchmark: {len(plan)} cases x {args.rounds} rounds, each case in its own process "
        f"({args.jobs} at a time); batch {synthetic.BATCH_SIZE}; {sizes}"
    )
    print("per process: 1 warm-up epoch + " + ", ".join(f"{epochs[m]} timed epochs ({m} mode)" for m in args.modes))
    if args.quick or args.jobs > 1:
        print("note: a smoke run (small data or parallel processes); its timings are not meaningful")

    raw: dict[Key, list[dict[str, Any]]] = {key: [] for key in plan}
    failures = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for round_index in range(args.rounds):
            round_start = time.perf_counter()
            results = list(pool.map(lambda key: run_case(key[2], key[1], key[0], rows, epochs[key[0]]), plan))
            for key, result in zip(plan, results):
                result["round"] = round_index + 1
                raw[key].append(result)
                if "error" in result:
                    failures += 1
                    print(f"FAILED {' '.join(key)} (round {round_index + 1}): {result['error']}")
            print(f"round {round_index + 1}/{args.rounds} done in {time.perf_counter() - round_start:.0f} s")

    source = {"gpuloader_sha256_at_start": fingerprint, "gpuloader_sha256_at_end": source_fingerprint()}
    if source["gpuloader_sha256_at_start"] != source["gpuloader_sha256_at_end"]:
        print("WARNING: gpuloader/ changed while the benchmark ran; its rounds measured different code")
    summary = summarise(plan, raw)
    ratios = speedups(summary)
    checks = check_targets(ratios)
    print()
    print(format_table(summary, ratios))
    print()
    print("targets (speedup = baseline s / gpuloader s, medians of this run):")
    print(format_targets(checks))
    print()

    args.out.mkdir(parents=True, exist_ok=True)
    device = device_rows(args.out, args.quick)
    total_s = time.perf_counter() - started
    report = {
        "config": {
            "rounds": args.rounds,
            "quick": args.quick,
            "jobs": args.jobs,
            "modes": args.modes,
            "datasets": args.datasets,
            "rows": rows,
            "batch_size": synthetic.BATCH_SIZE,
            "warmup_epochs": 1,
            "timed_epochs": epochs,
            "cases": {mode: list(cases.MODES[mode]) for mode in args.modes},
        },
        "machine": machine,
        "source": source,
        "summary": summary,
        "speedups": ratios,
        "targets": checks,
        "device": device,
        "raw": [{"mode": m, "dataset": d, "case": c, "rounds": raw[m, d, c]} for m, d, c in plan],
        "failures": failures,
        "total_s": total_s,
    }
    json_path, png_path = args.out / "bench.json", args.out / "bench.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"gpuloader host benchmark, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"{args.rounds} rounds{' (quick)' if args.quick else ''}"
    )
    write_chart(summary, ratios, png_path, title)
    print(f"wrote {json_path} and {png_path}; total {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
