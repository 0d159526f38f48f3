"""What the notebooks call besides :func:`~recsys.experiments.evaluate.evaluate`: a small sample of a
dataset, the quick two-stage configuration, a user's history with titles, and the error analysis of
``notebooks/03_error_analysis.ipynb``.

Error analysis asks where one model loses to another, user by user: :func:`head_to_head` pairs two
models' per-user metrics from :attr:`EvaluationReport.per_user
<recsys.experiments.evaluate.EvaluationReport>`, :func:`history_profiles` describes the history each
test user was ranked from (length, how popular its items are, how concentrated its categories), and
:func:`outcome_profiles` sets the two side by side. :func:`placements` and :func:`explanations` ask a
fitted :class:`~recsys.pipeline.recommender.Recommender` where it put given items and why.

>>> duel = head_to_head(
...     pl.DataFrame({"model": ["a", "a", "b", "b"], "user_id": ["u", "v", "u", "v"],
...                   "ndcg@10": [0.0, 1.0, 0.5, 0.5]}),
...     model="a", reference="b", metric="ndcg@10")
>>> duel.select("user_id", "difference", "outcome").rows()
[('u', -0.5, 'loss'), ('v', 0.5, 'win')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from recsys.config import load_toml
from recsys.data import schema as S
from recsys.data.dataset import Dataset, Interactions
from recsys.data.splits import EvalTask
from recsys.evaluation.slices import POPULARITY_CLASSES, popularity_class
from recsys.pipeline.recommender import Recommender
from recsys.pipeline.two_stage import TwoStageConfig

QUICK_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick.toml"
"""A small two-stage model that fits in seconds on a few hundred users (no text, no sequential source)."""

OUTCOMES = ("loss", "tie", "win")


def quick_config() -> TwoStageConfig:
    """The two-stage configuration of :data:`QUICK_CONFIG`, the notebooks' pipeline.

    >>> quick_config().candidates.sources
    ('als', 'itemknn', 'cooccurrence', 'popularity')
    """
    return load_toml(TwoStageConfig, QUICK_CONFIG)


def sample_users(dataset: Dataset, *, users: int | None, seed: int = 0) -> Dataset:
    """``users`` users drawn at random (seeded) with all their events, and the items they touched, in
    the items table's order; ``None``, or at least as many users as there are: ``dataset`` itself.

    >>> data = Dataset.from_tables(
    ...     pl.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"]}),
    ...     pl.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["c", "a", "b"], "timestamp": [1, 2, 1]}))
    >>> small = sample_users(data, users=1, seed=1)
    >>> small.summary(), small.items.get_column("item_id").to_list()
    ({'users': 1, 'items': 2, 'interactions': 2}, ['a', 'c'])
    """
    if users is None or users >= dataset.n_users:
        return dataset
    if users < 1:
        raise ValueError(f"users must be >= 1 (or None for all of them), got {users}")
    picked = np.random.default_rng(seed).choice(dataset.n_users, size=users, replace=False)
    events = dataset.interactions.filter(pl.col(S.USER_IDX).is_in(picked.tolist()))
    touched = events.get_column(S.ITEM_ID).unique()
    items = dataset.items.filter(pl.col(S.ITEM_ID).is_in(touched.implode()))
    # the events keep their (user, time, file) order, so equal timestamps keep theirs too
    return Dataset.from_tables(items, events.drop(S.USER_IDX, S.ITEM_IDX))


def _user_index(dataset: Dataset, user_id: str) -> int:
    found = np.flatnonzero(dataset.user_ids.to_numpy() == user_id)
    if not len(found):
        raise KeyError(f"unknown user {user_id!r}")
    return int(found[0])


def _described(dataset: Dataset, rows: np.ndarray) -> pl.DataFrame:
    """Item id, title and (where the items table has it) category of item ``rows``, in that order."""
    columns = [c for c in (S.ITEM_ID, S.TITLE, S.CATEGORY) if c in dataset.items.columns]
    described: pl.DataFrame = dataset.items.select(columns)[rows.tolist()]
    return described


def user_history(dataset: Dataset, user_id: str, *, train: Interactions | None = None) -> pl.DataFrame:
    """The user's events in ``train`` (default: every event of ``dataset``), oldest first: item id,
    title, category (where the items table has one) and timestamp. KeyError for an unknown user."""
    data = dataset.to_interactions() if train is None else train
    history = data.histories(np.array([_user_index(dataset, user_id)]))
    return _described(dataset, history.items).with_columns(pl.Series(S.TIMESTAMP, history.timestamps))


def user_targets(dataset: Dataset, task: EvalTask, user_id: str) -> pl.DataFrame:
    """The items ``task`` holds out for the user (what a list is judged on): item id, title, category.
    KeyError if the user is not one of the task's test users."""
    row = np.flatnonzero(task.users == _user_index(dataset, user_id))
    if not len(row):
        raise KeyError(f"user {user_id!r} is not a test user of the {task.name} task")
    return _described(dataset, task.targets[int(row[0])].indices)


