"""Rolling temporal labels of the two-stage ranker: windows, config checks, and no leakage.

The leakage test plants events (changes their items, keeping every timestamp, so the window
boundaries stay put) at and after each label window's start, and checks that the generators' first
fit and the features of that window and every earlier one do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from recsys.candidates import base
from recsys.candidates.als import ALSConfig
from recsys.candidates.base import CandidateGenerator
from recsys.data import schema as S
from recsys.data.dataset import Dataset, Interactions
from recsys.data.loading import bundled_paths, load_dataset
from recsys.data.splits import leave_last_out, make_split
from recsys.pipeline import two_stage as T
from recsys.ranking.dataset import CHUNK_USERS, CandidateRows, RankerRows, label_tasks, sample_negatives
from recsys.ranking.ranker import LambdaRanker, RankerConfig

WINDOWS = 3
FRACTION = 0.08


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """The first 60 users of the bundled MovieLens sample (clock-time timestamps) and their items."""
    full = load_dataset(*bundled_paths())
    interactions = full.interactions.drop(S.USER_IDX, S.ITEM_IDX)
    users = interactions.get_column(S.USER_ID).unique(maintain_order=True).head(60)
    interactions = interactions.filter(pl.col(S.USER_ID).is_in(users.implode()))
    items = full.items.filter(pl.col(S.ITEM_ID).is_in(interactions.get_column(S.ITEM_ID).implode()))
    return Dataset.from_tables(items, interactions)


def _config(windows: int = WINDOWS, **changes: Any) -> T.TwoStageConfig:
    base = T.TwoStageConfig(label_protocol="temporal", label_fraction=FRACTION, label_windows=windows)
    candidates = replace(
        base.candidates,
        # every source but the (slow, torch) sequential one; ALS on one thread is deterministic
        sources=("als", "itemknn", "cooccurrence", "text", "popularity"),
        per_source=30,
        total=60,
        als=ALSConfig(factors=8, iterations=3, num_threads=1),
    )
    ranker = RankerConfig(search=((7, 0.1),), max_rounds=20, min_data_in_leaf=2, bags=1, num_threads=1)
    return replace(base, candidates=candidates, ranker=ranker, **changes)


def _embeddings(n_items: int) -> np.ndarray:
    e = np.random.default_rng(0).normal(size=(n_items, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return e


def _with_items(data: Interactions, items: np.ndarray) -> Interactions:
    return Interactions(data.n_users, data.n_items, data.users, items, data.timestamps, data.weights)


def test_one_window_is_the_inner_temporal_split_and_leave_last_out_is_unchanged(dataset: Dataset) -> None:
    data = dataset.to_interactions()
    (task,) = label_tasks(data, "temporal", fraction=0.1, windows=1)
    expected = make_split(data, "temporal", test_fraction=0.1).test
    np.testing.assert_array_equal(task.users, expected.users)
    assert (task.targets != expected.targets).nnz == 0
    np.testing.assert_array_equal(task.train.timestamps, expected.train.timestamps)
    (llo,) = label_tasks(data, "leave-last-out", fraction=0.3)  # fraction has no say there
    expected = leave_last_out(data).test
    np.testing.assert_array_equal(llo.users, expected.users)
    assert (llo.targets != expected.targets).nnz == 0
    assert len(llo.train) == len(expected.train)


def test_windows_are_consecutive_and_hold_their_targets(dataset: Dataset) -> None:
    data = dataset.to_interactions()
    tasks = label_tasks(data, "temporal", fraction=FRACTION, windows=WINDOWS)
    assert len(tasks) == WINDOWS
    starts = [int(t.train.timestamps.max()) for t in tasks]
    assert starts == sorted(starts) and len(set(starts)) == WINDOWS
    ts = data.timestamps
    bounds = [int(np.quantile(ts, 1 - k * FRACTION, method="higher")) for k in range(WINDOWS, 0, -1)]
    for task, start, stop in zip(tasks, bounds, [*bounds[1:], int(ts.max()) + 1], strict=True):
        assert len(task.train) == int((ts < start).sum())  # every event before the start, no other
        # each target is an event of the window, of an item the user had not seen before it
        window = (ts >= start) & (ts < stop)
        for row, user in enumerate(task.users):
            targets = set(task.targets[row].indices.tolist())
            in_window = set(data.items[window & (data.users == user)].tolist())
            seen = set(task.train.items[task.train.users == user].tolist())
            assert targets and targets == in_window - seen


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"label_windows": 0}, "label_windows must be >= 1"),
        ({"label_windows": True}, "label_windows must be an integer"),
        ({"label_windows": 2, "label_protocol": "leave-last-out"}, "needs label_protocol 'temporal'"),
        ({"label_windows": 5, "label_fraction": 0.2}, "label_windows x label_fraction must be < 1"),
        ({"label_fraction": 0.0}, "label_fraction must be in"),
        ({"window_refit": ("populrity",)}, "window_refit: unknown candidate source 'populrity'"),
    ],
)
def test_bad_label_window_settings_name_the_parameter(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        T.TwoStageConfig(**{"label_protocol": "temporal", **changes})


def test_too_many_windows_for_the_timestamps_is_a_clear_error() -> None:
    data = Interactions.from_arrays(
        np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]), n_users=2, n_items=2, timestamps=np.full(4, 5)
    )
    with pytest.raises(ValueError, match="no events to fit the candidate generators on"):
        label_tasks(data, "temporal", fraction=0.2, windows=3)


class _Recorder(T.TwoStage):
    """Records, through its public seams, what ``fit`` fits each source on and the ranker's rows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fits: list[tuple[str, int, int]] = []  # (source, events, last timestamp)
        self.rows: list[RankerRows] = []
        self.features: list[list[np.ndarray]] = []  # per featuriser (label window): each chunk's X

    def fit_source(self, name: str, data: Interactions) -> CandidateGenerator:
        self.fits.append((name, len(data), int(data.timestamps.max())))
        return super().fit_source(name, data)

    def ranker_rows(self, data: Interactions, *, chunk_users: int = CHUNK_USERS) -> RankerRows:
        self.rows.append(super().ranker_rows(data, chunk_users=chunk_users))
        return self.rows[-1]

    def featuriser(
        self, generators: Mapping[str, CandidateGenerator], data: Interactions
    ) -> Callable[[np.ndarray], CandidateRows]:
        featurise, chunks = super().featuriser(generators, data), []
        self.features.append(chunks)

        def recorded(users: np.ndarray) -> CandidateRows:
            found = featurise(users)
            chunks.append(found.X)
            return found

        return recorded

    def window_features(self) -> list[np.ndarray]:
        """Every candidate row's features (kept or not) of each label window, in row order."""
        return [np.concatenate(chunks) for chunks in self.features]

    def fit_calls(self) -> list[tuple[tuple[str, ...], int, int]]:
        """Consecutive fits on the same events as one call: (sources, events, last timestamp)."""
        calls: list[tuple[tuple[str, ...], int, int]] = []
        for name, events, last in self.fits:
            if calls and calls[-1][1:] == (events, last):
                calls[-1] = ((*calls[-1][0], name), events, last)
            else:
                calls.append(((name,), events, last))
        return calls


