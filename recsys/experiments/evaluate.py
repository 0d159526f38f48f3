"""``recsys evaluate`` as a library: :func:`evaluate` (dataset, options) -> :class:`EvaluationReport`.

For each model of :data:`~recsys.experiments.models.MODELS` asked for, every configuration of its
grid is fitted on the validation task's training data and scored on the validation targets; the one
with the best NDCG@10 is refitted on the test task's training data and scored on the test targets (a
one-configuration grid skips validation). Lists rank the whole catalogue and never contain an item of
the user's input history (:mod:`recsys.evaluation.protocol`).

``repeats=R`` tunes and tests every model R times, with seeds ``seed`` to ``seed + R - 1``: the report's
``models`` holds the mean over the seeds, ``details`` the first seed's run, ``repeats`` each run, and the
per-user metrics (``per_user``, ``paired``) are each user's mean over the seeds, so a model whose
training is noisy (the sequential one) is compared as a model, not as one lucky or unlucky fit.

``windows=K`` (temporal only) evaluates on K consecutive test periods of ``test_fraction`` each, the
last being the ordinary temporal test period (a rolling origin,
:func:`recsys.data.splits.rolling_temporal`): every model is tuned and tested once per period on what
precedes it, and the rows of the metrics are (user, period) pairs. ``details[model]["windows"]`` holds
each period's choice and metrics; the per-user table gains a ``window`` column (0 = earliest); the
paired intervals resample users with all their periods (a cluster bootstrap), since one user's periods
are not independent.

Every run also reports what ``recsys report`` draws (:mod:`recsys.experiments.analysis`): intervals
of every metric, Holm-corrected paired tests of every pair of models, slices, beyond-accuracy
figures, NDCG and recall curves to k = 100 (the test lists are ranked that deep; the metrics still
see exactly the ``max(ks)``-long lists), popularity bias, sample users and the pipeline's
diagnostics.

>>> import polars as pl
>>> from recsys.data.dataset import Dataset
>>> dataset = Dataset.from_tables(
...     pl.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"]}),
...     pl.DataFrame({"user_id": ["u"] * 3 + ["v"] * 3, "item_id": ["a", "b", "c", "b", "a", "c"],
...                   "timestamp": [1, 2, 3, 1, 2, 3]}),
... )
>>> report = evaluate(dataset, EvaluationOptions(models=["popularity"], ks=[1, 2]))
>>> report.split["test_users"], report.models["popularity"]["hitrate@2"]  # 2 items left to rank, 1 the target
(2, 1.0)
>>> report.to_json().splitlines()[:2]
['{', '  "protocol": "leave-last-out",']

This module imports only the standard library at load time (the CLI builds its options from
:class:`SplitProtocol` and must stay fast to start); the numerical work imports what it needs.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import polars as pl
    import scipy.sparse as sp
    from rich.progress import Progress

    from recsys.data.dataset import Dataset
    from recsys.data.splits import Split
    from recsys.evaluation.protocol import ModelResult
    from recsys.experiments.models import EvalContext
    from recsys.pipeline.two_stage import TwoStageConfig


class SplitProtocol(StrEnum):
    """How the events are held out: each user's last event, or every event after a time cut."""

    LEAVE_LAST_OUT = "leave-last-out"
    TEMPORAL = "temporal"


class EvaluationError(ValueError):
    """The arguments cannot be evaluated on this dataset; raised before any model is fitted."""


