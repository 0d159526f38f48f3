"""What changed between two run records: metric deltas per model and cut-off, with paired intervals
where the data allows (``recsys runs compare A B``; the report's "what changed" renders the same
:class:`RunComparison`).

Deltas are ``B - A`` (A the older or baseline run). Two ``recsys evaluate --per-user`` runs on the same
data (same fingerprint) and the same split settings scored the same test users on the same targets, so
their per-user metrics pair up by user (and test period): each accuracy metric then gets the paired
bootstrap 95% interval of its difference (:func:`recsys.evaluation.metrics.paired_difference`, users
resampled, with all their periods under ``--windows``). Otherwise, and for metrics that have no
per-user value (coverage, novelty), the delta is plain: :attr:`RunComparison.reason` says why.

>>> from recsys.experiments.runs import RunRecord
>>> a = RunRecord(id="A", command="evaluate", created_at="", metrics={"als": {"ndcg@10": 0.25}})
>>> b = RunRecord(id="B", command="evaluate", created_at="", metrics={"als": {"ndcg@10": 0.5}})
>>> comparison = compare_runs(a, b)
>>> comparison.method, [(row.model, row.metric, row.k, row.delta) for row in comparison.rows]
('plain', [('als', 'ndcg', 10, 0.25)])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.experiments.runs import RunRecord, split_metric

if TYPE_CHECKING:
    import polars as pl

# The options that decide which users and targets are tested; equal ones (and equal data) pair up.
SPLIT_KEYS = ("protocol", "test_fraction", "validation_fraction", "windows")
_KEYS = ("model", "user_id", "window")


@dataclass(frozen=True)
class MetricDelta:
    """One model's metric at cut-off ``k`` in both runs; ``ci_low``/``ci_high`` (paired rows only) are
    the bootstrap 95% interval of the per-user difference over ``users`` paired rows."""

    model: str
    metric: str
    k: int | None
    a: float | None
    b: float | None
    delta: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    users: int | None = None

    @property
    def paired(self) -> bool:
        return self.ci_low is not None


@dataclass(frozen=True)
class RunComparison:
    """Run ``a`` against run ``b``: ``method`` is ``"paired"`` when some rows carry paired intervals,
    ``"plain"`` otherwise, and ``reason`` says why; ``notes`` flag what differs besides the models
    (data, commands, commits, models in one run only)."""

    a: dict[str, Any]
    b: dict[str, Any]
    method: str
    reason: str
    rows: list[MetricDelta] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (rows as dicts, with their ``paired`` flag)."""
        out = asdict(self)
        for row, raw in zip(self.rows, out["rows"], strict=True):
            raw["paired"] = row.paired
        return out


def compare_runs(a: RunRecord, b: RunRecord, *, resamples: int = 10_000, seed: int = 0) -> RunComparison:
    """Every metric that both runs measured for a model they share, ``B - A``; paired intervals from
    both runs' per-user files where :func:`pairing_problem` finds none."""
    problem = pairing_problem(a, b)
    paired = {} if problem else _paired_intervals(a, b, resamples=resamples, seed=seed)
    rows = []
    for model in [m for m in a.metrics if m in b.metrics]:
        keys = [key for key in a.metrics[model] if key in b.metrics[model]]
        for key in _by_metric_then_cut(keys):
            metric, cut = split_metric(key)
            value_a, value_b = a.metrics[model][key], b.metrics[model][key]
            delta = None if value_a is None or value_b is None else value_b - value_a
            interval = paired.get((model, key), {})
            rows.append(MetricDelta(model, metric, cut, value_a, value_b, delta, **interval))
    method = "paired" if any(row.paired for row in rows) else "plain"
    if problem is None:
        problem = (
            "paired 95% intervals from both runs' per-user files (same data, same split); plain deltas "
            "for metrics without per-user values"
            if method == "paired"
            else "the per-user files share no model and metric"
        )
    return RunComparison(
        a=_summary(a), b=_summary(b), method=method, reason=problem, rows=rows, notes=_notes(a, b)
    )


