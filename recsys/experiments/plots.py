"""Charts of an offline evaluation: one function per chart, each taking the parsed JSON of
``recsys evaluate --json`` (a dict, described key by key in ``docs/evaluation_json.md``) and returning
a matplotlib :class:`~matplotlib.figure.Figure`.

=========================  =============================================================================
:func:`curves`             NDCG or recall at K = 1..100, one line per model (``curves``)
:func:`intervals`          the metrics at one cut-off with their bootstrap 95% intervals (``intervals``)
:func:`pairwise`           the paired-test matrix, row minus column, Holm-significant cells marked
:func:`slices`             one slice family (activity, popularity, cold, category) with intervals
:func:`popularity_bias`    the popularity of recommended items against that of the users' histories
:func:`candidate_recall`   the pipeline's candidate recall per source and blended
:func:`feature_importance` the pipeline ranker's top features by total gain
=========================  =============================================================================

The figures are built with :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global state, no window, no backend to choose (``savefig`` renders with Agg), and a notebook shows a
returned figure as an image. The report (:mod:`recsys.experiments.report`) and the notebooks call these
same functions. A chart whose section is missing (no pipeline model was evaluated, no such slice
family) raises :class:`ValueError` saying what to run. Models keep one colour across every chart of a
report: their position in ``report["models"]``.

>>> lines = {"a": {"ndcg": [0.1, 0.2, 0.25], "recall": [0.1, 0.3, 0.4]},
...          "b": {"ndcg": [0.0, 0.1, 0.2], "recall": [0.0, 0.2, 0.3]}}
>>> report = {"models": {"a": {}, "b": {}}, "curves": {"k": [1, 2, 3], "models": lines}}
>>> figure = curves(report, metric="ndcg")
>>> [line.get_label() for line in figure.axes[0].get_lines()]
['a', 'b']

This module imports matplotlib at load time; only report building imports this module, so
``import recsys`` and the serving path never load matplotlib.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

WIDTH = 7.2  # inches; at the report's 100 dpi 720 px: readable, and two side by side on a wide screen
HEIGHT = 3.8
TOP_FEATURES = 20
# tab10 without its grey, kept for the users' histories in the popularity chart
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_HISTORY_COLOUR = "#7f7f7f"


def colour(report: Mapping[str, Any], model: str) -> str:
    """The model's colour: its position in ``report["models"]`` (any model not there comes after)."""
    names = list(report.get("models", {}))
    index = names.index(model) if model in names else len(names) + hash(model) % len(_COLOURS)
    return _COLOURS[index % len(_COLOURS)]


def curves(report: Mapping[str, Any], *, metric: str = "ndcg") -> Figure:
    """``metric`` (``"ndcg"`` or ``"recall"``) at every cut-off K = 1..100, one line per model; the
    run's own cut-offs (``report["k"]``) are dotted verticals."""
    section = _section(report, "curves")
    figure, axes = _figure()
    for name, values in section["models"].items():
        axes.plot(section["k"], _floats(values[metric]), label=name, color=colour(report, name), lw=1.8)
    for cut in report.get("k", []):
        axes.axvline(cut, color="#bbbbbb", ls=":", lw=1)
    axes.set(xlabel="K (list length)", ylabel=f"{metric}@K", xlim=(1, max(section["k"])), ylim=(0, None))
    axes.set_title(f"{_label(metric)} at K = 1..{max(section['k'])}")
    _legend(axes)
    return figure


def intervals(
    report: Mapping[str, Any], *, k: int | None = None, metrics: Sequence[str] = ("recall", "ndcg")
) -> Figure:
    """Each model's ``metrics`` at cut-off ``k`` (default the first) as points with their bootstrap 95%
    intervals as error bars, one panel per metric."""
    section, k = _section(report, "intervals"), _cut(report, k)
    names = list(section["models"])
    figure = Figure(figsize=(WIDTH, 0.9 + 0.42 * len(names)), layout="constrained")
    panels = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for axes, metric in zip(panels, metrics, strict=True):
        for row, name in enumerate(names):
            value = section["models"][name].get(f"{metric}@{k}") or {}
            mean, low, high = (_float(value.get(key)) for key in ("mean", "ci_low", "ci_high"))
            error = [[mean - low], [high - mean]] if math.isfinite(low + high) else None
            axes.errorbar(mean, row, xerr=error, fmt="o", color=colour(report, name), capsize=4, ms=6)
        axes.set_yticks(range(len(names)), names)
        axes.set_ylim(len(names) - 0.5, -0.5)  # first model on top, as in the tables
        axes.set_title(f"{metric}@{k}")
        axes.grid(axis="x", color="#e5e5e5")
    figure.suptitle(f"test metrics with bootstrap {section.get('confidence', 0.95):.0%} intervals", size=11)
    return figure