def _fit(
    dataset: Dataset, data: Interactions
) -> tuple[list[tuple[tuple[str, ...], int, int]], RankerRows, list[np.ndarray]]:
    model = _Recorder(_config(), items=dataset.items, item_embeddings=_embeddings(dataset.n_items)).fit(data)
    (rows,) = model.rows
    assert model.ranker_ is not None and model.ranker_.report_ is not None
    assert model.ranker_.report_["rows"] == len(rows.X) > 0  # the kept rows reach the ranker
    return model.fit_calls(), rows, model.window_features()


def test_no_label_window_event_reaches_the_generators_or_that_windows_features(dataset: Dataset) -> None:
    data = dataset.to_interactions()
    tasks = label_tasks(data, "temporal", fraction=FRACTION, windows=WINDOWS)
    starts = [int(np.quantile(data.timestamps, 1 - k * FRACTION, method="higher")) for k in (3, 2, 1)]
    calls, clean, clean_features = _fit(dataset, data)

    # generators: fitted once before the earliest window, then the window_refit sources at each later
    # start, then every source on all the data (the served model)
    sources = _config().candidates.sources
    assert calls[0] == (sources, len(tasks[0].train), int(tasks[0].train.timestamps.max()))
    assert calls[0][2] < starts[0]
    assert [c[0] for c in calls[1:-1]] == [_config().window_refit] * (WINDOWS - 1)
    for (_, _, last), start in zip(calls[1:-1], starts[1:], strict=True):
        assert last < start
    assert calls[-1] == (sources, len(data), int(data.timestamps.max()))
    groups = [window["users"] for window in clean.report["label_windows"]]
    assert len(groups) == WINDOWS and sum(groups) > max(groups)  # more groups than any one window
    assert len(clean.X) < clean.report["candidate_rows"] == sum(map(len, clean_features))  # sampled

    rng = np.random.default_rng(1)
    for k, start in enumerate(starts):
        # plant: every event at or after window k's start gets another (random) item
        planted_items = data.items.copy()
        late = data.timestamps >= start
        planted_items[late] = rng.integers(0, data.n_items, size=int(late.sum()))
        assert (planted_items != data.items).any()
        planted_calls, planted, planted_features = _fit(dataset, _with_items(data, planted_items))
        assert planted_calls[0] == calls[0]
        for j in range(k + 1):  # window k and every earlier one: the same features, nothing leaks
            np.testing.assert_array_equal(clean_features[j], planted_features[j])
            a, b = clean.window == j, planted.window == j
            if j < k:  # earlier windows end before the planted events start: the same labels and rows
                np.testing.assert_array_equal(clean.labels[a], planted.labels[b])
                np.testing.assert_array_equal(clean.group[a], planted.group[b])
                np.testing.assert_array_equal(clean.X[a], planted.X[b])
        # the planted events are window k's labels: the labels (not the features) see them
        a, b = clean.window == k, planted.window == k
        assert not np.array_equal(clean.labels[a], planted.labels[b])