def best_model(models: Mapping[str, Mapping[str, float]], *, metric: str, among: Sequence[str]) -> str:
    """The model of ``among`` with the highest ``metric`` (``EvaluationReport.models``).

    >>> best_model({"a": {"ndcg@10": 0.1}, "b": {"ndcg@10": 0.3}, "c": {"ndcg@10": 0.9}},
    ...            metric="ndcg@10", among=["a", "b"])
    'b'
    """
    missing = [name for name in among if name not in models]
    if missing or not among:
        raise ValueError(f"models {missing or 'none'} not evaluated; evaluated: {sorted(models)}")
    return max(among, key=lambda name: models[name][metric])


def head_to_head(per_user: pl.DataFrame, *, model: str, reference: str, metric: str) -> pl.DataFrame:
    """Every test row's ``metric`` under ``model`` and under ``reference`` (columns named after them),
    ``difference`` = model - reference, and the ``outcome`` for ``model`` (loss, tie, win); the largest
    losses first. ``per_user`` is :attr:`EvaluationReport.per_user` (rows: users, or (user, window))."""
    names = set(per_user.get_column("model").unique().to_list())
    unknown = [name for name in (model, reference) if name not in names]
    if unknown or model == reference:
        raise ValueError(
            f"need two different evaluated models, got {model!r}, {reference!r} of {sorted(names)}"
        )
    if metric not in per_user.columns:
        raise ValueError(f"no per-user {metric!r}; per_user has {per_user.columns[2:]}")
    keys = [c for c in (S.USER_ID, "window") if c in per_user.columns]

    def scores(name: str) -> pl.DataFrame:
        return per_user.filter(pl.col("model") == name).select(*keys, pl.col(metric).alias(name))

    difference = pl.col(model) - pl.col(reference)
    return (
        scores(model)
        .join(scores(reference), on=keys)
        .with_columns(difference.alias("difference"))
        .with_columns(
            pl.when(difference < 0).then(pl.lit("loss")).when(difference > 0).then(pl.lit("win"))
            .otherwise(pl.lit("tie")).alias("outcome")
        )
        .sort("difference", *keys)
    )  # fmt: skip


def history_profiles(dataset: Dataset, task: EvalTask) -> pl.DataFrame:
    """One row per test user of ``task``, describing the history it was ranked from (its training
    events): ``history_length``; ``mean_popularity``, the mean training interactions of its items;
    ``head``, ``torso``, ``tail``, the shares of its events on items of each popularity class
    (:func:`recsys.evaluation.slices.popularity_class`, as the popularity slices use); and, where
    the items have a category, ``categories`` (distinct), ``top_category`` and its share."""
    histories = task.train.histories(task.users)
    counts = task.train.item_counts()
    row = np.repeat(np.arange(len(task.users)), histories.lengths())
    events = pl.DataFrame(
        {
            "row": row,
            "popularity": counts[histories.items],
            "class": popularity_class(counts)[histories.items],
            S.ITEM_IDX: histories.items,
        }
    )
    shares = [(pl.col("class") == j).mean().alias(name) for j, name in enumerate(POPULARITY_CLASSES)]
    summary = events.group_by("row").agg(
        pl.len().alias("history_length"), pl.col("popularity").mean().alias("mean_popularity"), *shares
    )
    users = pl.DataFrame(
        {"row": np.arange(len(task.users)), S.USER_ID: dataset.user_ids.to_numpy()[task.users].astype(str)}
    )
    out = users.join(summary, on="row", how="left").with_columns(pl.col("history_length").fill_null(0))
    if S.CATEGORY in dataset.items.columns:
        out = out.join(_categories(dataset, events), on="row", how="left")
    return out.sort("row").drop("row")