def pairwise(report: Mapping[str, Any], *, metric: str = "ndcg", k: int | None = None) -> Figure:
    """The paired-test matrix of ``metric@k``: cell (row, column) is the mean per-user difference row
    minus column, coloured by sign and size, ``*`` where the Holm-adjusted p-value is below alpha."""
    section, k = _section(report, "pairwise"), _cut(report, k)
    key, names = f"{metric}@{k}", list(section["models"])
    if key not in section["metrics"]:
        raise ValueError(f"no paired tests of {key}; this report has {sorted(section['metrics'])}")
    matrix = np.full((len(names), len(names)), np.nan)
    marks = np.full(matrix.shape, "", dtype=object)
    for test in section["metrics"][key]:
        a, b = names.index(test["a"]), names.index(test["b"])
        matrix[a, b], matrix[b, a] = _float(test["mean_diff"]), -_float(test["mean_diff"])
        marks[a, b] = marks[b, a] = "*" if test["significant"] else ""
    side = max(3.2, 1.2 + 0.9 * len(names))
    figure = Figure(figsize=(max(side + 1.8, 5.0), side), layout="constrained")
    axes = figure.subplots()
    span = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap="RdBu", vmin=-span or -1, vmax=span or 1)
    for (row, column), value in np.ndenumerate(matrix):
        if math.isfinite(value):
            strong = abs(value) > 0.6 * span
            axes.text(column, row, f"{value:+.4f}{marks[row, column]}", ha="center", va="center",
                      color="white" if strong else "black", size=9)  # fmt: skip
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(names)), names)
    figure.colorbar(image, ax=axes, shrink=0.8, label=f"{key}: row - column")
    axes.set_title(f"paired {key} differences; * Holm p < {section.get('alpha', 0.05)}", size=10)
    return figure


def slices(report: Mapping[str, Any], *, family: str, metric: str = "ndcg", k: int | None = None) -> Figure:
    """``metric@k`` of every model in each slice of ``family`` as bars with their 95% intervals; each
    slice is labelled with its number of users."""
    families, k = _section(report, "slices"), _cut(report, k)
    if family not in families:
        raise ValueError(f"no slice family {family!r}; this report has {sorted(families)}")
    parts = families[family]["slices"]
    names = [name for name in report.get("models", {}) if any(name in part["models"] for part in parts)]
    names = names or list(dict.fromkeys(name for part in parts for name in part["models"]))
    figure = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        values = [part["models"].get(name, {}).get(f"{metric}@{k}") or {} for part in parts]
        means = np.array([_float(v.get("mean")) for v in values])
        errors = np.array([[m - _float(v.get("ci_low")), _float(v.get("ci_high")) - m]
                           for m, v in zip(means, values, strict=True)]).T.reshape(2, -1)  # fmt: skip
        positions = np.arange(len(parts)) - 0.4 + width * (j + 0.5)
        axes.bar(positions, means, width, yerr=np.nan_to_num(errors), capsize=2, label=name,
                 color=colour(report, name), error_kw={"lw": 0.8})  # fmt: skip
    labels = [f"{part['name']}\n({part.get('users') or 0:,} users)" for part in parts]
    axes.set_xticks(range(len(parts)), labels, rotation=30 if len(parts) > 5 else 0, ha="center", size=8)
    axes.set(ylabel=f"{metric}@{k}", ylim=(0, None))
    axes.set_title(f"{metric}@{k} by {family} (bars: 95% intervals)")
    _legend(axes)
    return figure


def popularity_bias(report: Mapping[str, Any]) -> Figure:
    """The share of recommended items (each model's top-K) and of the users' history items in each
    popularity bin (training interactions, power-of-two bins); the legend gives each one's mean."""
    section = _section(report, "popularity_bias")
    edges = section["edges"]
    rows = [("users' histories", section["history"], _HISTORY_COLOUR)] + [
        (name, profile, colour(report, name)) for name, profile in section["models"].items()
    ]
    figure, axes = _figure()
    width = 0.85 / len(rows)
    for j, (name, profile, shade) in enumerate(rows):
        positions = np.arange(len(edges) - 1) - 0.425 + width * (j + 0.5)
        mean = _float(profile.get("mean"))
        label = f"{name} (mean {mean:,.1f})" if math.isfinite(mean) else name
        axes.bar(positions, _floats(profile["histogram"]), width, label=label, color=shade,
                 hatch="//" if j == 0 else None, edgecolor="white" if j else "#444444", lw=0.3)  # fmt: skip
    labels = [str(low) if high - low == 1 else f"{low}-{high - 1}" for low, high in itertools.pairwise(edges)]
    axes.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, size=8)
    axes.set(xlabel="training interactions of the item", ylabel="share of items")
    axes.set_title(f"popularity of the top-{section['k']} items against the users' histories")
    _legend(axes)
    return figure


