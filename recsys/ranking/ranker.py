"""LightGBM LambdaRank over blended candidates, grouped by user.

With few user groups (MovieLens under the temporal protocol gives the ranker ~50), boosting from
zero has to rediscover from a handful of labels what one retriever's ranking already says. With
``RankerConfig.try_prior`` the ranker may boost from a **prior**: the ranking of the single source
whose order is best on the training groups (a ``<source>_rank`` feature), as LightGBM's initial
score ``1 / log2(2 + rank)`` (0 where that source did not propose the item), so that the trees only
correct it. Whether to use the prior is decided like the other settings of the search, on the
held-out groups; ``predict`` adds the prior back (LightGBM does not store initial scores) and
``explain`` counts it as part of its feature's contribution.

Saved as a LightGBM text model plus JSON (feature names, importance, chosen parameters): loading
never unpickles. ``explain`` returns each feature's contribution to a candidate's score
(LightGBM's ``pred_contrib``), so the service can say why an item was recommended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import numpy as np

from recsys.candidates.base import check_fitted
from recsys.config import from_dict, to_dict


@dataclass(frozen=True)
class RankerConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    lambdarank_truncation_level: int = 20
    max_rounds: int = 400
    early_stopping_rounds: int = 30
    eval_at: int = 10
    valid_fraction: float = 0.15  # share of user groups held out for early stopping
    # a small search over (num_leaves, learning_rate); the best by held-out NDCG@eval_at wins
    search: tuple[tuple[int, float], ...] = ((31, 0.1), (63, 0.05))
    # also try each search entry boosted from the best single source's ranking (module docstring); off
    # by default: no measured win yet (docs/RESULTS.md, two-stage pipeline, "Ranker prior")
    try_prior: bool = False
    num_threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.max_rounds < 1 or self.eval_at < 1:
            raise ValueError("max_rounds and eval_at must be >= 1")


PRIOR_SUFFIX = "_rank"


def prior_scores(ranks: np.ndarray) -> np.ndarray:
    """Initial scores from a source's ranks (0 = its best item, as in ``candidates.blend``; NaN = not
    proposed): the DCG discount ``1 / log2(2 + rank)``, 0 where the source did not propose the item.

    >>> prior_scores(np.array([0.0, 2.0, np.nan])).tolist()
    [1.0, 0.5, 0.0]
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    proposed = ~np.isnan(ranks)
    out = np.zeros(ranks.shape)
    out[proposed] = 1.0 / np.log2(2.0 + ranks[proposed])
    return out


def ndcg_of_order(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, k: int) -> float:
    """Mean NDCG@k over groups (consecutive rows, sizes ``groups``) when each group is ordered by
    ``scores`` (descending, ties by row), with the evaluation's binary-gain NDCG
    (``evaluation.metrics``); a label > 0 is relevant, and groups without one count 0.

    >>> ndcg_of_order(np.array([0.1, 0.9, 0.5, 0.2]), np.array([0, 1, 1, 0]), np.array([2, 2]), k=1)
    1.0
    """
    import scipy.sparse as sp

    from recsys.evaluation.metrics import accuracy_per_user

    groups = np.asarray(groups, dtype=np.int64)
    group = np.repeat(np.arange(len(groups)), groups)
    position = np.arange(len(group)) - np.concatenate([[0], np.cumsum(groups)[:-1]])[group]
    order = np.lexsort((-np.asarray(scores, dtype=np.float64), group))  # stable: ties keep row order
    width = int(groups.max())
    ranked = np.full((len(groups), width), -1, dtype=np.int64)  # each group's positions, best first
    ranked[group[order], position] = position[order]
    positive = np.asarray(labels) > 0
    relevant = sp.csr_matrix(
        (np.ones(int(positive.sum()), dtype=np.float32), (group[positive], position[positive])),
        shape=(len(groups), width),
    )
    cut = min(k, width)  # a group has no item beyond its width: NDCG@k = NDCG@width
    ndcg = accuracy_per_user(ranked, relevant, ks=[cut])[f"ndcg@{cut}"]
    return float(np.nan_to_num(ndcg).sum() / max(len(groups), 1))