def _by_metric_then_cut(keys: list[str]) -> list[str]:
    """``metric@k`` keys grouped by metric, in the record's order of metrics, each by increasing k."""
    names = list(dict.fromkeys(split_metric(key)[0] for key in keys))
    return sorted(keys, key=lambda key: (names.index(split_metric(key)[0]), split_metric(key)[1] or 0))


def pairing_problem(a: RunRecord, b: RunRecord) -> str | None:
    """Why the two runs' per-user metrics cannot be paired, or ``None`` when they can."""
    for record in (a, b):
        path = record.outputs.get("per_user")
        if not path:
            return f"plain deltas: run {record.id} kept no per-user metrics (recsys evaluate --per-user)"
        if not Path(path).is_file():
            return f"plain deltas: the per-user file of run {record.id} is gone ({path})"
    data_a, data_b = a.data.get("fingerprint"), b.data.get("fingerprint")
    if data_a != data_b:
        return f"plain deltas: the runs saw different data (fingerprints {data_a} and {data_b})"
    split_a = {key: a.config.get(key) for key in SPLIT_KEYS}
    split_b = {key: b.config.get(key) for key in SPLIT_KEYS}
    if split_a != split_b:
        changed = ", ".join(
            f"{key} {split_a[key]} -> {split_b[key]}" for key in SPLIT_KEYS if split_a[key] != split_b[key]
        )
        return f"plain deltas: the runs tested different users or targets ({changed})"
    return None


def _paired_intervals(
    a: RunRecord, b: RunRecord, *, resamples: int, seed: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """``(model, metric@k)`` -> the paired interval fields of :class:`MetricDelta`, for the rows both
    per-user files hold (joined on model, user and test period)."""
    import numpy as np
    import polars as pl

    from recsys.evaluation.metrics import paired_difference

    frame_a, frame_b = _per_user(a), _per_user(b)
    keys = [key for key in _KEYS if key in frame_a.columns and key in frame_b.columns]
    metrics = [c for c in frame_a.columns if c in frame_b.columns and c not in _KEYS]
    joined = frame_a.join(frame_b, on=keys, how="inner", suffix="_b")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (model,), rows in joined.group_by(["model"], maintain_order=True):
        clusters = rows.get_column("user_id").to_numpy() if "window" in keys else None
        for metric in metrics:
            values_a = rows.get_column(metric).cast(pl.Float64).to_numpy()
            values_b = rows.get_column(f"{metric}_b").cast(pl.Float64).to_numpy()
            d = paired_difference(values_b, values_a, resamples=resamples, seed=seed, clusters=clusters)
            if d["users"] and np.isfinite(d["ci_low"]):
                out[(str(model), metric)] = {
                    "ci_low": d["ci_low"],
                    "ci_high": d["ci_high"],
                    "users": d["users"],
                }
    return out


def _per_user(record: RunRecord) -> pl.DataFrame:
    import polars as pl

    return pl.read_parquet(record.outputs["per_user"])


def _summary(record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "command": record.command,
        "created_at": record.created_at,
        "fingerprint": record.data.get("fingerprint"),
        "commit": (record.git or {}).get("commit"),
        "dirty": (record.git or {}).get("dirty"),
    }


def _notes(a: RunRecord, b: RunRecord) -> list[str]:
    """What differs besides the models, which a reader should know before trusting a delta."""
    notes = []
    if a.command != b.command:
        notes.append(f"different commands: {a.command} and {b.command} (metrics may be measured differently)")
    if a.data.get("fingerprint") != b.data.get("fingerprint"):
        notes.append("different data: deltas mix model changes with data changes")
    commit_a, commit_b = (a.git or {}).get("commit"), (b.git or {}).get("commit")
    if commit_a and commit_b and commit_a != commit_b:
        notes.append(f"different commits: {commit_a[:10]} and {commit_b[:10]}")
    if any((record.git or {}).get("dirty") for record in (a, b)):
        notes.append("a run had uncommitted changes: its commit does not fully describe its code")
    only_a, only_b = a.metrics.keys() - b.metrics.keys(), b.metrics.keys() - a.metrics.keys()
    if only_a:
        notes.append(f"only in {a.id}: {', '.join(sorted(only_a))}")
    if only_b:
        notes.append(f"only in {b.id}: {', '.join(sorted(only_b))}")
    return notes