def candidate_recall(report: Mapping[str, Any]) -> Figure:
    """Each pipeline model's candidate recall: the share of test targets among each source's
    candidates and among the blended pool (the most the ranker can find)."""
    diagnostics = _pipelines(report)
    sources = list(dict.fromkeys(s for d in diagnostics.values() for s in d["candidate_recall"]))
    figure = Figure(figsize=(WIDTH, 1.0 + 0.35 * len(sources) * len(diagnostics)), layout="constrained")
    axes = figure.subplots()
    height = 0.8 / len(diagnostics)
    for j, (name, found) in enumerate(diagnostics.items()):
        values = [_float(found["candidate_recall"].get(source)) for source in sources]
        positions = np.arange(len(sources)) - 0.4 + height * (j + 0.5)
        bars = axes.barh(positions, values, height, label=name, color=colour(report, name))
        axes.bar_label(bars, fmt="%.3f", padding=2, size=8)
    axes.set_yticks(range(len(sources)), sources)
    axes.set_ylim(len(sources) - 0.5, -0.5)
    axes.set(xlabel="share of test targets among the candidates", xlim=(0, 1.1))
    candidates = next(iter(diagnostics.values())).get("candidates", {})
    whose = f"{next(iter(diagnostics))}: " if len(diagnostics) == 1 else ""
    axes.set_title(
        f"{whose}candidate recall per source ({candidates.get('per_source', '?')} each, "
        f"{candidates.get('total', '?')} blended)"
    )
    if len(diagnostics) > 1:
        axes.legend(fontsize=8, frameon=False, loc="lower right")
    return figure


def feature_importance(
    report: Mapping[str, Any], *, model: str | None = None, top: int = TOP_FEATURES
) -> Figure:
    """The ``top`` features of a pipeline model's ranker (default the first pipeline model) by total
    gain, largest on top."""
    diagnostics = _pipelines(report)
    model = model or next(iter(diagnostics))
    if model not in diagnostics:
        raise ValueError(f"{model!r} has no ranker; pipeline models here: {sorted(diagnostics)}")
    found = diagnostics[model]
    ranked = sorted(found["feature_importance"].items(), key=lambda item: -_float(item[1]))[:top]
    figure = Figure(figsize=(WIDTH, 0.8 + 0.24 * len(ranked)), layout="constrained")
    axes = figure.subplots()
    axes.barh(range(len(ranked)), [_float(v) for _, v in ranked], color=colour(report, model))
    axes.set_yticks(range(len(ranked)), [name for name, _ in ranked], size=8)
    axes.set_ylim(len(ranked) - 0.5, -0.5)
    axes.set_xlabel(f"total {found.get('importance_type', 'gain')}")
    axes.set_title(f"{model}: ranker feature importance (top {len(ranked)})")
    return figure


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    return figure, figure.subplots()


def _legend(axes: Axes) -> None:
    axes.legend(fontsize=8, frameon=False, loc="best")
    axes.grid(axis="y", color="#e5e5e5")
    axes.set_axisbelow(True)


def _section(report: Mapping[str, Any], key: str) -> Any:
    section = report.get(key)
    if not section:
        raise ValueError(
            f"this report has no {key!r} section: it comes from `recsys evaluate --json` "
            "(docs/evaluation_json.md); re-run the evaluation with this version"
        )
    return section


def _pipelines(report: Mapping[str, Any]) -> Mapping[str, Any]:
    diagnostics = report.get("pipeline_diagnostics") or {}
    if not diagnostics:
        raise ValueError("no pipeline diagnostics: evaluate a pipeline model (--models pipeline)")
    return diagnostics  # type: ignore[no-any-return]


def _cut(report: Mapping[str, Any], k: int | None) -> int:
    """``k``, else the report's first cut-off."""
    return int(k if k is not None else report["k"][0])


def _label(metric: str) -> str:
    return {"ndcg": "NDCG", "recall": "recall"}.get(metric, metric)


def _float(value: Any) -> float:
    """A JSON number, ``null`` (undefined) as NaN."""
    return float("nan") if value is None else float(value)


def _floats(values: Sequence[Any]) -> list[float]:
    return [_float(value) for value in values]
