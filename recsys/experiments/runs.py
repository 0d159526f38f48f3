"""Experiment records: one JSON file per ``recsys evaluate`` / ``train`` run, in a local runs folder.

A record says what ran (command, options, config), on what (the data fingerprint of
:func:`recsys.pipeline.train.data_fingerprint`, the git commit of the working directory and whether it
had uncommitted changes, library versions), what came out (test metrics per model, timings) and where
it wrote (``--json``, ``--per-user``, the bundle and its tag). Records are plain JSON, written
atomically, never pickled; the folder is ``$RECSYS_RUNS_DIR``, else ``./recsys-runs`` (as MLflow's
``./mlruns``). A record is a by-product: :func:`record_run` warns and returns ``None`` where it cannot
write, so the run itself still succeeds. :mod:`recsys.experiments.run_compare` compares two records.

A command that is not ``evaluate`` or ``train`` (a nightly retrain) records itself with
:func:`new_record` and :func:`record_run`:

>>> import tempfile
>>> run = Invocation(options={"bundle": "new"}, git_dir=None)  # git_dir None: no git state
>>> record = new_record(command="retrain", run=run, metrics={"pipeline": {"ndcg@10": 0.25}})
>>> with tempfile.TemporaryDirectory() as folder:
...     path = record_run(record, runs_dir=folder)
...     find_record(folder, record.id[:15]).metrics
{'pipeline': {'ndcg@10': 0.25}}

This module imports only the standard library at load time (``recsys runs list`` must start fast).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.data.dataset import Dataset
    from recsys.experiments.evaluate import EvaluationOptions, EvaluationReport

RUNS_DIR_ENV = "RECSYS_RUNS_DIR"
DEFAULT_RUNS_DIR = Path("recsys-runs")
SCHEMA_VERSION = 1
HEADLINE_METRIC = "ndcg"
_GIT_TIMEOUT_S = 5.0


class RunRecordWarning(UserWarning):
    """A run succeeded but its record could not be written (see :func:`record_run`)."""


class RunLookupError(LookupError):
    """No record, or more than one, matches an id prefix; the message names the folder and the ids."""


@dataclass(frozen=True)
class RunRecord:
    """One run. ``metrics`` are test metrics, model -> ``metric@k`` -> value (``None``: undefined);
    ``timings`` are seconds; ``outputs`` are absolute paths (and ``bundle_tag``); ``git`` is ``None``
    outside a git checkout; ``extra`` holds what only one command has (the split, validation metrics)."""

    id: str
    command: str
    created_at: str  # ISO 8601, UTC
    options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    git: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """Indented JSON; NaN and infinities become ``null`` (JSON has none)."""
        return json.dumps(_plain(asdict(self)), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        """Parse :meth:`to_json`'s output; a key this version does not know is an error."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or not {"id", "command", "created_at"} <= raw.keys():
            raise ValueError("not a run record: needs id, command and created_at")
        unknown = raw.keys() - cls.__dataclass_fields__.keys()
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} (record schema {raw.get('schema')})")
        return cls(**raw)

    def headline(self) -> dict[str, float | None]:
        """Each model's NDCG at 10, else at its smallest cut-off: the figure ``recsys runs list`` shows."""
        out: dict[str, float | None] = {}
        for model, values in self.metrics.items():
            cuts = sorted(k for name, k in map(split_metric, values) if name == HEADLINE_METRIC and k)
            if cuts:
                out[model] = values[f"{HEADLINE_METRIC}@{10 if 10 in cuts else cuts[0]}"]
        return out


def split_metric(key: str) -> tuple[str, int | None]:
    """``'ndcg@10'`` -> ``('ndcg', 10)``; a key without a cut-off -> ``(key, None)``.

    >>> split_metric("recall@50"), split_metric("coverage")
    (('recall', 50), ('coverage', None))
    """
    name, _, cut = key.partition("@")
    return (name, int(cut)) if cut.isdigit() else (key, None)


