"""The run's report: each suite's tables, one summary of every target, and ``bench.json``.

The summary has one line per target of every suite that ran: what gpuloader
was compared with, the figure (a ratio of medians of this run: baseline s /
gpuloader s for a speedup), the bound, and ``met``, ``MISSED``, ``MISSING`` (a
case failed or did not run) or ``figure`` (a ratio reported with no target),
then how many targets were met. ``bench.json`` holds the machine, the source
fingerprint, each suite's own record (configuration, summaries, every raw
figure) and the summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from suite import Target

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PACKAGES = ("numpy", "tensorflow", "tensorflow-cpu", "keras", "gpuloader", "matplotlib", "scikit-learn")


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
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu_model = models[0].split(":", 1)[1].strip() if models else ""
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
        "loadavg_start": list(os.getloadavg()),
    }


def loadavg() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def format_targets(targets: list[Target]) -> str:
    """One line per target: suite, where, what gpuloader is compared with, the figure, the bound, the verdict."""
    width = max([46, *(len(target.what) for target in targets)])
    header = f"{'suite':<8} {'where':<14} {'gpuloader vs':<{width}} {'figure':>7} {'target':>9}  result"
    lines = [header, "-" * (len(header) + 2)]
    for target in targets:
        lines.append(
            f"{target.suite:<8} {target.where:<14} {target.what:<{width}} {target.shown:>7} {target.bound:>9}  "
            f"{target.status}"
        )
    met = sum(target.status == "met" for target in targets)
    bounded = sum(target.status != "figure" for target in targets)
    figures = len(targets) - bounded
    lines.append(f"{met} of {bounded} targets met" + (f" ({figures} figures with no target)" if figures else ""))
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
