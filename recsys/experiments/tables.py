"""Sections of the evaluation JSON as polars tables, for the notebooks: the charts'
(:mod:`recsys.experiments.plots`) figures as numbers to read, sort and filter.

Each function takes the parsed JSON of ``recsys evaluate --json`` (``json.loads(report.to_json())``;
keys in ``docs/evaluation_json.md``) and returns a :class:`polars.DataFrame`; ``k`` defaults to the
run's first cut-off, as the charts do.

>>> report = {"k": [10], "intervals": {"models": {
...     "a": {"ndcg@10": {"mean": 0.2, "ci_low": 0.1, "ci_high": 0.3}, "recall@10": {"mean": 0.4,
...           "ci_low": 0.3, "ci_high": 0.5}}}}}
>>> interval_table(report, metrics=["ndcg"]).rows()
[('a', 'ndcg@10', 0.2, 0.1, 0.3)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

INTERVAL_METRICS = ("recall", "ndcg", "hitrate", "mrr", "novelty")
PAIR_COLUMNS = ("a", "b", "mean_diff", "ci_low", "ci_high", "p_holm", "significant", "wins", "losses", "ties")


def _section(report: Mapping[str, Any], key: str) -> Any:
    if not report.get(key):
        raise ValueError(f"this report has no {key!r} section (docs/evaluation_json.md)")
    return report[key]


def _cut(report: Mapping[str, Any], k: int | None) -> int:
    return int(k if k is not None else report["k"][0])


def interval_table(
    report: Mapping[str, Any], *, k: int | None = None, metrics: Sequence[str] = INTERVAL_METRICS
) -> pl.DataFrame:
    """Every model's ``metrics`` at cut-off ``k`` with their bootstrap 95% intervals: one row per
    (model, metric), models in the run's order (``intervals``)."""
    models, k = _section(report, "intervals")["models"], _cut(report, k)
    rows = [
        (name, f"{metric}@{k}", found.get("mean"), found.get("ci_low"), found.get("ci_high"))
        for name, values in models.items()
        for metric in metrics
        if (found := values.get(f"{metric}@{k}")) is not None
    ]
    schema = {"model": pl.String, "metric": pl.String, "mean": pl.Float64, "ci_low": pl.Float64,
              "ci_high": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")


def pairwise_table(report: Mapping[str, Any], *, metric: str = "ndcg", k: int | None = None) -> pl.DataFrame:
    """The paired test of every pair of models on ``metric@k`` (``pairwise``): ``mean_diff`` is a - b,
    ``p_holm`` the Holm-adjusted p-value; the most significant pairs first."""
    tests = _section(report, "pairwise")["metrics"].get(f"{metric}@{_cut(report, k)}")
    if tests is None:
        raise ValueError(f"no paired tests of {metric}@{_cut(report, k)}")
    frame = pl.DataFrame([{key: test[key] for key in PAIR_COLUMNS} for test in tests])
    return frame.sort("p_holm", pl.col("mean_diff").abs(), descending=[False, True]) if len(frame) else frame


def beyond_accuracy_table(report: Mapping[str, Any]) -> pl.DataFrame:
    """Coverage, Gini index of exposure, novelty, intra-list diversity (with embeddings) and popularity
    lift at every cut-off, one row per model (``beyond_accuracy``; definitions there)."""
    models = _section(report, "beyond_accuracy")["models"]
    return pl.DataFrame([{"model": name, **values} for name, values in models.items()])


def sample_table(report: Mapping[str, Any], *, user: int = 0) -> pl.DataFrame:
    """One sample user's top 10 (``samples[user]``), side by side: a column of titles per model, a
    held-out target marked ``[hit]``."""
    sample = _section(report, "samples")[user]
    columns = {
        name: [f"{item['title']}{' [hit]' if item['hit'] else ''}" for item in items]
        for name, items in sample["models"].items()
    }
    depth = max((len(c) for c in columns.values()), default=0)
    padded = {name: values + [None] * (depth - len(values)) for name, values in columns.items()}
    return pl.DataFrame({"rank": list(range(1, depth + 1)), **padded})