def _order_index(dataset: Dataset) -> Dataset:
    """The same events with each user's timestamps replaced by their order (0, 1, 2, ...)."""
    steps = (pl.col(S.TIMESTAMP).rank("ordinal").over(S.USER_ID) - 1).cast(pl.Int64)
    return Dataset.from_tables(dataset.items, dataset.interactions.with_columns(steps))


def _retrain_model(folder: Path, interactions: pl.DataFrame, *, model_table: str = "") -> T.TwoStageConfig:
    """The model `recsys retrain --config` fits on ``interactions``: its TOML read as the CLI reads it
    (``load_retrain_config``), resolved as the job resolves it (``RetrainConfig.pipeline_for``)."""
    from recsys.pipeline.retrain_config import load_retrain_config

    path = folder / "retrain.toml"
    path.write_text(f'data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\n{model_table}')
    return load_retrain_config(path).pipeline_for(interactions)


@pytest.mark.parametrize("time", ["clock time", "order index"])
def test_train_retrain_and_evaluate_fit_the_same_model_on_the_same_data(
    dataset: Dataset, time: str, tmp_path: Path
) -> None:
    """`recsys train` (no config), `recsys retrain` and `recsys evaluate --models pipeline` all take
    their model from ``recsys.pipeline.defaults.pipeline_config_for``; a `[model]` table in `recsys
    train --config` and a `[train.model]` table in the nightly job's config are laid over it alike."""
    from recsys.experiments.models import MODELS, EvalContext
    from recsys.pipeline.train import TrainConfig, train_config_for

    data = dataset if time == "clock time" else _order_index(dataset)
    table = data.interactions.drop(S.USER_IDX, S.ITEM_IDX)
    trained = train_config_for(table).model  # `recsys train` without --config
    default = TrainConfig().for_data(table).model  # `train_bundle` given the default TrainConfig
    retrained = _retrain_model(tmp_path, table)  # `recsys retrain` with the three keys alone
    (evaluated,) = MODELS["pipeline"].grid(EvalContext(dataset=data))
    assert trained == default == retrained == evaluated
    # one override: the rest stays the data's, in both commands (the windows up to 365 days on clock
    # time are not FeatureConfig's static default, so a table read as a whole model would lose them)
    override = {"ranker": {"bags": 2}, "candidates": {"per_source": 40}}
    toml = "[train.model.ranker]\nbags = 2\n[train.model.candidates]\nper_source = 40\n"
    trained = train_config_for(table, table={"model": override}).model
    retrained = _retrain_model(tmp_path, table, model_table=toml)
    assert trained == retrained != evaluated
    assert retrained.ranker.bags == 2 and retrained.candidates.per_source == 40
    assert (retrained.label_protocol, retrained.features.windows) == (
        evaluated.label_protocol,
        evaluated.features.windows,
    )
    assert evaluated is not None
    if time == "clock time":
        assert (evaluated.label_protocol, evaluated.label_windows, evaluated.label_fraction) == (
            "temporal",
            3,
            0.1,
        )
        assert evaluated.features.windows == (1, 7, 30, 90, 365)
    else:
        assert (evaluated.label_protocol, evaluated.label_windows) == ("leave-last-out", 1)
        assert evaluated.features.windows == (1, 7, 30)


