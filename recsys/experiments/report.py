"""``recsys report`` as a library: the JSON of ``recsys evaluate --json`` (one run or several) becomes
one self-contained ``index.html``, a ``report.md`` and a ``report.json``.

::

    runs = load_results([Path("results.json")])               # name (the file's stem) -> parsed JSON
    report = build_report(runs, sources={"results": "results.json"})
    write_report(report, Path("report"))                        # index.html, report.md, report.json, plots/

The page shows, in order: the runs (data, protocol, split, chosen configurations), the metrics with
their bootstrap 95% intervals, "what changed" against a baseline (:func:`baseline_for`), NDCG and
recall at K = 1..100, the paired tests of every pair of models (Holm), the slices, the beyond-accuracy
figures, popularity bias, the pipeline's candidate recall and feature importance, and sample users
with their histories and recommendations. Every figure comes from the JSON (``docs/evaluation_json.md``);
nothing is recomputed but the baseline's paired intervals
(:func:`recsys.experiments.run_compare.compare_runs`).

Several runs are shown side by side: their models are prefixed with the run's name (``run/model``)
wherever figures compare across runs (:func:`combine`); the paired tests, popularity and samples
stay within each run, since only a run's own users pair up. The charts are
:mod:`recsys.experiments.plots`; the blocks and their HTML and Markdown are
:mod:`recsys.experiments.report_blocks`; the sections are :mod:`recsys.experiments.report_sections`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.experiments import report_sections as sections
from recsys.experiments.report_blocks import (
    CHART_FOLDER,
    Block,
    Cell,
    Chart,
    Heading,
    Paragraph,
    Table,
    markdown,
    number,
    number_all,
    numbers_of,
    one,
    page,
    text,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from recsys.experiments.run_compare import RunComparison
    from recsys.experiments.runs import RunRecord

REQUIRED = ("protocol", "dataset", "models", "split", "k", "seed", "intervals", "curves")
CHANGED_METRICS = ("recall", "ndcg", "coverage", "novelty")  # accuracy, then what the lists look like
BASELINE_RESAMPLES = 2_000  # as the evaluation's own intervals (recsys.evaluation.stats.RESAMPLES)


class ReportError(ValueError):
    """An input cannot be reported on (unreadable, not evaluate JSON, or from an older version)."""


@dataclass(frozen=True)
class Baseline:
    """The run the report compares against: its source, its JSON, what changed in each run since it
    (run name -> comparison), and notes on how the comparisons were paired."""

    source: str
    report: Mapping[str, Any]
    comparisons: Mapping[str, RunComparison]
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class Report:
    """The built report: its blocks in page order (every number numbered) and what ``report.json``
    says besides them."""

    title: str
    blocks: Sequence[Block]
    sections: Sequence[Heading]
    runs: Mapping[str, Mapping[str, Any]]
    baseline: Baseline | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def html(self) -> str:
        """The self-contained page (``index.html``)."""
        return page(self.blocks, title=self.title, nav=self.sections)

    def markdown(self) -> str:
        """``report.md``: the same tables, charts linked as ``plots/NAME.png``."""
        return f"# {self.title}\n\n" + markdown(self.blocks)

    def charts(self) -> list[Chart]:
        return [block for block in self.blocks if isinstance(block, Chart)]

    def to_json(self) -> str:
        """``report.json``: every number the page shows (``numbers``: id, value, text, tags; the page
        carries the same as ``data-*`` attributes), the charts, the sections and the runs."""
        out = {
            "title": self.title,
            "created_at": self.created_at,
            "runs": self.runs,
            "sections": [{"anchor": h.anchor, "title": h.text} for h in self.sections],
            "charts": [
                {"name": c.name, "title": c.title, "file": f"{CHART_FOLDER}/{c.name}.png"}
                for c in self.charts()
            ],
            "numbers": numbers_of(self.blocks),
            "baseline": None
            if self.baseline is None
            else {
                "source": self.baseline.source,
                "notes": list(self.baseline.notes),
                "comparisons": {name: c.to_dict() for name, c in self.baseline.comparisons.items()},
            },
        }
        return json.dumps(out, indent=2) + "\n"


def load_results(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Each file's parsed JSON by run name (the file's stem; ``stem-2``, ... when two files share one);
    :class:`ReportError` names the file and what is wrong."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"{path}: cannot read as JSON: {exc}") from None
        missing = [key for key in REQUIRED if not isinstance(data, dict) or key not in data]
        if missing:
            raise ReportError(
                f"{path}: not the JSON of this version's `recsys evaluate --json` (no {', '.join(missing)}); "
                "run the evaluation again"
            )
        name, n = Path(path).stem, 1
        while name in out:
            n += 1
            name = f"{Path(path).stem}-{n}"
        out[name] = data
    return out


def build_report(
    runs: Mapping[str, Mapping[str, Any]],
    *,
    sources: Mapping[str, str] | None = None,
    baseline: Baseline | None = None,
    progress: Progress | None = None,
) -> Report:
    """The report of ``runs`` (run name -> evaluate JSON), with "what changed" since ``baseline``;
    ``progress`` gets a bar advancing as each section is built (the charts take the time)."""
    several = len(runs) > 1
    views = {name: prefixed(run, name) if several else dict(run) for name, run in runs.items()}
    combined = combine(views)
    own = {name: {**view, "models": combined["models"]} for name, view in views.items()}  # one colour a model

    def each_run(build: Callable[[Mapping[str, Any], str], list[Block]]) -> list[Block]:
        blocks: list[Block] = []
        for name, view in own.items():
            blocks += ([Heading(name, level=3)] if several else []) + build(view, name if several else "")
        return blocks

    plan: list[tuple[str, str, Callable[[], list[Block]]]] = [
        ("runs", "Runs", lambda: sections.runs_table(runs, sources or {})),
        ("metrics", "Metrics", lambda: sections.metrics(combined)),
        ("changed", "What changed", lambda: _changed(baseline, runs)),
        ("curves", "NDCG and recall at K = 1..100", lambda: sections.curves(combined)),
        ("paired", "Paired tests", lambda: each_run(lambda run, name: sections.paired(run, run_name=name))),
        ("slices", "Slices", lambda: sections.slices(combined)),
        ("beyond", "Beyond accuracy", lambda: sections.beyond_accuracy(combined)),
        (
            "popularity",
            "Popularity bias",
            lambda: each_run(lambda run, name: sections.popularity(run, run_name=name)),
        ),
        ("pipeline", "Pipeline", lambda: sections.pipeline(combined)),
        ("samples", "Sample users", lambda: each_run(lambda run, _: sections.samples(run))),
    ]
    if baseline is None:
        plan = [step for step in plan if step[0] != "changed"]
    bar = progress.add_task("report", total=len(plan)) if progress is not None else None
    blocks: list[Block] = [Paragraph(_intro(runs, sources or {}, baseline), note=True)]
    nav = []
    for anchor, title, build in plan:
        nav.append(Heading(title, anchor=anchor))
        blocks += [nav[-1], *build()]
        if progress is not None and bar is not None:
            progress.advance(bar)
    return Report(
        title="Evaluation report: " + ", ".join(runs),
        blocks=number_all(blocks),
        sections=nav,
        runs={name: _summary(run, sources or {}, name) for name, run in runs.items()},
        baseline=baseline,
    )


def write_report(report: Report, out: Path) -> list[Path]:
    """Write ``index.html``, ``report.md``, ``report.json`` and ``plots/*.png`` into ``out`` (each file
    atomically; charts of an earlier report there that this one lacks are removed)."""
    from recsys.data.io import atomic_path

    folder = Path(out) / CHART_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    charts = {f"{chart.name}.png": chart.png for chart in report.charts()}
    for stale in folder.glob("*.png"):
        if stale.name not in charts:
            stale.unlink()
    for name, png in charts.items():
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(png)
        written.append(folder / name)
    for name, content in (
        ("report.json", report.to_json()),
        ("report.md", report.markdown()),
        ("index.html", report.html()),
    ):
        with atomic_path(Path(out) / name) as tmp:
            tmp.write_text(content, encoding="utf-8")
        written.append(Path(out) / name)
    return written


def prefixed(run: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``run`` with every model renamed ``name/model``, in every section that names models."""

    def rename(mapping: Mapping[str, Any]) -> dict[str, Any]:
        return {f"{name}/{model}": value for model, value in mapping.items()}

    out = dict(run)
    out["models"], out["details"] = rename(run["models"]), rename(run.get("details") or {})
    out["pipeline_diagnostics"] = rename(run.get("pipeline_diagnostics") or {})
    for key in ("intervals", "curves", "beyond_accuracy", "popularity_bias"):
        if run.get(key):
            out[key] = {**run[key], "models": rename(run[key]["models"])}
    out["slices"] = {
        family: {**found, "slices": [{**part, "models": rename(part["models"])} for part in found["slices"]]}
        for family, found in (run.get("slices") or {}).items()
    }
    out["samples"] = [{**sample, "models": rename(sample["models"])} for sample in run.get("samples") or []]
    if run.get("pairwise"):
        pairs = run["pairwise"]
        out["pairwise"] = {
            **pairs,
            "models": [f"{name}/{model}" for model in pairs["models"]],
            "metrics": {
                key: [{**test, "a": f"{name}/{test['a']}", "b": f"{name}/{test['b']}"} for test in tests]
                for key, tests in pairs["metrics"].items()
            },
        }
    return out


def combine(views: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One evaluate-shaped dict of several (already :func:`prefixed`) runs, for what compares across
    runs: models, details, intervals, curves (to the shortest depth), slices (matched by family and
    slice name; a slice's counts only where every run agrees), beyond accuracy, pipeline diagnostics.
    The cut-offs are those every run has. One run is returned as it is."""
    runs = list(views.values())
    if len(runs) == 1:
        return dict(runs[0])
    ks = sorted(set.intersection(*(set(run["k"]) for run in runs))) or runs[0]["k"]
    out: dict[str, Any] = {"k": ks, "models": {}, "details": {}, "pipeline_diagnostics": {}}
    for run in runs:
        for key in ("models", "details", "pipeline_diagnostics"):
            out[key].update(run.get(key) or {})
    for key in ("intervals", "curves", "beyond_accuracy"):
        present = [run[key] for run in runs if run.get(key)]
        if present:
            out[key] = {**present[0], "models": {m: v for p in present for m, v in p["models"].items()}}
    if "intervals" in out:
        out["intervals"]["clusters"] = None  # each run resampled its own users
    if "curves" in out:
        depth = min(len(run["curves"]["k"]) for run in runs if run.get("curves"))
        out["curves"]["k"] = out["curves"]["k"][:depth]
        out["curves"]["models"] = {
            m: {c: v[:depth] for c, v in found.items()} for m, found in out["curves"]["models"].items()
        }
    out["slices"] = _merged_slices([run.get("slices") or {} for run in runs])
    return out


def _merged_slices(families: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for found in families:
        for family, section in found.items():
            merged = out.setdefault(family, {"definition": section.get("definition", ""), "slices": []})
            parts = {part["name"]: part for part in merged["slices"]}
            for part in section["slices"]:
                if part["name"] not in parts:
                    parts[part["name"]] = {**part, "models": {}}
                    merged["slices"].append(parts[part["name"]])
                held = parts[part["name"]]
                held["models"].update(part["models"])
                for count in ("users", "targets"):
                    if held.get(count) != part.get(count):
                        held[count] = None  # runs disagree: no one count describes the slice
    return out


def baseline_for(
    baseline: Path,
    runs: Mapping[str, Path],
    *,
    results: Mapping[str, Mapping[str, Any]],
    runs_dir: Path | None = None,
) -> Baseline:
    """What changed in each run (run name -> its JSON file; ``results`` their parsed JSON) since the
    ``baseline`` JSON: :func:`~recsys.experiments.run_compare.compare_runs` on the run records that
    wrote the files (found in the runs folder by their ``--json`` output), so the changes get paired
    95% intervals where both runs kept per-user metrics on the same data and split; a file no record
    names is compared on its metrics alone (plain deltas)."""
    from recsys.experiments.run_compare import compare_runs
    from recsys.experiments.runs import runs_folder

    old = load_results([baseline])
    old_report = next(iter(old.values()))
    folder = runs_folder(runs_dir)
    notes: list[str] = []
    old_record = _record_for(baseline, old_report, folder, notes)
    comparisons = {
        name: compare_runs(
            old_record,
            _record_for(path, results[name], folder, notes),
            resamples=BASELINE_RESAMPLES,
            seed=int(results[name].get("seed", 0)),
        )
        for name, path in runs.items()
    }
    return Baseline(source=str(baseline), report=old_report, comparisons=comparisons, notes=notes)


def _record_for(path: Path, report: Mapping[str, Any], folder: Path, notes: list[str]) -> RunRecord:
    """The newest evaluate record whose ``--json`` was ``path`` and whose metrics are the file's (a
    file written again since would not match), else a record of the file's metrics alone."""
    from recsys.experiments.runs import RunRecord, load_records

    resolved = str(Path(path).resolve())
    for record in reversed(load_records(folder)):
        if (
            record.command == "evaluate"
            and record.outputs.get("json") == resolved
            and record.metrics == report["models"]
        ):
            return record
    notes.append(f"no run record in {folder} wrote {path}: its figures are compared without per-user data")
    return RunRecord(
        id=Path(path).name,
        command="evaluate",
        created_at="",
        metrics=report["models"],
        config={"protocol": report.get("protocol")},
    )


def _changed(baseline: Baseline | None, runs: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    if baseline is None:
        return []
    blocks: list[Block] = [Paragraph(f"baseline: {baseline.source}; change = this run - baseline", note=True)]
    blocks += [Paragraph(note, note=True) for note in baseline.notes]
    for name, comparison in baseline.comparisons.items():
        if len(baseline.comparisons) > 1:
            blocks.append(Heading(name, level=3))
        blocks += what_changed(
            comparison, before=baseline.report, after=runs[name], tags={"run": name} if len(runs) > 1 else {}
        )
    return blocks


def what_changed(
    comparison: RunComparison, *, before: Mapping[str, Any], after: Mapping[str, Any], tags: Mapping[str, str]
) -> list[Block]:
    """``after - before`` per model and metric of :data:`CHANGED_METRICS` (``report.json`` keeps every
    metric): the paired 95% interval of the change where both runs kept per-user metrics on the same
    data and split, else each run's own interval beside a plain delta."""
    rows = []
    for row in (row for row in comparison.rows if row.metric in CHANGED_METRICS):
        key = row.metric if row.k is None else f"{row.metric}@{row.k}"
        where = {"section": "changed", "model": row.model, "metric": key, **tags}
        own = [
            run.get("intervals", {}).get("models", {}).get(row.model, {}).get(key) for run in (before, after)
        ]
        change = (
            (
                "[",
                number(row.ci_low, "+.4f", stat="ci_low", **where),
                ", ",
                number(row.ci_high, "+.4f", stat="ci_high", **where),
                "]",
            )
            if row.paired
            else ("-",)
        )
        rows.append(
            (
                text(row.model),
                text(key),
                sections.interval(row.a, own[0], fmt=".4f", side="baseline", **where),
                sections.interval(row.b, own[1], fmt=".4f", side="run", **where),
                one(row.delta, "+.4f", stat="delta", **where),
                Cell(change),
                one(row.users, ",.0f", stat="users", **where),
            )
        )
    columns = ("model", "metric", "baseline", "this run", "change", "paired 95% interval", "users")
    blocks: list[Block] = [Table(columns, tuple(rows), labels=2), Paragraph(comparison.reason, note=True)]
    return blocks + [Paragraph(f"note: {note}", note=True) for note in comparison.notes]


def _intro(
    runs: Mapping[str, Mapping[str, Any]], sources: Mapping[str, str], baseline: Baseline | None
) -> str:
    files = ", ".join(sources[name] for name in runs if name in sources) or "this run of recsys evaluate"
    against = f", against {baseline.source}" if baseline is not None else ""
    return (
        f"Figures from {files}{against} (recsys evaluate's JSON, docs/evaluation_json.md). Test "
        "metrics rank the whole catalogue without the user's history; intervals are percentile "
        "bootstrap 95% intervals over users."
    )


def _summary(run: Mapping[str, Any], sources: Mapping[str, str], name: str) -> dict[str, Any]:
    keys = ("protocol", "dataset", "split", "k", "seed")
    return {"source": sources.get(name), **{key: run.get(key) for key in keys}, "models": list(run["models"])}
