"""Decode once, then serve: gpuloader's input kinds against keras.utils.image_dataset_from_directory.

Run: ``python bench/ingest.py`` (5000 images, 3 rounds) or ``--quick`` (2000 images, 1 round, about a minute on
an idle 2-core machine). Also a suite of ``bench/run.py``: ``make bench`` runs 2000 images and 20000 rows in 2
rounds, ``make bench-full`` the 5000 images and 60000 rows of 3 rounds that docs/performance.md quotes.

The data: scikit-learn's handwritten digits (shipped inside its wheel, nothing downloaded), 8x8 upscaled to
28x28 with Pillow, written as grayscale PNGs into one folder per class, copies shifted by a pixel until there
are ``--images`` files. Both functions read them with ``image_size=(28, 28)``, ``color_mode="grayscale"``,
``batch_size=128``; batches are consumed as TensorFlow tensors.

Cases, each in a process of its own (forked from a parent that has imported TensorFlow, Keras, Pillow,
datasets and gpuloader and run nothing, so no case pays the imports or sees another's state), interleaved
round by round; the figure is the median over rounds:

- ``keras_epoch``: Keras's function built and one epoch iterated (it decodes every image every epoch).
- ``convert``: gpuloader's first call with an empty cache folder (lists, decodes over the cores, writes the
  cache, builds the Loader). Target (a): at most ``keras_epoch``.
- ``cached_first``: gpuloader's call with the cache in place, plus its first epoch. Target (b): 10x faster
  than ``keras_epoch``.
- ``keras_cached_steady`` / ``steady``: epochs 2-4 of Keras's dataset with ``.cache()`` (in memory) and of
  gpuloader's loader, median per epoch. Target (c): gpuloader 2x faster.
- ``hf`` / ``npy`` / ``npy_disk``: epochs over the same float32 rows (``--rows`` x 784) and int labels as a
  ``datasets.Dataset`` saved to disk and reopened (``from_hf_dataset``), as ``.npy`` files (``Loader`` on
  paths: read into RAM), and as ``.npy`` served from the file (``host_memory_limit=0``, the HF path's tier);
  with the anonymous memory (RssAnon) each process gained after TensorFlow's first op. Target (d): hf
  within 0.9x of npy, no second copy in RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

SIZE = (28, 28)
BATCH = 128
STEADY_EPOCHS = 3


def write_images(root: Path, count: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    base = (digits.images * (255 / 16)).astype(np.uint8)
    for i in range(count):
        shift = i // len(base)
        pixels = np.roll(base[i % len(base)], (shift % 3 - 1, shift // 3 % 3 - 1), axis=(0, 1))
        image = Image.fromarray(pixels, "L").resize(SIZE[::-1], Image.Resampling.BILINEAR)
        folder = root / f"digit_{digits.target[i % len(base)]}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:05d}.png")


def write_rows(root: Path, rows: int) -> None:
    import datasets

    rng = np.random.default_rng(0)
    x = rng.random((rows, 784), dtype=np.float32)
    y = (np.arange(rows) % 10).astype(np.int64)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    features = datasets.Features({"x": datasets.List(datasets.Value("float32"), length=784),
                                  "y": datasets.Value("int64")})
    datasets.Dataset.from_dict({"x": x, "y": y}, features=features).save_to_disk(str(root / "hf"))


def rss_anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def epoch(batches) -> float:
    start = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - start


def run_case(case: str, work: Path, round_index: int) -> dict:
    import keras
    import tensorflow as tf

    # Both libraries are imported before any timing (Keras's function is, by `import keras`), as the
    # standalone run does before its forks.
    import gpuloader
    import gpuloader.ingest.folder
    import gpuloader.loader

    tf.constant(1.0) + 1.0  # the runtime's ~170 MB before any baseline
    folder = work / "images"
    keras_args = {"image_size": SIZE, "color_mode": "grayscale", "batch_size": BATCH, "seed": 0, "verbose": False}
    ours_args = {**keras_args, "verbose": False}
    if case == "keras_epoch":
        start = time.perf_counter()
        epoch(keras.utils.image_dataset_from_directory(folder, **keras_args))
        return {"seconds": time.perf_counter() - start}
    if case == "keras_cached_steady":
        dataset = keras.utils.image_dataset_from_directory(folder, **keras_args).cache()
        epoch(dataset)
        return {"seconds": statistics.median(epoch(dataset) for _ in range(STEADY_EPOCHS))}
    if case == "convert":
        cache = work / f"cache-convert-{round_index}-{os.getpid()}"
        start = time.perf_counter()
        gpuloader.image_dataset_from_directory(folder, cache_dir=cache, **ours_args)
        seconds = time.perf_counter() - start
        shutil.rmtree(cache, ignore_errors=True)
        return {"seconds": seconds}
    if case == "cached_first":
        start = time.perf_counter()
        loader = gpuloader.image_dataset_from_directory(folder, cache_dir=work / "cache", **ours_args)
        opened = time.perf_counter() - start
        epoch(loader)
        return {"seconds": time.perf_counter() - start, "open_seconds": opened, "placement": loader.placement}
    if case == "steady":
        loader = gpuloader.image_dataset_from_directory(folder, cache_dir=work / "cache", **ours_args)
        epoch(loader)
        return {"seconds": statistics.median(epoch(loader) for _ in range(STEADY_EPOCHS))}
    import datasets  # in every numeric case, before the baseline: its import (pyarrow, pandas) is not data

    before = rss_anon()
    if case == "hf":
        loader = gpuloader.from_hf_dataset(datasets.load_from_disk(str(work / "hf")), x="x", y="y",
                                           batch_size=256, verbose=False)
    else:
        limit = 0 if case == "npy_disk" else None
        loader = gpuloader.Loader(str(work / "x.npy"), str(work / "y.npy"), batch_size=256, verbose=False,
                                  host_memory_limit=limit)
    epoch(loader)
    seconds = statistics.median(epoch(loader) for _ in range(STEADY_EPOCHS))
    return {"seconds": seconds, "anon_bytes": rss_anon() - before, "placement": loader.placement}


def forked(case: str, work: Path, round_index: int) -> dict:
    """Run one case in a forked child; its result comes back through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            result = run_case(case, work, round_index)
        except BaseException as error:  # reported to the parent, which fails the run
            result, code = {"error": f"{type(error).__name__}: {error}"}, 1
        with os.fdopen(write, "w") as out:
            out.write(json.dumps(result))
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(text)
    if "error" in result:
        raise RuntimeError(f"case {case}: {result['error']}")
    return result