class LambdaRanker:
    """Learning-to-rank over candidate groups (one group per user, label 1 = the held-out item)."""

    def __init__(self, config: RankerConfig | None = None) -> None:
        self.config = config or RankerConfig()
        self.booster_: Any = None
        self.feature_names_: list[str] | None = None
        self.report_: dict[str, Any] | None = None
        self.prior_: str | None = None  # the rank feature boosted from, or None

    def _params(self, num_leaves: int, learning_rate: float) -> dict[str, Any]:
        c = self.config
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [c.eval_at],
            "num_leaves": num_leaves,
            "learning_rate": learning_rate,
            "min_data_in_leaf": c.min_data_in_leaf,
            "feature_fraction": c.feature_fraction,
            "lambdarank_truncation_level": c.lambdarank_truncation_level,
            "num_threads": c.num_threads,
            "seed": c.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def fit(
        self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, feature_names: list[str]
    ) -> Self:
        """Fit on rows ordered by group; ``groups`` holds each group's size (users in row order).

        A random ``valid_fraction`` of groups is held out; each configuration of the search (with and
        without the prior, see the module docstring) stops early on its NDCG@eval_at, and the best one
        is refitted on all groups for its best number of rounds.
        """
        import lightgbm as lgb

        c = self.config
        if features.shape[1] != len(feature_names):
            raise ValueError(f"{features.shape[1]} feature columns but {len(feature_names)} feature names")
        if int(groups.sum()) != len(features) or len(labels) != len(features):
            raise ValueError("groups must sum to the number of rows, and labels must have one per row")
        if len(groups) < 2:
            raise ValueError(
                f"the ranker needs at least 2 user groups with a positive label, got {len(groups)}"
            )
        rng = np.random.default_rng(c.seed)
        n_valid = min(len(groups) - 1, max(1, round(c.valid_fraction * len(groups))))
        valid_group = np.zeros(len(groups), dtype=bool)
        valid_group[rng.choice(len(groups), size=n_valid, replace=False)] = True
        row_valid = np.repeat(valid_group, groups)
        # the prior is chosen on the training groups only, so the held-out ones judge it fairly
        prior_ndcg = (
            self._rank_feature_ndcg(
                features[~row_valid], labels[~row_valid], groups[~valid_group], feature_names
            )
            if c.try_prior
            else {}
        )
        priors: list[str | None] = [None]
        if prior_ndcg:
            priors.append(max(prior_ndcg, key=lambda name: prior_ndcg[name]))
        trials: list[dict[str, Any]] = []
        for prior in priors:
            init = self._init(features, feature_names, prior)
            train = lgb.Dataset(
                features[~row_valid],
                labels[~row_valid],
                group=groups[~valid_group],
                feature_name=feature_names,
                init_score=None if init is None else init[~row_valid],
                free_raw_data=False,
            )
            valid = lgb.Dataset(
                features[row_valid],
                labels[row_valid],
                group=groups[valid_group],
                init_score=None if init is None else init[row_valid],
                reference=train,
            )
            for num_leaves, learning_rate in c.search:
                record: dict[str, Any] = {}
                booster = lgb.train(
                    self._params(num_leaves, learning_rate),
                    train,
                    num_boost_round=c.max_rounds,
                    valid_sets=[valid],
                    valid_names=["valid"],
                    callbacks=[
                        lgb.early_stopping(c.early_stopping_rounds, verbose=False),
                        lgb.record_evaluation(record),
                    ],
                )
                curve = record["valid"][f"ndcg@{c.eval_at}"]
                trials.append(
                    {
                        "prior": prior,
                        "num_leaves": num_leaves,
                        "learning_rate": learning_rate,
                        "best_iteration": int(booster.best_iteration),
                        "valid_ndcg": float(max(curve)),
                    }
                )
        best = max(trials, key=lambda t: t["valid_ndcg"])  # the first of equals: no prior before a prior
        init = self._init(features, feature_names, best["prior"])
        full = lgb.Dataset(features, labels, group=groups, feature_name=feature_names, init_score=init)
        self.prior_ = best["prior"]
        self.booster_ = lgb.train(
            self._params(best["num_leaves"], best["learning_rate"]),
            full,
            num_boost_round=max(1, best["best_iteration"]),
        )
        self.feature_names_ = list(feature_names)
        self.report_ = {
            "prior_ndcg": prior_ndcg,
            "trials": trials,
            "best": best,
            "train_groups": int((~valid_group).sum()),
            "valid_groups": int(valid_group.sum()),
            "rows": len(features),
        }
        return self

    def _rank_feature_ndcg(
        self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray, feature_names: list[str]
    ) -> dict[str, float]:
        """NDCG@eval_at of the order of each ``*_rank`` feature alone (computed only with ``try_prior``)."""
        return {
            name: ndcg_of_order(prior_scores(features[:, j]), labels, groups, k=self.config.eval_at)
            for j, name in enumerate(feature_names)
            if name.endswith(PRIOR_SUFFIX)
        }

    @staticmethod
    def _init(features: np.ndarray, feature_names: list[str], prior: str | None) -> np.ndarray | None:
        return None if prior is None else prior_scores(features[:, feature_names.index(prior)])

    def predict(self, features: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
        """Scores of feature rows; ``num_threads`` overrides the config (a service answering one user
        per request wants 1: its concurrency comes from requests, not from OpenMP)."""
        check_fitted(self, "booster_")
        assert self.feature_names_ is not None
        if features.shape[1] != len(self.feature_names_):
            raise ValueError(
                f"{features.shape[1]} feature columns, but the ranker knows {len(self.feature_names_)}"
            )
        threads = self.config.num_threads if num_threads is None else num_threads
        scores = np.asarray(self.booster_.predict(features, num_threads=threads))
        init = self._init(features, self.feature_names_, self.prior_)
        return (scores if init is None else scores + init).astype(np.float32)

    def explain(self, features: np.ndarray, *, top: int = 5) -> list[list[tuple[str, float]]]:
        """Per row, the ``top`` features by absolute contribution to the score, largest first."""
        check_fitted(self, "booster_")
        assert self.feature_names_ is not None
        contrib = np.asarray(self.booster_.predict(features, pred_contrib=True))[:, :-1]  # last column: bias
        init = self._init(features, self.feature_names_, self.prior_)
        if init is not None:  # the prior is a function of its rank feature: count it there
            assert self.prior_ is not None
            contrib[:, self.feature_names_.index(self.prior_)] += init
        order = np.argsort(-np.abs(contrib), axis=1)[:, :top]
        return [[(self.feature_names_[j], float(contrib[i, j])) for j in row] for i, row in enumerate(order)]

    def feature_importance(self) -> dict[str, float]:
        """Total gain per feature, largest first."""
        check_fitted(self, "booster_")
        assert self.feature_names_ is not None
        gain = self.booster_.feature_importance(importance_type="gain")
        pairs = sorted(zip(self.feature_names_, gain, strict=True), key=lambda p: -p[1])
        return {name: float(g) for name, g in pairs}

    def save(self, path: Path) -> None:
        check_fitted(self, "booster_")
        path.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(path / "model.txt"))
        meta = {
            "config": to_dict(self.config),
            "feature_names": self.feature_names_,
            "prior": self.prior_,
            "report": self.report_,
            "feature_importance_gain": self.feature_importance(),
        }
        (path / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: Path) -> LambdaRanker:
        import lightgbm as lgb

        meta = json.loads((path / "ranker.json").read_text())
        config = from_dict(RankerConfig, meta["config"])
        ranker = cls(replace(config))
        ranker.booster_ = lgb.Booster(model_file=str(path / "model.txt"))
        ranker.feature_names_ = list(meta["feature_names"])
        ranker.report_ = meta["report"]
        ranker.prior_ = meta.get("prior")  # bundles from before the prior have none
        if ranker.prior_ is not None and ranker.prior_ not in ranker.feature_names_:
            raise ValueError(
                f"{path / 'ranker.json'}: prior {ranker.prior_!r} is not one of its feature_names"
            )
        return ranker