@dataclass(frozen=True)
class EvaluationReport:
    """Test metrics of every model, with how each was chosen, and the split they were measured on.

    :meth:`to_json` is a stable interface that scripts rely on (``recsys evaluate --json``); the whole
    shape, key by key, is in ``docs/evaluation_json.md``::

        {"protocol": "leave-last-out",
         "dataset": {"users": .., "items": .., "interactions": ..},
         "models": {"als": {"recall@10": .., "ndcg@10": .., ...}, ...},   # flat numeric test metrics
         "details": {"als": {"params": {..}, "validation": [..], "fit_seconds": .., ...}, ...},
         "split": {...}, "k": [10, 50], "seed": 0,
         "paired": {"reference": "popularity",                          # only with paired_against
                    "models": {"als": {"ndcg@10": {"mean_diff": .., "ci_low": .., "ci_high": ..,
                                                   "wins": .., "losses": .., "ties": .., ...}}}},
         "repeats": {"seeds": [0, 1, 2],                                # only with repeats > 1
                     "models": {"als": [{"metrics": {..}, "params": {..}, ...}, ...]}},
         # what the report shows (recsys.experiments.analysis), always present:
         "intervals": .., "pairwise": .., "slices": .., "beyond_accuracy": .., "curves": ..,
         "popularity_bias": .., "samples": [..], "pipeline_diagnostics": {..}}

    ``per_user`` is not in the JSON: one row per (model, test user[, test period ``window``]), the
    user's external id and every accuracy metric (averaged over the seeds). ``analysis`` holds the
    sections after ``paired``, in that order.
    """

    protocol: str
    dataset: dict[str, int]
    models: dict[str, dict[str, float]]
    details: dict[str, dict[str, Any]]
    split: dict[str, Any]
    k: list[int]
    seed: int
    repeats: dict[str, Any] | None
    paired: dict[str, Any] | None
    per_user: pl.DataFrame
    analysis: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as indented JSON; undefined metrics (NaN) become ``null``."""
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "dataset": self.dataset,
            "models": self.models,
            "details": self.details,
            "split": self.split,
            "k": self.k,
            "seed": self.seed,
        }
        if self.repeats is not None:
            out["repeats"] = self.repeats
        if self.paired is not None:
            out["paired"] = self.paired
        out.update(self.analysis)
        return json.dumps(_finite(out), indent=2) + "\n"


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate and how: everything but the data, checked (:meth:`check`) before it is read.

    ``ks`` are the cut-offs (the first one is the paired differences'); ``test_fraction``,
    ``validation_fraction`` and ``windows`` apply to the temporal protocol; ``threads`` are the solver
    threads per model (0: all cores); ``encoder`` the text models' item encoder ('' = the packaged one);
    ``paired_against`` (one of ``models``) adds per-user paired differences of NDCG and recall of every
    other model against it, with bootstrap 95% intervals; ``pipeline`` configures the pipeline models
    in place of their built-in configuration (the run's seed still reaches every seeded part).
    """

    models: Sequence[str]
    ks: Sequence[int] = (10, 50)
    protocol: SplitProtocol = SplitProtocol.LEAVE_LAST_OUT
    test_fraction: float = 0.1
    validation_fraction: float = 0.1
    windows: int = 1
    seed: int = 0
    repeats: int = 1
    threads: int = 0
    encoder: str = ""
    paired_against: str | None = None
    pipeline: TwoStageConfig | None = None

    def check(self, *, spell: Callable[[str], str] = str) -> list[str]:
        """The model names, known and without repeats, once every option is valid.

        :func:`evaluate` calls it first; the CLI calls it before reading the data, with ``spell``
        naming each option as its user knows it (``paired_against`` -> ``--paired-against``).

        >>> EvaluationOptions(models=["als", "als"], protocol=SplitProtocol.TEMPORAL, windows=2).check()
        ['als']
        >>> EvaluationOptions(models=["als"], repeats=0).check(spell=lambda name: "--" + name)
        Traceback (most recent call last):
        ...
        recsys.experiments.evaluate.EvaluationError: --repeats must be >= 1, got 0
        """
        from recsys.experiments.models import resolve

        try:
            names = resolve(self.models)
        except KeyError as exc:
            raise EvaluationError(exc.args[0]) from None
        if not self.ks or min(self.ks) < 1:
            raise EvaluationError(f"{spell('ks')} must be positive integers, got {list(self.ks)}")
        if self.paired_against is not None and self.paired_against not in names:
            raise EvaluationError(
                f"{spell('paired_against')} {self.paired_against!r} is not one of {spell('models')}"
                f" ({', '.join(names)})"
            )
        if self.repeats < 1:
            raise EvaluationError(f"{spell('repeats')} must be >= 1, got {self.repeats}")
        if self.windows < 1:
            raise EvaluationError(f"{spell('windows')} must be >= 1, got {self.windows}")
        if self.windows > 1 and self.protocol is not SplitProtocol.TEMPORAL:
            raise EvaluationError(
                f"{spell('windows')} {self.windows} needs {spell('protocol')} temporal"
                " (test periods are periods of time)"
            )
        return names


