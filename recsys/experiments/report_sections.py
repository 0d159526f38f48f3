"""The sections of the evaluation report (:mod:`recsys.experiments.report`), each a list of blocks
(:mod:`recsys.experiments.report_blocks`) built from the JSON of ``recsys evaluate --json``.

A section reads one report dict: the runs' combined view (models prefixed by run name when there are
several runs) for what compares across runs, or one run's own view for what only holds within a run
(paired tests, popularity, sample users). Every number is tagged with its ``section`` and what it is
(``model``, ``metric``, ``stat``, ...), so the page and ``report.json`` name it alike.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from recsys.experiments import plots
from recsys.experiments.report_blocks import Block, Cell, Chart, Heading, Paragraph, Table, number, one, text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


DPI = 100
INTERVAL_METRICS = ("recall", "ndcg", "hitrate", "mrr", "map", "precision", "novelty", "ild")
SLICE_METRICS = ("recall", "ndcg")
BEYOND = ("coverage", "gini", "novelty", "ild", "popularity_lift")
QUANTILE_NAMES = ("10%", "25%", "median", "75%", "90%")
Report = Mapping[str, Any]


def chart(name: str, title: str, figure: Figure) -> Chart:
    """``figure`` as PNG bytes (no software stamp in the file: the page names nothing outside it)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return Chart(name, title, buffer.getvalue())


def runs_table(runs: Mapping[str, Report], sources: Mapping[str, str]) -> list[Block]:
    """What each run measured on: protocol, data sizes, the split, cut-offs, seed and source file."""
    columns = (
        "run",
        "protocol",
        "users",
        "items",
        "interactions",
        "test users",
        "test targets",
        "train interactions",
        "K",
        "seed",
        "file",
    )
    rows = []
    for name, run in runs.items():
        tags = {"section": "runs", "run": name}
        sizes = [(run["dataset"], key) for key in ("users", "items", "interactions")] + [
            (run["split"], key) for key in ("test_users", "test_targets", "train_interactions")
        ]
        rows.append(
            (
                text(name),
                text(run["protocol"]),
                *(one(where.get(key), ",.0f", stat=key, **tags) for where, key in sizes),
                text(", ".join(map(str, run["k"]))),
                text(run["seed"]),
                text(sources.get(name, "")),
            )
        )
    blocks: list[Block] = [Table(columns, tuple(rows), labels=2)]
    for name, run in runs.items():
        extra = []
        if "windows" in run["split"]:
            extra.append(f"{len(run['split']['windows'])} test periods: rows are (user, period) pairs")
        if "repeats" in run:
            extra.append(f"means over seeds {run['repeats']['seeds']}")
        if extra:
            blocks.append(Paragraph(f"{name}: " + "; ".join(extra), note=True))
    return blocks + configurations(runs)


def configurations(runs: Mapping[str, Report]) -> list[Block]:
    """Each model's chosen configuration (validated on its own grid) and its timings."""
    rows = []
    for name, run in runs.items():
        for model, details in run.get("details", {}).items():
            tags = {"section": "configurations", "run": name, "model": model}
            rows.append(
                (
                    text(model if len(runs) == 1 else f"{name}/{model}"),
                    text(_params(details.get("params", {}))),
                    one(details.get("fit_seconds"), ".2f", stat="fit_seconds", **tags),
                    one(details.get("recommend_seconds"), ".2f", stat="recommend_seconds", **tags),
                )
            )
    columns = ("model", "chosen configuration", "fit s", "recommend s")
    return [Table(columns, tuple(rows), caption="models as tested (first seed)", labels=2)]


