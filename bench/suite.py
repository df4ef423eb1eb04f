"""What a case module hands the runner (``bench/runner.py``) and the report (``bench/report.py``).

A *suite* is a module of ``bench/`` with two functions (see bench/README.md):

- ``plan(args) -> Plan``: the case processes of one round, how many rounds, and
  what to prepare before the first and remove after the last;
- ``report(plan, results) -> Report``: from every round's result of every case,
  the tables to print, the targets for the summary and the figures for
  ``bench.json``.

and optionally ``add_arguments(parser)`` (its own command-line flags) and
``progress_figure(case, result) -> str`` (the figure on its progress lines).

Each case runs in a process of its own: ``python bench/<script> <args...>``
(or, for ``forkable`` cases of ``cases.py``, a child forked by
``bench/zygote.py``), and its result is the last stdout line that starts with
``{`` (or the JSON file ``result_file``, for scripts that print a table). A
case that fails is recorded as ``{"error": ...}``; the suite's report sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The environment a case runs in, on top of the runner's: TensorFlow quiet, Keras on TensorFlow.
HOST_ENV: Mapping[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
CASE_TIMEOUT_S = 600

Result = dict[str, Any]  # one case process's JSON, or {"error": "..."}


@dataclass(frozen=True)
class Case:
    """One case: the process the runner starts once per round."""

    name: str  # unique within its suite; the key of its results
    script: str  # a file in bench/, run as ``python bench/<script> *args``
    args: tuple[str, ...]
    label: str = ""  # shown on progress lines (default: name)
    forkable: bool = False  # may run as a child of bench/zygote.py, which calls ``<script>.main(list(args))``
    alone: bool = False  # never beside another process, whatever --jobs (e.g. page-cache eviction)
    env: Mapping[str, str] = field(default_factory=lambda: dict(HOST_ENV))
    timeout_s: float = CASE_TIMEOUT_S
    result_file: Path | None = None  # read the result from this JSON file instead of stdout

    @property
    def shown(self) -> str:
        return self.label or self.name


@dataclass
class Plan:
    """A suite's part of one run: its cases (each run once per round, interleaved with the other suites')."""

    suite: str
    cases: list[Case]
    rounds: int
    about: list[str] = field(default_factory=list)  # lines for the run's header: what runs, how much
    setup: Callable[[], dict[str, Any]] | None = None  # before the first case; what it returns goes to `prepared`
    cleanup: Callable[[], None] | None = None  # after the last case, also when the run fails
    options: Any = None  # whatever the suite's report needs (its parsed options)
    prepared: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""  # why the suite runs no case this time (printed, and in bench.json)


@dataclass(frozen=True)
class Target:
    """One line of the run's summary: a ratio (or other figure) against its bound."""

    suite: str
    where: str  # e.g. "epoch mnist"
    what: str  # e.g. "tfdata/tfdata_fast (stronger: tfdata_fast)"
    shown: str  # the figure, formatted: "3.41x", "0.012"
    bound: str  # ">= 3x", "<= 2", "" for a figure with no target
    status: str  # "met", "MISSED", "MISSING" (a case failed or did not run) or "figure"


@dataclass
class Report:
    """What a suite's report returns: printed text, summary lines, and its part of bench.json."""

    text: str
    targets: list[Target]
    data: dict[str, Any]
    files: list[Path] = field(default_factory=list)  # what it wrote (printed at the end)