CASES = ["keras_epoch", "convert", "cached_first", "keras_cached_steady", "steady", "hf", "npy", "npy_disk"]


IMAGE_CASES = ("keras_epoch", "convert", "cached_first", "keras_cached_steady", "steady")


def prepare(work: Path, images: int, rows: int, cases: list[str] | tuple[str, ...] = CASES) -> None:
    """What ``cases`` read: the images (their pages warmed for every case alike, and the cache cached_first
    opens) and the rows."""
    import gpuloader as gl

    if set(cases) & set(IMAGE_CASES):
        write_images(work / "images", images)
        forked("convert", work, -1)
        gl.image_dataset_from_directory(work / "images", image_size=SIZE, color_mode="grayscale",
                                        cache_dir=work / "cache", verbose=False)
    if set(cases) - set(IMAGE_CASES):
        write_rows(work, rows)


def summarise(run: dict[str, list[dict]], images: int, rows: int, rounds: int) -> dict:
    """Medians over rounds of every case run, and the ratios of the targets whose cases all ran."""
    median = {case: statistics.median(r["seconds"] for r in results) for case, results in run.items()}
    report = {"images": images, "rows": rows, "rounds": rounds, "cores": os.cpu_count(), "seconds": median}
    have = set(run).issuperset
    if have({"keras_epoch", "convert"}):
        report["a_convert_vs_keras_epoch"] = median["keras_epoch"] / median["convert"]
    if have({"keras_epoch", "cached_first"}):
        report["b_cached_first_epoch_vs_keras_epoch"] = median["keras_epoch"] / median["cached_first"]
        report["b_open_seconds"] = statistics.median(r["open_seconds"] for r in run["cached_first"])
    if have({"keras_cached_steady", "steady"}):
        report["c_steady_vs_keras_cache"] = median["keras_cached_steady"] / median["steady"]
    if have({"hf", "npy", "npy_disk"}):
        report["d_hf_vs_npy"] = median["npy"] / median["hf"]
        report["d_hf_vs_npy_disk"] = median["npy_disk"] / median["hf"]
        report["d_anon_mb"] = {case: round(max(r["anon_bytes"] for r in run[case]) / 1e6, 1)
                               for case in ("hf", "npy", "npy_disk")}
        report["data_mb"] = round(rows * 785 * 4 / 1e6, 1)
    report["placements"] = {case: run[case][0].get("placement") for case in ("cached_first", "hf", "npy", "npy_disk")
                            if case in run}
    return report


#: The targets of issue 19: (what, figure key, bound).
TARGETS = (
    ("(a) conversion vs keras_epoch", "a_convert_vs_keras_epoch", 1.0),
    ("(b) cached_first (new process) vs keras_epoch", "b_cached_first_epoch_vs_keras_epoch", 10.0),
    ("(c) steady vs keras .cache()", "c_steady_vs_keras_cache", 2.0),
    ("(d) hf numeric vs npy in RAM", "d_hf_vs_npy", 0.9),
)