def test_the_demo_changes_only_budgets_of_the_model_the_others_fit(dataset: Dataset) -> None:
    """`make demo` keeps every data-derived setting and changes only what makes it fast."""
    from recsys.cli.train import DEMO_CONFIG
    from recsys.config import read_toml
    from recsys.pipeline.train import train_config_for

    table = dataset.interactions.drop(S.USER_IDX, S.ITEM_IDX)
    demo = train_config_for(table, table=read_toml(DEMO_CONFIG)).model
    default = train_config_for(table).model
    assert demo is not None and default is not None
    assert demo.candidates.sequential.max_epochs == 1 and demo.ranker.search == ((31, 0.1),)
    fast = replace(
        default,
        candidates=replace(
            default.candidates, sequential=replace(default.candidates.sequential, max_epochs=1)
        ),
        ranker=replace(default.ranker, search=((31, 0.1),)),
    )
    assert demo == fast


def _unchunked_rows(model: T.TwoStage, data: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, labels, group)`` kept as the rows were built before chunking (the reference): every user
    of every window featurised at once, then one draw over all the windows' rows."""
    labels = model.config.labels
    tasks = label_tasks(data, labels.protocol, fraction=labels.fraction, windows=labels.windows)
    generators = {name: model.fit_source(name, tasks[0].train) for name in model.config.candidates.sources}
    X, y, group = [], [], []
    for i, task in enumerate(tasks):
        if i > 0:
            generators |= {
                name: model.fit_source(name, task.train) for name in labels.refit if name in generators
            }
        found = model.featuriser(generators, task.train)(task.users)
        ids = found.candidates.ids[found.rows, found.cols]
        y.append(np.asarray(task.targets[found.rows, ids]).ravel().astype(np.float32))
        X.append(found.X)
        group.append(found.rows + sum(len(t.users) for t in tasks[:i]))
    all_X, all_y, all_group = (np.concatenate(parts) for parts in (X, y, group))
    has_label = np.bincount(all_group[all_y > 0], minlength=int(all_group.max()) + 1) > 0
    rng = np.random.default_rng(labels.seed)
    keep = has_label[all_group] & sample_negatives(all_group, all_y, labels.negatives, rng=rng)
    return all_X[keep], all_y[keep], all_group[keep]


@pytest.mark.parametrize("chunk_users", [2, 4])
def test_chunked_rows_and_their_booster_are_those_of_featurising_every_user_at_once(
    dataset: Dataset, chunk_users: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks that are multiples of the sources' scoring block (2 rows here, as ``BLOCK_ROWS`` is in
    ``CHUNK_USERS``) keep every bit; the reference scores each window's users in blocks of 2 too."""
    data = dataset.to_interactions()
    monkeypatch.setattr(base, "BLOCK_CELLS", 3 * data.n_items)
    assert base.block_rows(data.n_items) == 2 and CHUNK_USERS % base.BLOCK_ROWS == 0
    model = T.TwoStage(_config(), items=dataset.items, item_embeddings=_embeddings(dataset.n_items))
    rows = model.ranker_rows(data, chunk_users=chunk_users)
    assert max(w["users"] for w in rows.report["label_windows"]) > chunk_users  # several chunks
    X, labels, group = _unchunked_rows(model, data)
    assert len(X) < rows.report["candidate_rows"]  # negatives were sampled
    np.testing.assert_array_equal(rows.X, X)
    np.testing.assert_array_equal(rows.labels, labels)
    np.testing.assert_array_equal(rows.group, group)
    sizes = np.bincount(group)
    chunked = LambdaRanker(model.config.ranker).fit(*rows.training_set(), feature_names=rows.feature_names)
    reference = LambdaRanker(model.config.ranker).fit(
        X, labels, sizes[sizes > 0], feature_names=rows.feature_names
    )
    np.testing.assert_array_equal(chunked.predict(X), reference.predict(X))