def evaluate(
    dataset: Dataset,
    options: EvaluationOptions,
    *,
    item_embeddings: np.ndarray | None = None,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Tune each of ``options.models`` on validation and report its test metrics at ``options.ks``.

    ``item_embeddings`` ((n_items, dim), items-table order) add intra-list diversity (``ild@k``);
    ``progress`` shows bars and a line per fitted model. Options that cannot work (an unknown model,
    a split the data cannot make, ...) raise :class:`EvaluationError` before any fit.
    """
    from recsys.experiments.analysis import SECTIONS, analyse
    from recsys.experiments.models import EvalContext

    names, cuts, windows = options.check(), sorted(set(options.ks)), options.windows
    if item_embeddings is not None and (item_embeddings.ndim != 2 or len(item_embeddings) != dataset.n_items):
        raise EvaluationError(
            f"item_embeddings of shape {item_embeddings.shape} are not (n_items={dataset.n_items}, dim)"
        )
    splits = _splits(dataset, options)
    ctx = EvalContext(
        dataset=dataset,
        seed=options.seed,
        num_threads=options.threads,
        item_embeddings=item_embeddings,
        encoder=options.encoder,
        pipeline=options.pipeline,
    )
    seeds = list(range(options.seed, options.seed + options.repeats))
    runs = _run(ctx, names, splits, ks=cuts, seeds=seeds, progress=progress)
    # Diversity last: a builder (e.g. a text model) may have provided embeddings meanwhile.
    if ctx.item_embeddings is not None:
        _add_diversity(runs, ctx.item_embeddings, ks=cuts)

    test_users, test_targets = _test_rows(splits)
    per_user = {name: _mean_per_user(model_runs, test_targets, cuts) for name, model_runs in runs.items()}
    clusters = test_users if windows > 1 else None  # one user's test periods are resampled together
    bar = progress.add_task("analysis", total=len(SECTIONS)) if progress is not None else None
    analysis = analyse(
        dataset,
        runs,
        [s.test for s in splits],
        per_user,
        ks=cuts,
        seed=options.seed,
        embeddings=ctx.item_embeddings,
        step=lambda _: progress.advance(bar) if progress is not None and bar is not None else None,
    )
    return EvaluationReport(
        protocol=options.protocol.value,
        dataset=dataset.summary(),
        models={name: _mean_metrics(model_runs) for name, model_runs in runs.items()},
        details={name: model_runs[0].details() for name, model_runs in runs.items()},
        split={
            "validation_users": sum(len(s.validation.users) for s in splits),
            "test_users": len(test_users),
            "test_targets": int(test_targets.nnz),
            "train_interactions": len(splits[-1].test.train),
            **(
                {"test_fraction": options.test_fraction, "validation_fraction": options.validation_fraction}
                if options.protocol is SplitProtocol.TEMPORAL
                else {}
            ),
            **({"windows": [_window_summary(s) for s in splits]} if windows > 1 else {}),
        },
        k=cuts,
        seed=options.seed,
        repeats=_each_seed(runs, seeds) if options.repeats > 1 else None,
        paired=None
        if options.paired_against is None
        else _paired(per_user, options.paired_against, cut=cuts[0], seed=options.seed, clusters=clusters),
        per_user=_per_user_frame(dataset, per_user, splits, test_users),
        analysis=analysis,
    )


def _splits(dataset: Dataset, options: EvaluationOptions) -> list[Split]:
    """The test periods in time order: one for leave-last-out, ``windows`` consecutive ones for temporal
    (one window is exactly the ordinary temporal split)."""
    from recsys.data.splits import leave_last_out, rolling_temporal

    data = dataset.to_interactions()
    try:
        if options.protocol is SplitProtocol.LEAVE_LAST_OUT:
            return [leave_last_out(data)]
        return rolling_temporal(
            data,
            windows=options.windows,
            test_fraction=options.test_fraction,
            validation_fraction=options.validation_fraction,
        )
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc


def _run(
    ctx: EvalContext,
    names: list[str],
    splits: list[Split],
    *,
    ks: list[int],
    seeds: list[int],
    progress: Progress | None,
) -> dict[str, list[ModelResult]]:
    """Each model's result for each seed, in seed order; its test periods pooled into one result."""
    from recsys.evaluation.protocol import pool_windows, tune_and_test
    from recsys.experiments.analysis import CURVE_DEPTH
    from recsys.experiments.models import MODELS

    runs: dict[str, list[ModelResult]] = {name: [] for name in names}
    overall = progress.add_task("models", total=len(names) * len(seeds) * len(splits)) if progress else None
    for run_seed in seeds:
        ctx.seed = run_seed  # one context: derived artifacts (text embeddings) are computed once
        for name in names:
            spec = MODELS[name]
            grid, build = list(spec.grid(ctx)), functools.partial(spec.build, ctx)
            results = []
            for split in splits:
                results.append(
                    tune_and_test(
                        build,
                        grid,
                        split,
                        ks=ks,
                        depth=CURVE_DEPTH,  # the report's curves: one ranking, cut at every k
                        diagnose=spec.diagnose,
                        progress=progress,
                        label=name,
                    )
                )
                if progress is not None and overall is not None:
                    progress.advance(overall)
            runs[name].append(pool_windows(results, splits) if len(splits) > 1 else results[0])
            if progress is not None:
                seed_note = f", seed {run_seed}" if len(seeds) > 1 else ""
                progress.console.print(
                    f"{name}: done ({len(grid)} configuration(s){seed_note})", highlight=False
                )
    return runs


def _add_diversity(runs: dict[str, list[ModelResult]], embeddings: np.ndarray, *, ks: list[int]) -> None:
    from recsys.evaluation.metrics import intra_list_diversity

    for result in (r for model_runs in runs.values() for r in model_runs):
        for cut in ks:
            result.metrics[f"ild@{cut}"] = intra_list_diversity(result.recommended, embeddings, k=cut)


def _test_rows(splits: list[Split]) -> tuple[np.ndarray, sp.csr_matrix]:
    """The rows of every test metric, (user, period) pairs with periods in order: users and targets."""
    import numpy as np
    import scipy.sparse as sp

    users = np.concatenate([s.test.users for s in splits])
    return users, sp.vstack([s.test.targets for s in splits]).tocsr()


def _mean_metrics(model_runs: list[ModelResult]) -> dict[str, float]:
    """Each metric's mean over the runs (one run: its metrics unchanged)."""
    return {key: sum(r.metrics[key] for r in model_runs) / len(model_runs) for key in model_runs[0].metrics}


def _mean_per_user(
    model_runs: list[ModelResult], targets: sp.csr_matrix, ks: list[int]
) -> dict[str, np.ndarray]:
    """Each test user's accuracy metrics, averaged over the runs (seeds) of one model."""
    from recsys.evaluation.metrics import mean_accuracy_per_user

    return mean_accuracy_per_user([r.recommended[:, : max(ks)] for r in model_runs], targets, ks=ks)


def _each_seed(runs: dict[str, list[ModelResult]], seeds: list[int]) -> dict[str, Any]:
    """Every run of every model: its test metrics, chosen params, validation results and timings."""
    return {
        "seeds": seeds,
        "models": {
            name: [{"metrics": r.metrics, **r.details()} for r in model_runs]
            for name, model_runs in runs.items()
        },
    }


def _paired(
    per_user: dict[str, dict[str, np.ndarray]],
    reference: str,
    *,
    cut: int,
    seed: int,
    clusters: np.ndarray | None,
) -> dict[str, Any]:
    """Per-user paired NDCG and recall differences at ``cut`` of every model against ``reference``;
    with ``clusters`` (the user of each row) users are resampled with all their test periods."""
    from recsys.evaluation.metrics import paired_difference

    return {
        "reference": reference,
        "models": {
            name: {
                key: paired_difference(values[key], per_user[reference][key], seed=seed, clusters=clusters)
                for key in (f"ndcg@{cut}", f"recall@{cut}")
            }
            for name, values in per_user.items()
            if name != reference
        },
    }


def _window_summary(split: Split) -> dict[str, int]:
    return {
        "train_interactions": len(split.test.train),
        "train_until": int(split.test.train.timestamps.max()),
        "validation_users": len(split.validation.users),
        "test_users": len(split.test.users),
        "test_targets": int(split.test.targets.nnz),
    }


def _per_user_frame(
    dataset: Dataset, per_user: dict[str, dict[str, np.ndarray]], splits: list[Split], test_users: np.ndarray
) -> pl.DataFrame:
    """One row per (model, test user[, test period]): the user's external id and every accuracy metric."""
    import numpy as np
    import polars as pl

    user_ids = dataset.user_ids.to_numpy()[test_users].astype(str)
    periods = (
        {"window": np.repeat(np.arange(len(splits)), [len(s.test.users) for s in splits])}
        if len(splits) > 1
        else {}
    )
    return pl.concat(
        [
            pl.DataFrame({"model": name, "user_id": user_ids, **periods, **values})
            for name, values in per_user.items()
        ]
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics (e.g. no list with two items for ild) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