def metrics(report: Report) -> list[Block]:
    """The test metrics with their bootstrap 95% intervals (coverage has none), and one interval
    chart per cut-off."""
    ks, found = report["k"], report.get("intervals", {}).get("models", {})
    first = [f"{m}@{ks[0]}" for m in INTERVAL_METRICS]
    names = [
        m
        for m, key in zip(INTERVAL_METRICS, first, strict=True)
        if any(key in v for v in report["models"].values())
    ]
    rows = []
    for model, values in report["models"].items():
        for k in ks:
            tags = {"section": "metrics", "model": model}
            cells = [
                interval(
                    values.get(f"{m}@{k}"),
                    found.get(model, {}).get(f"{m}@{k}"),
                    fmt=".3f" if m == "novelty" else ".4f",
                    metric=f"{m}@{k}",
                    **tags,
                )
                for m in names
            ]
            coverage = number(
                values.get(f"coverage@{k}"), ".4f", metric=f"coverage@{k}", stat="value", **tags
            )
            rows.append((text(model), text(k), *cells, Cell((coverage,))))
    blocks: list[Block] = [Table(("model", "K", *names, "coverage"), tuple(rows), labels=2)]
    if found:
        about = report["intervals"]
        blocks.append(
            Paragraph(
                f"mean [bootstrap {about.get('confidence', 0.95):.0%} interval] over "
                f"{_users(about.get('clusters'))}, {about.get('resamples', 0):,} resamples, "
                f"seed {about.get('seed')}; coverage is a catalogue figure, without an interval",
                note=True,
            )
        )
        blocks += [
            chart(f"intervals-k{k}", f"metrics at K={k} with 95% intervals", plots.intervals(report, k=k))
            for k in ks
        ]
    return blocks


def interval(value: float | None, found: Mapping[str, Any] | None, *, fmt: str, **tags: Any) -> Cell:
    """``mean [low, high]`` where an interval was computed, else the plain value."""
    if not found:
        return one(value, fmt, stat="value", **tags)
    return Cell(
        (
            number(found.get("mean"), fmt, stat="mean", **tags),
            " [",
            number(found.get("ci_low"), fmt, stat="ci_low", **tags),
            ", ",
            number(found.get("ci_high"), fmt, stat="ci_high", **tags),
            "]",
        ),
        aside=1,
    )


def curves(report: Report) -> list[Block]:
    return [
        chart(f"curves-{m}", f"{m}@K for K = 1..100", plots.curves(report, metric=m))
        for m in ("ndcg", "recall")
    ]


def paired(run: Report, *, run_name: str) -> list[Block]:
    """The paired-test matrix at the first cut-off (charts and a table), then every pair's test."""
    section = run.get("pairwise") or {}
    names = section.get("models", [])
    if len(names) < 2:
        return [Paragraph("one model: no pair to test", note=True)]
    k, prefix = run["k"][0], _run_prefix(run_name)
    blocks: list[Block] = [
        chart(f"{prefix}pairwise-{m}-k{k}", f"paired {m}@{k} differences", plots.pairwise(run, metric=m, k=k))
        for m in ("ndcg", "recall")
        if f"{m}@{k}" in section["metrics"]
    ]
    key = f"ndcg@{k}"
    cells = {(name, name): Cell(("",)) for name in names}
    for test in section["metrics"].get(key, []):
        for a, b, sign in ((test["a"], test["b"], 1), (test["b"], test["a"], -1)):
            diff = None if test["mean_diff"] is None else sign * test["mean_diff"]
            mark = "*" if test["significant"] else ""
            shown = number(
                diff, "+.4f", section="matrix", metric=key, a=a, b=b, stat="mean_diff", run=run_name
            )
            cells[a, b] = Cell((shown, mark))
    matrix = tuple((text(a), *(cells.get((a, b), Cell(("",))) for b in names)) for a in names)
    blocks.append(
        Table(
            ("row - column", *names),
            matrix,
            caption=f"{key}: mean per-user difference, * Holm-adjusted p < {section['alpha']}",
        )
    )
    return [*blocks, _pair_list(section, run_name=run_name)]