def runs_folder(explicit: str | Path | None = None) -> Path:
    """The runs folder: ``explicit``, else ``$RECSYS_RUNS_DIR``, else ``./recsys-runs``."""
    if explicit is not None and str(explicit):
        return Path(explicit)
    return Path(os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


def new_run_id(now: datetime | None = None) -> str:
    """UTC time to the second, then 6 random hex digits: ids sort by time, and never collide in practice.

    >>> new_run_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))[:16]
    '20260102-030405-'
    """
    now = now or datetime.now(UTC)
    return f"{now.astimezone(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def git_state(directory: str | Path | None = ".") -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``directory``; ``None`` outside one, without
    git, or on any git error (a record never fails a run). ``dirty`` counts tracked files only, so the
    outputs a run writes into an untracked folder do not mark the next run dirty."""
    if directory is None:
        return None

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, no commit yet, timeout
        return None
    return {"commit": commit, "dirty": dirty}


@dataclass(frozen=True, kw_only=True)
class Invocation:
    """How a command ran, beside what it computed: its parsed options, the paths it wrote (``None``:
    not asked for), its wall time, and the folder whose git state is recorded (``None``: none)."""

    options: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, str | Path | None] = field(default_factory=dict)
    seconds: float | None = None
    git_dir: str | Path | None = "."


def new_record(
    *,
    command: str,
    run: Invocation | None = None,
    config: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Mapping[str, float | None]] | None = None,
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> RunRecord:
    """A record with a new id, the time, the git state of ``run.git_dir`` and the library versions
    (``versions``, else those installed now). ``run``'s output paths are made absolute and ``None``
    outputs (an option not given) left out; its options are made JSON-ready (paths and enums become
    strings). ``timings`` are taken as given (``run.seconds`` is for the builders below)."""
    run = run or Invocation()
    now = now or datetime.now(UTC)
    if versions is None:
        from recsys.pipeline.train import library_versions

        versions = library_versions()
    return RunRecord(
        id=new_run_id(now),
        command=command,
        created_at=now.astimezone(UTC).isoformat(timespec="seconds"),
        options=_plain(dict(run.options)),
        config=_plain(dict(config or {})),
        data=_plain(dict(data or {})),
        metrics={model: dict(values) for model, values in (metrics or {}).items()},
        timings=dict(timings or {}),
        outputs={
            key: str(Path(value).resolve()) if isinstance(value, Path) else value
            for key, value in run.outputs.items()
            if value is not None
        },
        git=git_state(run.git_dir),
        versions=dict(versions),
        extra=_plain(dict(extra or {})),
    )


def dataset_facts(dataset: Dataset, *, items: str | Path, interactions: str | Path) -> dict[str, Any]:
    """The data part of a record: its fingerprint (the one ``recsys train`` writes into a bundle, so
    the two commands' records on the same tables agree), its size (users, items, interactions) and
    its files."""
    from recsys.data import schema as S
    from recsys.pipeline.train import data_fingerprint

    contract = dataset.interactions.drop(S.USER_IDX, S.ITEM_IDX)  # what train_bundle fingerprints
    return {
        "fingerprint": data_fingerprint(dataset.items, contract),
        **dataset.summary(),
        "files": data_files(items=items, interactions=interactions),
    }


def data_files(*, items: str | Path, interactions: str | Path) -> dict[str, str]:
    """The absolute paths of the two tables, as a record's ``data["files"]``."""
    return {"items": str(Path(items).resolve()), "interactions": str(Path(interactions).resolve())}


def evaluation_record(
    report: EvaluationReport, *, options: EvaluationOptions, data: Mapping[str, Any], run: Invocation
) -> RunRecord:
    """The record of one :func:`recsys.experiments.evaluate.evaluate` run: its test metrics, each
    model's fit and recommend seconds (first seed), the split and the paired differences."""
    timings: dict[str, float] = {} if run.seconds is None else {"total": round(run.seconds, 3)}
    for model, details in report.details.items():
        for phase in ("fit", "recommend"):
            if f"{phase}_seconds" in details:
                timings[f"{model}.{phase}"] = float(details[f"{phase}_seconds"])
    return new_record(
        command="evaluate",
        run=run,
        config=asdict(options),
        data=data,
        metrics=report.models,
        timings=timings,
        extra={"protocol": report.protocol, "k": report.k, "split": report.split, "paired": report.paired},
    )


def training_record(meta: Mapping[str, Any], *, data: Mapping[str, Any], run: Invocation) -> RunRecord:
    """The record of a bundle written by :func:`recsys.pipeline.train.train_bundle`, from its
    ``metadata.json``: the pipeline's test metrics (validation ones in ``extra``), its timings, config,
    fingerprint and library versions."""
    metrics = dict(meta.get("metrics") or {})
    timings = {key: float(value) for key, value in dict(meta.get("seconds") or {}).items()}
    if run.seconds is not None:
        timings["command_total"] = round(run.seconds, 3)  # with loading and publishing
    return new_record(
        command="train",
        run=run,
        config=meta.get("config"),
        data={"fingerprint": meta.get("data_fingerprint"), **dict(meta.get("dataset") or {}), **data},
        metrics={"pipeline": metrics["test"]} if "test" in metrics else {},
        timings=timings,
        extra={
            "bundle_version": meta.get("version"),
            "protocol": meta.get("protocol"),
            "validation_metrics": metrics.get("validation"),
        },
        versions=meta.get("library_versions"),
    )


def save_record(record: RunRecord, *, runs_dir: str | Path) -> Path:
    """Write ``record`` as ``<runs_dir>/<id>.json`` atomically; raises ``OSError`` where it cannot."""
    from recsys.data.io import atomic_path

    path = Path(runs_dir) / f"{record.id}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(record.to_json(), encoding="utf-8")
    return path


def record_run(
    record: RunRecord,
    *,
    runs_dir: str | Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> Path | None:
    """:func:`save_record` into :func:`runs_folder` (``runs_dir`` resolved as there) that never fails the
    run: where it cannot write, it calls ``warn`` with a one-line message (default: a
    :class:`RunRecordWarning`) and returns ``None``."""
    folder = runs_folder(runs_dir)
    try:
        return save_record(record, runs_dir=folder)
    except (OSError, TypeError, ValueError) as exc:  # unwritable folder; a value JSON cannot hold
        message = f"run {record.id} succeeded but its record was not written to {folder}: {exc}"
        if warn is None:
            warnings.warn(message, RunRecordWarning, stacklevel=2)
        else:
            warn(message)
        return None


def load_records(
    runs_dir: str | Path, *, on_skip: Callable[[Path, str], None] | None = None
) -> list[RunRecord]:
    """Every record in ``runs_dir``, oldest first; an unreadable file is skipped (``on_skip(path, why)``)
    rather than hiding all the others. A missing folder holds no record."""
    records = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            records.append(RunRecord.from_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            if on_skip is not None:
                on_skip(path, str(exc))
    return sorted(records, key=lambda record: record.id)


def find_record(runs_dir: str | Path, prefix: str) -> RunRecord:
    """The record whose id is ``prefix`` or starts with it; :class:`RunLookupError` when none or more
    than one does (the message lists up to five of them)."""
    records = load_records(runs_dir)
    exact = [record for record in records if record.id == prefix]
    matches = exact or [record for record in records if prefix and record.id.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunLookupError(f"no run {prefix!r} in {runs_dir} ({len(records)} run(s) recorded)")
    shown = ", ".join(record.id for record in matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise RunLookupError(f"{prefix!r} matches {len(matches)} runs in {runs_dir}: {shown}")


def _plain(value: Any) -> Any:
    """JSON-ready: paths and enums as strings, tuples as lists, NaN and infinities as ``None``."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(v) for key, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value