def format_report(report: dict) -> str:
    lines = [f"{report['images']} PNGs 28x28, {report['rows']} rows x 784 float32, {report['rounds']} round(s), "
             f"{report['cores']} cores, load average {os.getloadavg()[0]:.2f} at the end"]
    lines += [f"  {case:<20} {seconds * 1000:9.1f} ms" for case, seconds in report["seconds"].items()]
    lines += [f"{what}: {report[key]:.2f}x (target >= {bound:g})" for what, key, bound in TARGETS if key in report]
    if "b_open_seconds" in report:
        lines.append(f"  the cached call alone (of cached_first): {report['b_open_seconds'] * 1000:.0f} ms")
    if "d_hf_vs_npy" in report:
        lines.append(f"  hf vs .npy served from the file: {report['d_hf_vs_npy_disk']:.2f}x; anonymous MB gained "
                     f"{report['d_anon_mb']} (data {report['data_mb']} MB); placements {report['placements']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2000 images, 20000 rows, 1 round")
    parser.add_argument("--images", type=int)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES,
                        help="run only these cases (the ratios of cases not run are left out)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # bench/run.py: one case, --work's data
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # bench/run.py: write --work
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    images = args.images or (2000 if args.quick else 5000)
    rows = args.rows or (20000 if args.quick else 60000)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.case:
        print(json.dumps(run_case(args.case, args.work, 0)))
        return 0

    import datasets  # noqa: F401  (imported once here, before the forks, as TensorFlow and Keras are)
    import keras  # noqa: F401
    import PIL.Image  # noqa: F401
    import tensorflow  # noqa: F401

    import gpuloader.ingest.folder
    import gpuloader.loader  # noqa: F401

    if args.prepare:
        prepare(args.work, images, rows)
        return 0
    work = Path(tempfile.mkdtemp(prefix="gpuloader-bench-ingest-"))
    try:
        cases = [case for case in CASES if case in args.cases]
        prepare(work, images, rows, cases)
        run = {case: [] for case in cases}
        for round_index in range(rounds):
            for case in cases:
                run[case].append(forked(case, work, round_index))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = summarise(run, images, rows, rounds)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps({"runs": run, **report}, indent=1))
    return 0


# ------------------------------------------------------------------ as a suite of bench/run.py (bench/suite.py)
#: (images, rows, rounds) of each profile.
SUITE_SIZES = {"quick": (2000, 20000, 2), "full": (5000, 60000, 3), "smoke": (200, 2000, 1)}
def plan(run_args: argparse.Namespace) -> Any:
    """The eight case processes of one round; setup writes the folder, the rows and the cache once."""
    from suite import Case, Plan

    images, rows, rounds = SUITE_SIZES[run_args.profile]
    work = Path(tempfile.mkdtemp(prefix="gpuloader-bench-ingest-"))

    def setup() -> dict[str, Any]:
        command = [sys.executable, str(Path(__file__).resolve()), "--prepare", "--work", str(work),
                   "--images", str(images), "--rows", str(rows)]
        subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        return {}

    found = [Case(case, "ingest.py", ("--case", case, "--work", str(work)), label=f"ingest {case}", forkable=True)
             for case in CASES]
    about = [f"{images} grayscale PNGs 28x28 (scikit-learn's digits) against keras.utils.image_dataset_from_directory;"
             f" {rows} rows x 784 float32 as a datasets.Dataset and as .npy"]
    return Plan("ingest", found, run_args.rounds or rounds, about=about, setup=setup,
                cleanup=lambda: shutil.rmtree(work, ignore_errors=True), options=(images, rows))


def progress_figure(case: Any, result: dict[str, Any]) -> str:
    return f"{result['seconds'] * 1e3:.1f} ms"


def report(plan: Any, results: dict[str, list[dict[str, Any]]]) -> Any:
    """The cases' medians and the four targets (MISSING where a case failed)."""
    from suite import Report, Target

    failed = [case for case, rounds in results.items() if not rounds or any("error" in r for r in rounds)]
    if failed:
        targets = [Target("ingest", "", what, "n/a", f">= {bound:g}x", "MISSING") for what, _, bound in TARGETS]
        return Report(f"failed: {', '.join(failed)}", targets, {"raw": results})
    images, rows = plan.options
    summary = summarise(results, images, rows, plan.rounds)
    targets = [Target("ingest", "", what, f"{summary[key]:.2f}x", f">= {bound:g}x",
                      "met" if summary[key] >= bound else "MISSED") for what, key, bound in TARGETS]
    return Report(format_report(summary), targets, {**summary, "raw": results})


if __name__ == "__main__":
    raise SystemExit(main())