def _pair_list(section: Mapping[str, Any], *, run_name: str) -> Table:
    rows = []
    for key, tests in section["metrics"].items():
        for test in tests:
            tags = {"section": "pairwise", "metric": key, "a": test["a"], "b": test["b"], "run": run_name}
            rows.append(
                (
                    text(key),
                    text(test["a"]),
                    text(test["b"]),
                    one(test["mean_diff"], "+.4f", stat="mean_diff", **tags),
                    Cell(
                        (
                            "[",
                            number(test["ci_low"], "+.4f", stat="ci_low", **tags),
                            ", ",
                            number(test["ci_high"], "+.4f", stat="ci_high", **tags),
                            "]",
                        )
                    ),
                    one(test["p_value"], ".4f", stat="p_value", **tags),
                    Cell(
                        (
                            number(test["p_holm"], ".4f", stat="p_holm", **tags),
                            "*" if test["significant"] else "",
                        )
                    ),
                    Cell(
                        tuple(
                            _joined(
                                [number(test[w], ",.0f", stat=w, **tags) for w in ("wins", "losses", "ties")]
                            )
                        )
                    ),
                )
            )
    columns = ("metric", "A", "B", "A - B", "95% interval", "p", "Holm p", "A wins / loses / ties")
    return Table(
        columns,
        tuple(rows),
        labels=3,
        caption=f"every pair, {section['test']}, {section['resamples']:,} resamples, Holm within a metric",
    )


def slices(report: Report) -> list[Block]:
    """Per slice family: its definition, a chart at the first cut-off, a table at every cut-off."""
    blocks: list[Block] = []
    ks = report["k"]
    for family, found in (report.get("slices") or {}).items():
        blocks += [Heading(family, level=3), Paragraph(found.get("definition", ""), note=True)]
        blocks.append(
            chart(
                f"slices-{_slug(family)}",
                f"ndcg@{ks[0]} by {family}",
                plots.slices(report, family=family, metric="ndcg", k=ks[0]),
            )
        )
        rows = []
        for part in found["slices"]:
            for model, values in part["models"].items():
                tags = {"section": "slices", "family": family, "slice": part["name"], "model": model}
                counts = [one(part.get(w), ",.0f", stat=w, **tags) for w in ("users", "targets")]
                cells = [
                    interval(None, values.get(f"{m}@{k}"), fmt=".4f", metric=f"{m}@{k}", **tags)
                    for k in ks
                    for m in SLICE_METRICS
                ]
                rows.append((text(part["name"]), text(model), *counts, *cells))
        columns = ("slice", "model", "users", "targets", *(f"{m}@{k}" for k in ks for m in SLICE_METRICS))
        blocks.append(Table(columns, tuple(rows), labels=2))
    return blocks or [Paragraph("no slices in this report", note=True)]


def beyond_accuracy(report: Report) -> list[Block]:
    section = report.get("beyond_accuracy") or {}
    models = section.get("models", {})
    keys = [f"{m}@{k}" for k in report["k"] for m in BEYOND if any(f"{m}@{k}" in v for v in models.values())]
    rows = tuple(
        (
            text(model),
            *(
                one(
                    values.get(key),
                    ".4f" if not key.startswith("novelty") else ".3f",
                    section="beyond",
                    model=model,
                    metric=key,
                )
                for key in keys
            ),
        )
        for model, values in models.items()
    )
    blocks: list[Block] = [Table(("model", *keys), rows)]
    used = {key.partition("@")[0] for key in keys}
    definitions = section.get("definitions", {})
    return blocks + [
        Paragraph(f"{m}: {definitions[m]}", note=True) for m in BEYOND if m in used and m in definitions
    ]


def popularity(run: Report, *, run_name: str) -> list[Block]:
    """Popularity of the recommended items against the users' histories: chart and quantiles."""
    section = run.get("popularity_bias")
    if not section:
        return [Paragraph("no popularity section in this report", note=True)]
    rows = []
    for who, profile in [("users' histories", section["history"]), *section["models"].items()]:
        tags = {"section": "popularity", "model": who, "run": run_name}
        figures = [
            number(profile.get("count"), ",.0f", stat="count", **tags),
            number(profile.get("mean"), ",.1f", stat="mean", **tags),
        ]
        figures += [
            number(q, ",.0f", stat=name, **tags)
            for name, q in zip(QUANTILE_NAMES, profile["quantiles"], strict=False)
        ]
        rows.append((text(who), *(Cell((f,)) for f in figures)))
    return [
        chart(
            f"{_run_prefix(run_name)}popularity",
            f"popularity of the top-{section['k']} items",
            plots.popularity_bias(run),
        ),
        Table(("items of", "count", "mean", *QUANTILE_NAMES), tuple(rows), caption=section["measure"]),
    ]


