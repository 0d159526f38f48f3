"""Run ``recsys retrain`` and ``recsys train`` as subprocesses, timed: shared by the nightly benchmarks.

A :class:`Shop` is one folder holding what a scheduler would set up for the nightly job: the config
(``retrain.toml``: the three folders, plus any keys a benchmark adds), the inbox, the data and work
folders, and its own ``BENTOML_HOME`` and experiment-record folder, so nothing leaks into the user's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

DAY = 86_400


def recsys_command(*args: str) -> list[str]:
    """``recsys ARGS...`` run with this interpreter (as the tests run the CLI)."""
    return [sys.executable, "-c", "from recsys.cli import main; main()", *args]


def isolated_env(root: Path) -> dict[str, str]:
    """This process's environment with a model store and run records of ``root``'s own."""
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "RECSYS_RUNS_DIR": str(root / "records")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.pop("RECSYS_RETRAIN_DIE_AT", None)  # a kill point left in the shell must not stop a benchmark
    env.pop("RECSYS_ONLINE_STORE_URL", None)  # the store in BENTOML_HOME, not a shared one
    return env


@dataclass(frozen=True)
class Timed:
    """One finished subprocess: its wall time, its CPU time (user + system, its children included:
    on a shared machine the load stretches wall time far more than CPU time), exit code, output's end."""

    seconds: float
    cpu_seconds: float
    returncode: int
    stderr_tail: str


def run_timed(command: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Timed:
    """Run ``command`` to the end, its stdout and stderr appended to ``log``; wall and CPU seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cpu_before = _children_cpu()
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    tail = log.read_text(errors="replace")[-2_000:]
    return Timed(round(seconds, 3), round(_children_cpu() - cpu_before, 3), done.returncode, tail)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children, one at a time here
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Shop:
    """The nightly job's folders under ``root`` (see the module docstring)."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "retrain.toml"

    def write_config(self, extra: str = "") -> None:
        """The three keys, then ``extra`` (more TOML keys and tables, e.g. ``gate_days = 7``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f'data_dir = "data"\ninbox_dir = "inbox"\nwork_dir = "work"\n{extra}\n')

    def drop(self, name: str, frame: pl.DataFrame) -> None:
        """Write ``frame`` into the inbox as ``name`` (Parquet), as an upstream system would."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        tmp = self.inbox / f".{name}.tmp"  # a dot file the job skips until it is whole
        frame.write_parquet(tmp)
        tmp.replace(self.inbox / name)

    def retrain(self) -> tuple[Timed, dict[str, Any]]:
        """One ``recsys retrain --config`` run; its wall time and the run summary it wrote."""
        before = set(self.summaries())
        timed = run_timed(
            recsys_command("retrain", "--config", str(self.config)),
            env=isolated_env(self.root),
            cwd=self.root,
            log=self.root / "retrain.log",
        )
        new = [path for path in self.summaries() if path not in before]
        if not new:
            raise RuntimeError(
                f"recsys retrain (exit {timed.returncode}) wrote no run summary:\n{timed.stderr_tail}"
            )
        return timed, json.loads(new[-1].read_text())

    def summaries(self) -> list[Path]:
        return sorted((self.work / "runs").glob("*.json"))


def stage_seconds(summary: dict[str, Any], *, prefix: str) -> dict[str, float]:
    """``{prefix}stage_<name>_s``: each stage's seconds from a run summary (flat, for results files)."""
    return {f"{prefix}stage_{name}_s": stage["seconds"] for name, stage in summary.get("stages", {}).items()}


def require_clock_time(interactions: pl.DataFrame, *, source: str) -> None:
    """The nightly job's gate windows are days of data: refuse an order index, naming the file."""
    from recsys.data import schema as S

    if not S.are_unix_seconds(interactions.get_column(S.TIMESTAMP).to_numpy()):
        raise SystemExit(
            f"{source}: timestamps are an order index, not Unix seconds; the nightly job's gate window "
            "is days of data, so it cannot run on it"
        )


TRAIN_KEYS = ("finetune", "encoder", "encoder_training", "model")  # what the nightly job reads of [train]


def train_tables(config: Path) -> dict[str, Any]:
    """The tables of a ``recsys train --config`` file that the nightly job reads as its ``[train]``."""
    from recsys.config import read_toml

    table = read_toml(config)
    return {key: table[key] for key in TRAIN_KEYS if key in table}


def toml_text(table: dict[str, Any], *, prefix: str = "") -> str:
    """``table`` (nested dicts of strings, numbers, booleans and lists) as TOML: scalars, then tables.

    >>> train = {"finetune": False, "model": {"ranker": {"search": [[31, 0.1]]}}}
    >>> print(toml_text({"gate_days": 7.0, "train": train}))
    gate_days = 7.0
    [train]
    finetune = false
    [train.model.ranker]
    search = [[31, 0.1]]
    <BLANKLINE>
    """
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    text = "".join(line + "\n" for line in lines)
    if lines and prefix:
        text = f"[{prefix}]\n" + text
    for key, value in table.items():
        if isinstance(value, dict):
            text += toml_text(value, prefix=f"{prefix}.{key}" if prefix else key)
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"{type(value).__name__} has no TOML form here")
