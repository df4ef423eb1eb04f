"""Cold epochs from disk: gpuloader's read-ahead in the epoch's order against the seed Sequence over a memory map.

Usage: ``python bench/cold.py [--quick] [--rounds N] [--rows N] [--dir DIR] [--cases a,b,...] [--keep]``; also
the ``cold`` suite of ``make bench-full`` (seed, gpuloader1, gpuloader; 3 rounds; each case process alone).

Data: ``x.npy`` (float32 rows of 3072 values, 12 KiB a row) and ``y.npy`` written
once into ``--dir`` (default ``/tmp/gpuloader_cold``; 100 000 rows, 1.23 GB) by
``synthetic.write_npy`` and deleted at the end unless ``--keep``. The file fits
in the page cache here, as after a reboot or for a first epoch.

Each case runs in a process of its own (``python bench/cold.py --case NAME``),
and the cases are interleaved round by round (A B C, B C A, ...), since this
machine is shared. In its process a case builds its loader, reads a 20-batch
warm-up, then times, in the order the round says:

- a **partial** epoch: the first 40% of a new epoch's batches, the consumer
  then stops (the loader cannot know it will: its pass is the whole epoch);
- a **rest** epoch: the last 40% of an epoch's batches, as a pass that starts
  there (gpuloader: ``set_state`` at that batch, as a resumed epoch; the seed:
  ``sequence[i]`` for those batches), so the loader knows the pass's batches;
- a **full** epoch.

Before every epoch
(warm-up included), outside the timing, the files' pages are evicted from the
page cache (``pagecache.evict``: ``POSIX_FADV_DONTNEED`` after dropping this
process's mappings), so every epoch starts cold. With ``--warm`` (a bound, not a
target) they are read into it instead (``pagecache.cache``): the epoch without the disk. Each batch goes through
TensorFlow (``tf.convert_to_tensor`` for the seed, ``get_tf_dataset()`` for
gpuloader, the path ``fit`` takes).

Cases:

- ``seed``: the seed's Sequence over ``np.load(path, mmap_mode="r")`` (``x[indices]``).
- ``gpuloader1`` / ``gpuloader``: ``Loader(device="disk")`` with ``workers=1`` / ``4``.
- ``noahead1``: ``gpuloader1`` with the read-ahead of :mod:`gpuloader.readahead` turned off
  (``for_pass`` returns None): the disk tier as it was.
- ``nosweep1``: ``gpuloader1`` with the window only (``SWEEP_SHARE = 0``: no sequential sweep).

Reported: per case and kind, the median seconds over rounds and the spread
(min-max), the storage bytes read (``/proc/self/io``) and the peak anonymous
memory above the figure before the epoch; then the ratios seed / case of the
medians, the targets of issue 19 item 5 (partial >= 2x, full >= 1.5x, 4 workers
never slower than 1; the partial target shown for both partial kinds) and, per
round, the same ratios (their spread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_DIR = Path("/tmp/gpuloader_cold")
DEFAULT_ROWS = 100_000  # 1.23 GB
PARTIAL_SHARE = 0.4
WARMUP_BATCHES = 20
CASES = ("seed", "gpuloader1", "gpuloader", "noahead1", "nosweep1")
DEFAULT_CASES = ("seed", "gpuloader1", "gpuloader")
KINDS = ("partial", "rest", "full")
TARGETS = (  # (kind, case, baseline, at least)
    ("partial", "gpuloader1", "seed", 2.0),
    ("rest", "gpuloader1", "seed", 2.0),
    ("full", "gpuloader1", "seed", 1.5),
    ("partial", "gpuloader", "gpuloader1", 1.0),
    ("rest", "gpuloader", "gpuloader1", 1.0),
    ("full", "gpuloader", "gpuloader1", 1.0),
)


# ------------------------------------------------------------------ one case
def _make_case(case: str, x_path: Path, y_path: Path) -> Any:
    import cases

    if case == "seed":
        return cases.disk_seed(x_path, y_path)[0]
    if case == "noahead1":
        from gpuloader import readahead

        readahead.for_pass = lambda *args, **kwargs: None
    if case == "nosweep1":
        from gpuloader import readahead

        readahead.SWEEP_SHARE = 0.0
    workers = 4 if case == "gpuloader" else 1
    return cases.disk_gpuloader(x_path, y_path, workers=workers)[0]


def run_case(case: str, directory: Path, kinds: list[str], warm: bool = False) -> dict[str, Any]:
    """In this process: warm up, then one cold epoch of each kind (``warm``: files cached); returns the figures."""
    import numpy as np
    import pagecache
    import synthetic

    paths = [directory / name for name in synthetic.DISK_FILES]
    rows = int(np.load(paths[0], mmap_mode="r").shape[0])
    full = -(-rows // synthetic.BATCH_SIZE)
    partial = max(1, round(PARTIAL_SHARE * full))
    batches = {"partial": partial, "rest": partial, "full": full}
    firsts = {"partial": 0, "rest": full - partial, "full": 0}
    run_epoch = _make_case(case, *paths)
    pagecache.evict(paths)
    run_epoch(0, WARMUP_BATCHES, lambda: None)
    probe = pagecache.MemoryProbe()
    results = {}
    for epoch, kind in enumerate(kinds, start=1):
        if warm:
            pagecache.cache(paths)
        else:
            pagecache.evict(paths)
        cached = sum(pagecache.resident_bytes(path)[0] for path in paths)
        before = probe.read()["RssAnon"]
        peak = [before]

        def after_batch(peak: list[int] = peak) -> None:
            peak[0] = max(peak[0], probe.read()["RssAnon"])

        read_before = pagecache.storage_read_bytes()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        served = run_epoch(epoch, batches[kind], after_batch, first=firsts[kind])
        seconds = time.perf_counter() - start
        used = resource.getrusage(resource.RUSAGE_SELF)
        first_row = firsts[kind] * synthetic.BATCH_SIZE
        expected = min(first_row + batches[kind] * synthetic.BATCH_SIZE, rows) - first_row
        if served != expected:
            raise RuntimeError(f"{case}: a {kind} epoch served {served} rows, expected {expected}")
        results[kind] = {
            "seconds": seconds,
            "batches": batches[kind],
            "storage_read_bytes": pagecache.storage_read_bytes() - read_before,
            "cached_after_eviction_bytes": cached,
            "peak_rss_anon_delta_bytes": peak[0] - before,
            "cpu_s": used.ru_utime + used.ru_stime - usage.ru_utime - usage.ru_stime,
        }
    probe.close()
    return {"case": case, "rows": rows, "file_bytes": sum(path.stat().st_size for path in paths), "kinds": results}


# ------------------------------------------------------------------- driver
def _child(case: str, directory: Path, kinds: list[str], warm: bool = False) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH_DIR)]), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, __file__, "--case", case, "--dir", str(directory), "--kinds", ",".join(kinds)]
        + ["--warm"] * warm,
        capture_output=True, text=True, env=env, timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"case {case} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _ratio_rows(medians: dict[tuple[str, str], float]) -> list[str]:
    lines = []
    for kind, case, baseline, target in TARGETS:
        if (kind, case) in medians and (kind, baseline) in medians:
            ratio = medians[(kind, baseline)] / medians[(kind, case)]
            verdict = "met" if ratio >= target else "NOT met"
            lines.append(f"  {kind:7s} {case} vs {baseline}: {ratio:.2f}x (target >= {target}x: {verdict})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of seed, gpuloader1, gpuloader (~2 minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 2)")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of x.npy (12 KiB each)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder for x.npy and y.npy")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--keep", action="store_true", help="keep the data files (reused by the next run)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument(
        "--warm", action="store_true", help="a bound, not a target: every file read into the page cache before "
        "each epoch instead of evicted (the epoch's time without the disk)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--kinds", default=",".join(KINDS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.dir, args.kinds.split(","), args.warm)))
        return
    import synthetic

    chosen = [case for case in args.cases.split(",") if case]
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES)}")
    rounds = args.rounds or (2 if args.quick else 5)
    needed = synthetic.disk_nbytes(args.rows)
    args.dir.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(args.dir).free < needed + (1 << 30) and not synthetic.npy_matches(
        args.dir / "x.npy", (args.rows, *synthetic.DISK_SAMPLE_SHAPE), synthetic.DISK_DTYPE
    ):
        parser.error(f"{args.dir} has too little free space for {needed / 1e9:.2f} GB of data plus 1 GB")
    started = time.perf_counter()
    synthetic.write_npy(args.dir, args.rows)
    from gpuloader import placement

    print(
        f"data: {args.dir}/x.npy, {args.rows} rows, {needed / 1e9:.2f} GB; available memory "
        f"{placement.available_host_memory() / 1e9:.1f} GB; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}"
        + ("; WARM: files cached before every epoch" if args.warm else ""),
        flush=True,
    )
    figures: dict[tuple[str, str], list[dict[str, Any]]] = {}
    per_round: list[dict[tuple[str, str], float]] = []
    try:
        for round_index in range(rounds):
            order = chosen[round_index % len(chosen):] + chosen[: round_index % len(chosen)]
            kinds = list(KINDS[round_index % len(KINDS):] + KINDS[: round_index % len(KINDS)])
            this_round = {}
            for case in order:
                result = _child(case, args.dir, kinds, args.warm)
                for kind, record in result["kinds"].items():
                    figures.setdefault((kind, case), []).append(record)
                    this_round[(kind, case)] = record["seconds"]
                print(
                    f"round {round_index + 1}/{rounds} {case:11s} "
                    + "  ".join(f"{kind} {result['kinds'][kind]['seconds']:.3f} s" for kind in kinds),
                    flush=True,
                )
            per_round.append(this_round)
    finally:
        if not args.keep:
            for name in synthetic.DISK_FILES:
                (args.dir / name).unlink(missing_ok=True)
    medians = {key: statistics.median(r["seconds"] for r in records) for key, records in figures.items()}
    state = "files cached before each (warm)" if args.warm else "page cache evicted before each"
    print(f"\n{'warm' if args.warm else 'cold'} epochs, {rounds} interleaved rounds, {state} (median, min-max):")
    for (kind, case), records in sorted(figures.items()):
        seconds = [r["seconds"] for r in records]
        read = statistics.median(r["storage_read_bytes"] for r in records)
        anon = max(r["peak_rss_anon_delta_bytes"] for r in records)
        cpu = statistics.median(r["cpu_s"] for r in records)
        print(
            f"  {kind:7s} {case:11s} {medians[(kind, case)]:.3f} s ({min(seconds):.3f}-{max(seconds):.3f})  "
            f"read {read / 1e6:.0f} MB  peak anon +{anon / 1e6:.0f} MB  cpu {cpu:.2f} s  "
            f"batches {records[0]['batches']}"
        )
    print("ratios of the medians:")
    print("\n".join(_ratio_rows(medians)))
    print("ratios per round (spread):")
    for kind, case, baseline, _ in TARGETS:
        ratios = [
            r[(kind, baseline)] / r[(kind, case)] for r in per_round if (kind, case) in r and (kind, baseline) in r
        ]
        if ratios:
            print(f"  {kind:7s} {case} vs {baseline}: " + " ".join(f"{ratio:.2f}" for ratio in ratios))
    print(f"total {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({f"{kind}/{case}": records for (kind, case), records in figures.items()}))


# ------------------------------------------------------------------ as a suite of bench/run.py (bench/suite.py)
def plan(run_args: argparse.Namespace) -> Any:
    """make bench-full only (about 3 minutes a round): seed, gpuloader1, gpuloader, 3 rounds, each case alone.

    A case process runs the three kinds in one order every round (the standalone run rotates them).
    """
    from suite import Case, Plan

    if run_args.profile != "full":
        return Plan("cold", [], 0, skipped=f"{run_args.profile} profile: cold epochs of a 1.23 GB file take minutes; "
                    "make bench-full or python bench/cold.py")
    import synthetic

    directory = DEFAULT_DIR

    def setup() -> dict[str, Any]:
        needed = synthetic.disk_nbytes(DEFAULT_ROWS)
        directory.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(directory).free < needed + (1 << 30):
            raise RuntimeError(f"{directory} has too little free space for {needed / 1e9:.2f} GB of data plus 1 GB")
        synthetic.write_npy(directory, DEFAULT_ROWS)
        return {}

    def cleanup() -> None:
        for name in synthetic.DISK_FILES:
            (directory / name).unlink(missing_ok=True)

    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH_DIR)])}
    found = [Case(case, "cold.py", ("--case", case, "--dir", str(directory), "--kinds", ",".join(KINDS)),
                  label=f"cold   {case}", alone=True, env=env) for case in DEFAULT_CASES]
    about = [f"{DEFAULT_ROWS} rows x 3072 float32 (1.23 GB) in {directory}, page cache evicted before each epoch: "
             f"{', '.join(KINDS)} epochs of {', '.join(DEFAULT_CASES)}"]
    return Plan("cold", found, run_args.rounds or 3, about=about, setup=setup, cleanup=cleanup)


def progress_figure(case: Any, result: dict[str, Any]) -> str:
    return "  ".join(f"{kind} {record['seconds']:.2f} s" for kind, record in result["kinds"].items())


def report(plan: Any, results: dict[str, list[dict[str, Any]]]) -> Any:
    """Median seconds per kind and case, and the targets of TARGETS (MISSING where a case failed)."""
    from suite import Report, Target

    medians = {
        (kind, case): statistics.median(r["kinds"][kind]["seconds"] for r in rounds)
        for case, rounds in results.items() if rounds and all("kinds" in r for r in rounds)
        for kind in KINDS
    }
    lines = [f"  {kind:7s} {case:11s} {seconds:.3f} s" for (kind, case), seconds in sorted(medians.items())]
    targets = []
    for kind, case, baseline, bound in TARGETS:
        what = f"{kind}: {baseline} / {case}"
        if (kind, case) in medians and (kind, baseline) in medians:
            ratio = medians[(kind, baseline)] / medians[(kind, case)]
            targets.append(Target("cold", kind, what, f"{ratio:.2f}x", f">= {bound:g}x",
                                  "met" if ratio >= bound else "MISSED"))
        else:
            targets.append(Target("cold", kind, what, "n/a", f">= {bound:g}x", "MISSING"))
    data = {"medians_s": {f"{kind}/{case}": value for (kind, case), value in medians.items()}, "raw": results}
    return Report("\n".join(lines), targets, data)


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    main()
