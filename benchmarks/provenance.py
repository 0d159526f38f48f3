"""Every results file says which run wrote it: commit, machine, load, library versions, parameters.

This VM's speed varies between runs of the same code, so a figure can only be compared with another
when both say where and when they were measured. Every benchmark therefore calls :func:`start_run` first
and :func:`write_results` last. The figures stay flat (``{"recsys_c16_rps": 91.8, ...}``), or, for
replicate runs, a ``runs`` list of flat dicts in the same file; everything about the run goes under the
one key ``provenance``: the benchmark and its command line, the commit and whether the checkout had
uncommitted changes (outside ``benchmarks/results``), start and end in UTC, CPU model and count, the
1-minute load average at start and end, the Python and key library versions (those the run imported;
numpy and polars always), and the parsed arguments.

Files written before this existed say ``"recorded_before_provenance": true`` and only what is known
about them (from ``docs/RESULTS.md``), nothing invented.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# module name -> distribution name; a library is recorded when the run imported it
LIBRARIES = {
    "numpy": "numpy",
    "polars": "polars",
    "pyarrow": "pyarrow",
    "scipy": "scipy",
    "lightgbm": "lightgbm",
    "implicit": "implicit",
    "torch": "torch",
    "transformers": "transformers",
    "onnxruntime": "onnxruntime",
    "bentoml": "bentoml",
    "redis": "redis",
    "faiss": "faiss-cpu",
    "hnswlib": "hnswlib",
}
ALWAYS = ("numpy", "polars")

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Started:
    """When a run started, the machine's 1-minute load average then, and the code it started from
    (a long run's modules are imported from that tree, whatever lands in it during the run)."""

    utc: str
    loadavg_1min: float
    commit: str | None
    dirty: bool | None


def start_run() -> Started:
    """Call first thing in a benchmark's ``main``: the start of the run its results will report."""
    commit, dirty = _git()
    return Started(utc=_utc_now(), loadavg_1min=_loadavg(), commit=commit, dirty=dirty)


def provenance(name: str, *, params: Mapping[str, Any], started: Started) -> dict[str, Any]:
    """What to store beside the figures of benchmark ``name`` (``benchmarks.NAME``), as a JSON dict."""
    return {
        "benchmark": name,
        "command": shlex.join(["python", "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "commit": started.commit,
        "dirty": started.dirty,
        "commit_at_end": _git()[0],  # differs when commits landed in the tree during the run
        "started_utc": started.utc,
        "finished_utc": _utc_now(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "loadavg_1min_start": started.loadavg_1min,
        "loadavg_1min_end": _loadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": _libraries(),
        "params": {key: _json_safe(value) for key, value in params.items()},
    }


def write_results(
    name: str,
    figures: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    params: Mapping[str, Any],
    started: Started,
    out: Path | None = None,
    merge: bool = False,
) -> Path:
    """Write ``figures`` and their provenance to ``out`` (default ``benchmarks/results/NAME.json``).

    ``figures`` is one flat dict (values are numbers, strings, booleans or ``None``), or a sequence of
    them, one per replicate run, written as ``{"runs": [...]}``. ``merge=True`` keeps the figures of the
    file already at ``out`` that this run did not measure (a benchmark run one dataset at a time), and
    keeps that file's provenance under ``provenance["earlier_runs"]``. Returns the path written.
    """
    out = RESULTS / f"{name}.json" if out is None else out
    runs = isinstance(figures, Sequence)
    record: dict[str, Any] = {"runs": [_flat(run) for run in figures]} if runs else _flat(figures)
    record["provenance"] = provenance(name, params=params, started=started)
    if merge and out.exists():
        previous = json.loads(out.read_text())
        if "runs" in previous or "runs" in record:
            raise ValueError(f"{out}: only flat results merge")
        earlier = previous.pop("provenance", None)
        if earlier is not None:
            history = earlier.pop("earlier_runs", [])
            record["provenance"]["earlier_runs"] = [*history, earlier]
        record = {**previous, **record}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    return out


def _flat(figures: Mapping[str, Any]) -> dict[str, Scalar]:
    """The figures as JSON scalars; a nested value is an error (results files stay flat)."""
    flat: dict[str, Scalar] = {}
    for key, value in figures.items():
        if key in ("provenance", "runs"):
            raise ValueError(f"{key!r} is reserved for the file's structure, not a figure")
        if hasattr(value, "item") and not isinstance(value, str):  # NumPy scalars
            value = value.item()
        if value is not None and not isinstance(value, str | int | float | bool):
            raise TypeError(f"figure {key!r} is a {type(value).__name__}: results files stay flat")
        flat[key] = value
    return flat


def _json_safe(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _git() -> tuple[str | None, bool | None]:
    """The checkout's commit, and whether its tracked files differ from it (results files aside)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None  # not a git checkout (an unpacked archive): say so rather than guess
    return commit, bool(status.strip())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _libraries() -> dict[str, str]:
    versions = {}
    for module, distribution in LIBRARIES.items():
        if module not in ALWAYS and module not in sys.modules:
            continue
        try:
            versions[module] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[module] = str(getattr(sys.modules.get(module), "__version__", "not installed"))
    return versions


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