def pipeline(report: Report) -> list[Block]:
    """Candidate recall per source and the ranker's feature importance of every pipeline model."""
    diagnostics = report.get("pipeline_diagnostics") or {}
    if not diagnostics:
        return [
            Paragraph(
                "No pipeline model in this run: evaluate --models pipeline for its candidate "
                "recall and feature importance.",
                note=True,
            )
        ]
    blocks: list[Block] = [
        chart("candidate-recall", "candidate recall per source", plots.candidate_recall(report))
    ]
    sources = list(dict.fromkeys(s for d in diagnostics.values() for s in d["candidate_recall"]))
    rows = tuple(
        (
            text(model),
            *(
                one(d["candidate_recall"].get(s), ".4f", section="candidates", model=model, source=s)
                for s in sources
            ),
        )
        for model, d in diagnostics.items()
    )
    blocks.append(Table(("model", *sources), rows, caption="share of test targets among the candidates"))
    for model, found in diagnostics.items():
        blocks.append(
            chart(
                f"importance-{_slug(model)}",
                f"{model}: ranker feature importance",
                plots.feature_importance(report, model=model),
            )
        )
        top = sorted(found["feature_importance"].items(), key=lambda item: -(item[1] or 0))[
            : plots.TOP_FEATURES
        ]
        rows = tuple(
            (
                text(feature),
                one(value, ",.1f", section="importance", model=model, feature=feature),
            )
            for feature, value in top
        )
        blocks.append(Table(("feature", f"total {found.get('importance_type', 'gain')}"), rows))
    return blocks


def samples(run: Report) -> list[Block]:
    """A few test users: their latest history, what was held out, and each model's top 10 (held-out
    items highlighted)."""
    blocks: list[Block] = []
    for sample in run.get("samples") or []:
        blocks.append(Heading(f"user {sample['user_id']} ({sample['history_length']} events)", level=4))
        blocks.append(Paragraph("latest: " + " · ".join(_title(item) for item in sample["history"])))
        blocks.append(Paragraph("held out: " + " · ".join(_title(item) for item in sample["targets"])))
        names = list(sample["models"])
        depth = max((len(items) for items in sample["models"].values()), default=0)
        rows = tuple(
            (text(rank + 1), *(_ranked(sample["models"][name], rank) for name in names))
            for rank in range(depth)
        )
        blocks.append(Table(("#", *names), rows, labels=len(names) + 1))
    return blocks or [Paragraph("no sample users in this report", note=True)]


def _ranked(items: Sequence[Mapping[str, Any]], rank: int) -> Cell:
    if rank >= len(items):
        return Cell(("",))
    return Cell((_title(items[rank]),), hit=bool(items[rank].get("hit")))


def _users(clusters: int | None) -> str:
    """Who the intervals resample: several runs' intervals each resampled their own users."""
    return "each run's own users" if clusters is None else f"{clusters:,} resampled users"


def _title(item: Mapping[str, Any]) -> str:
    return str(item.get("title") or item["item_id"])


def _params(params: Mapping[str, Any]) -> str:
    """A configuration on one line; nested settings (a pipeline's sources) are summarised."""
    return ", ".join(
        f"{key}={{...}}" if isinstance(value, Mapping) else f"{key}={value}" for key, value in params.items()
    )


def _joined(parts: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for j, part in enumerate(parts):
        out += [" / ", part] if j else [part]
    return out


def _slug(name: str) -> str:
    """A file-name-safe form of a model or slice family name."""
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def _run_prefix(run_name: str) -> str:
    """What a run's own chart names start with: its slug and ``-``, nothing for an unnamed run."""
    return f"{_slug(run_name)}-" if _slug(run_name) else ""