def _categories(dataset: Dataset, events: pl.DataFrame) -> pl.DataFrame:
    """Per history row: distinct categories, the most frequent one (ties: alphabetical) and its share."""
    category = dataset.items.get_column(S.CATEGORY)
    labelled = events.select("row", pl.Series(S.CATEGORY, category.to_numpy()[events.get_column(S.ITEM_IDX)]))
    per = labelled.drop_nulls().group_by("row", S.CATEGORY).len()
    top = per.sort("row", "len", S.CATEGORY, descending=[False, True, False]).group_by("row").first()
    sizes = labelled.group_by("row").len().rename({"len": "events"})
    return (
        top.join(per.group_by("row").len().rename({"len": "categories"}), on="row")
        .join(sizes, on="row")
        .select(
            "row",
            "categories",
            pl.col(S.CATEGORY).alias("top_category"),
            (pl.col("len") / pl.col("events")).alias("top_category_share"),
        )
    )


def outcome_profiles(duel: pl.DataFrame, profiles: pl.DataFrame) -> pl.DataFrame:
    """:func:`head_to_head` rows joined with their :func:`history_profiles`, summarised per outcome:
    the users, the median history length and popularity, and the mean shares."""
    numeric = [c for c in ("head", "torso", "tail", "top_category_share") if c in profiles.columns]
    joined = duel.join(profiles, on=S.USER_ID, how="inner")
    return (
        joined.group_by("outcome")
        .agg(
            pl.len().alias("users"),
            pl.col("difference").mean().alias("mean_difference"),
            pl.col("history_length").median().alias("median_history_length"),
            pl.col("mean_popularity").median().alias("median_popularity"),
            *(pl.col(c).mean() for c in numeric),
        )
        .sort(pl.col("outcome").replace_strict({o: j for j, o in enumerate(OUTCOMES)}, default=len(OUTCOMES)))
    )


def placements(
    recommender: Recommender, history: Sequence[str], item_ids: Sequence[str], *, depth: int = 100
) -> pl.DataFrame:
    """Where ``recommender`` ranks each of ``item_ids`` for ``history`` (1-based, null when outside its
    top ``depth``), with its title and the candidate sources that proposed it."""
    ranked = recommender.recommend(history, n=depth)
    where = {r.item_id: (rank, r) for rank, r in enumerate(ranked, start=1)}
    found = pl.DataFrame(
        {
            S.ITEM_ID: list(item_ids),
            "rank": [where[i][0] if i in where else None for i in item_ids],
            "sources": [", ".join(where[i][1].sources) if i in where else None for i in item_ids],
        },
        schema={S.ITEM_ID: pl.String, "rank": pl.Int64, "sources": pl.String},
    )
    titles = recommender.model.items.select(S.ITEM_ID, S.TITLE)
    return found.join(titles, on=S.ITEM_ID, how="left", maintain_order="left").select(
        S.ITEM_ID, S.TITLE, "rank", "sources"
    )


def explanations(
    recommender: Recommender, history: Sequence[str], item_ids: Sequence[str], *, top: int = 6
) -> pl.DataFrame:
    """The ranker's ``top`` feature contributions to each of ``item_ids`` for ``history``
    (:meth:`Recommender.explain`), side by side: one row per feature named by any of them, one column
    per item (null where that feature is not among the item's ``top``), largest magnitude first."""
    found = {item: dict(recommender.explain(history, item, top=top)) for item in item_ids}
    features = list(dict.fromkeys(f for contributions in found.values() for f in contributions))
    table = pl.DataFrame(
        {"feature": features, **{item: [found[item].get(f) for f in features] for item in item_ids}},
        schema={"feature": pl.String, **dict.fromkeys(item_ids, pl.Float64)},
    )
    largest = pl.max_horizontal(pl.col(list(item_ids)).abs())
    return table.sort(largest, descending=True, nulls_last=True)
