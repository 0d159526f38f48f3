"""LightGBM LambdaRank over blended candidates, grouped by user.

With few user groups (MovieLens under the temporal protocol gives the ranker ~50), boosting from
zero has to rediscover from a handful of labels what one retriever's ranking already says. With
``RankerConfig.try_prior`` the ranker may boost from a **prior**: the ranking of the single source
whose order is best on the training groups (a ``<source>_rank`` feature), as LightGBM's initial
score ``1 / log2(2 + rank)`` (0 where that source did not propose the item), so that the trees only
correct it. Whether to use the prior is decided like the other settings of the search, on the
held-out groups; ``predict`` adds the prior back (LightGBM does not store initial scores) and
``explain`` counts it as part of its feature's contribution.

With ``RankerConfig.bags`` > 1 the ranker is a **bag**: each booster holds out its own random groups
(seed ``seed + b``), runs the search and early stopping on them and is refitted on all groups; the
score is the mean of the boosters' scores. Which groups are held out moves the chosen setting and
number of rounds a lot (9 to 88 rounds across seeds on amazon), and the bag's mean scored above every
single booster on each fit measured (docs/studies/ranker_bag.md).

With ``fit(..., network=...)`` the process is one worker of a distributed LightGBM run (Ray Train's
LightGBM trainer): it trains on its whole user groups and scores every held-out group, so that early
stopping, decided on the same model and the same groups, stops every worker at the same round
(``recsys.ranking.distributed``).

Saved as LightGBM text models plus JSON (feature names, importance, chosen parameters): loading
never unpickles. ``explain`` returns each feature's contribution to a candidate's score
(LightGBM's ``pred_contrib``), so the service can say why an item was recommended.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from recsys.candidates.base import check_fitted
from recsys.config import from_dict, to_dict
from recsys.ranking.distributed import Worker

if TYPE_CHECKING:
    from recsys.ranking.compiled import CompiledBag


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
    # by default: no measured win yet (docs/RESULTS.md, "Tried and not adopted")
    try_prior: bool = False
    # boosters averaged, each searched and early-stopped on its own held-out groups (module docstring)
    bags: int = 5
    num_threads: int = 2  # fixed, not "all cores": the same on every machine
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bags < 1:
            raise ValueError(f"bags must be >= 1, got {self.bags}")
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
        self.boosters_: list[Any] | None = None
        self.priors_: list[str | None] | None = None  # per booster, the rank feature boosted from
        self.feature_names_: list[str] | None = None
        self.report_: dict[str, Any] | None = None
        self._worker = Worker()  # this process's part in a distributed fit (the whole fit by default)
        self.compiled_: CompiledBag | None = None  # set by compile(): predict's fast path

    def _params(self, num_leaves: int, learning_rate: float, seed: int) -> dict[str, Any]:
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
            # bit-for-bit repeats at a seed: a fixed thread count, LightGBM's deterministic mode, and
            # the histogram layout forced (LightGBM would otherwise choose it by timing both, and
            # its docs ask for one forced with deterministic); tests/test_reproducible.py holds it
            "num_threads": c.num_threads,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
            **self._worker.params(),
        }

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        *,
        feature_names: list[str],
        network: Mapping[str, Any] | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> Self:
        """Fit on rows ordered by group; ``groups`` holds each group's size (users in row order).

        Per booster of the bag, a random ``valid_fraction`` of groups is held out; each configuration
        of the search (with and without the prior, see the module docstring) stops early on its
        NDCG@eval_at, and the best one is refitted on all groups for its best number of rounds.
        ``network`` (LightGBM's ``machines``, ``num_machines``, ...) and ``shard`` (``rank, world``)
        make this process one worker of a distributed run (module docstring); every worker is given
        all rows and gets the same model.
        """
        if features.shape[1] != len(feature_names):
            raise ValueError(f"{features.shape[1]} feature columns but {len(feature_names)} feature names")
        if int(groups.sum()) != len(features) or len(labels) != len(features):
            raise ValueError("groups must sum to the number of rows, and labels must have one per row")
        if len(groups) < 2:
            raise ValueError(
                f"the ranker needs at least 2 user groups with a positive label, got {len(groups)}"
            )
        self._worker = Worker(dict(network or {}), rank=shard[0], world=shard[1])
        fits = [
            self._fit_one(features, labels, groups, feature_names, seed=self.config.seed + b)
            for b in range(self.config.bags)
        ]
        self.boosters_ = [booster for booster, _, _ in fits]
        self.priors_ = [prior for _, prior, _ in fits]
        self.feature_names_ = list(feature_names)
        self.report_ = {"rows": len(features), "workers": shard[1], "bags": [report for _, _, report in fits]}
        return self

    def _fit_one(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        feature_names: list[str],
        *,
        seed: int,
    ) -> tuple[Any, str | None, dict[str, Any]]:
        """One booster of the bag: its held-out groups, search and refit; returns it, its prior and
        its report."""
        import lightgbm as lgb

        c = self.config
        rng = np.random.default_rng(seed)
        n_valid = min(len(groups) - 1, max(1, round(c.valid_fraction * len(groups))))
        valid_group = np.zeros(len(groups), dtype=bool)
        valid_group[rng.choice(len(groups), size=n_valid, replace=False)] = True
        row_valid = np.repeat(valid_group, groups)
        train_group = self._worker.share(~valid_group)  # every worker scores all held-out groups
        row_train = np.repeat(train_group, groups)
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
        bins = self._worker.bins(
            features, ~row_valid, feature_names, min_data_in_leaf=c.min_data_in_leaf, seed=seed
        )
        for prior in priors:
            init = self._init(features, feature_names, prior)
            train = lgb.Dataset(
                features[row_train],
                labels[row_train],
                group=groups[train_group],
                feature_name=feature_names,
                init_score=None if init is None else init[row_train],
                free_raw_data=False,
                reference=bins,
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
                    self._params(num_leaves, learning_rate, seed),
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
                        "rounds": len(curve),
                        # early stopping: no gain on the held-out groups for early_stopping_rounds
                        "stop_reason": "early_stopping" if len(curve) < c.max_rounds else "max_rounds",
                    }
                )
        best = max(trials, key=lambda t: t["valid_ndcg"])  # the first of equals: no prior before a prior
        booster = self._refit(features, labels, groups, feature_names, best=best, seed=seed)
        report = {
            "seed": seed,
            "prior_ndcg": prior_ndcg,
            "trials": trials,
            "best": best,
            "train_groups": int((~valid_group).sum()),
            "valid_groups": int(valid_group.sum()),
        }
        return booster, best["prior"], report

    def _refit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        feature_names: list[str],
        *,
        best: dict[str, Any],
        seed: int,
    ) -> Any:
        """The ``best`` trial's setting refitted on all (this worker's) groups for its best rounds."""
        import lightgbm as lgb

        init = self._init(features, feature_names, best["prior"])
        my_groups = self._worker.share(np.ones(len(groups), dtype=bool))
        mine = np.repeat(my_groups, groups)
        full = lgb.Dataset(
            features[mine],
            labels[mine],
            group=groups[my_groups],
            feature_name=feature_names,
            init_score=None if init is None else init[mine],
            reference=self._worker.bins(
                features,
                np.ones(len(features), dtype=bool),
                feature_names,
                min_data_in_leaf=self.config.min_data_in_leaf,
                seed=seed,
            ),
        )
        params = self._params(best["num_leaves"], best["learning_rate"], seed)
        return lgb.train(params, full, num_boost_round=max(1, best["best_iteration"]))

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

    def _checked(self, features: np.ndarray) -> tuple[list[Any], list[str | None], list[str]]:
        check_fitted(self, "boosters_")
        assert self.boosters_ is not None and self.priors_ is not None and self.feature_names_ is not None
        if features.shape[1] != len(self.feature_names_):
            raise ValueError(
                f"{features.shape[1]} feature columns, but the ranker knows {len(self.feature_names_)}"
            )
        return self.boosters_, self.priors_, self.feature_names_

    def predict(self, features: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
        """Scores of feature rows: the mean over the bag; ``num_threads`` overrides the config (a
        service answering one user per request wants 1: its concurrency comes from requests, not from
        OpenMP)."""
        boosters, priors, names = self._checked(features)
        if self.compiled_ is not None:
            return self.compiled_.predict(features)
        threads = self.config.num_threads if num_threads is None else num_threads
        total = np.zeros(len(features))
        for booster, prior in zip(boosters, priors, strict=True):
            total += booster.predict(features, num_threads=threads)
            if prior is not None:
                total += prior_scores(features[:, names.index(prior)])
        return (total / len(boosters)).astype(np.float32)

    def compile(self) -> bool:
        """Compile the bag for ``predict`` (``recsys.ranking.compiled``: lleaves, in this process);
        False, and ``predict`` stays on LightGBM, where the bag cannot be compiled."""
        from recsys.ranking.compiled import compile_bag

        boosters, priors, _ = self._checked(np.zeros((0, len(self.feature_names_ or []))))
        self.compiled_ = compile_bag(boosters, priors)
        return self.compiled_ is not None

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """(n, n_features + 1): each feature's contribution to each row's score, and the bias last;
        a row sums to its score. The mean of the bag's LightGBM ``pred_contrib``, with a booster's
        prior counted in its rank feature (the prior is a function of it)."""
        boosters, priors, names = self._checked(features)
        total = np.zeros((len(features), len(names) + 1))
        for booster, prior in zip(boosters, priors, strict=True):
            total += np.asarray(booster.predict(features, pred_contrib=True))
            if prior is not None:
                column = names.index(prior)
                total[:, column] += prior_scores(features[:, column])
        return total / len(boosters)

    def explain(self, features: np.ndarray, *, top: int = 5) -> list[list[tuple[str, float]]]:
        """Per row, the ``top`` features by absolute contribution to the score, largest first."""
        contrib = self.contributions(features)[:, :-1]  # the last column is the bias
        assert self.feature_names_ is not None
        order = np.argsort(-np.abs(contrib), axis=1)[:, :top]
        return [[(self.feature_names_[j], float(contrib[i, j])) for j in row] for i, row in enumerate(order)]

    def feature_importance(self) -> dict[str, float]:
        """Total gain per feature over the bag, largest first."""
        check_fitted(self, "boosters_")
        assert self.boosters_ is not None and self.feature_names_ is not None
        gain = np.sum([b.feature_importance(importance_type="gain") for b in self.boosters_], axis=0)
        pairs = sorted(zip(self.feature_names_, gain, strict=True), key=lambda p: -p[1])
        return {name: float(g) for name, g in pairs}

    def save(self, path: Path) -> None:
        check_fitted(self, "boosters_")
        assert self.boosters_ is not None
        path.mkdir(parents=True, exist_ok=True)
        files = [f"model_{b}.txt" for b in range(len(self.boosters_))]
        for booster, file in zip(self.boosters_, files, strict=True):
            booster.save_model(str(path / file))
        meta = {
            "config": to_dict(self.config),
            "feature_names": self.feature_names_,
            "models": files,
            "priors": self.priors_,
            "report": self.report_,
            "feature_importance_gain": self.feature_importance(),
        }
        (path / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: Path) -> LambdaRanker:
        import lightgbm as lgb

        meta_path = path / "ranker.json"
        meta = json.loads(meta_path.read_text())
        # rankers from before the bag hold one "model.txt" and one "prior" (absent before the prior)
        files = meta.get("models", ["model.txt"])
        priors = meta.get("priors", [meta.get("prior")])
        if len(priors) != len(files):
            raise ValueError(f"{meta_path}: {len(files)} models but {len(priors)} priors")
        ranker = cls(replace(from_dict(RankerConfig, meta["config"]), bags=len(files)))
        ranker.feature_names_ = list(meta["feature_names"])
        for prior in priors:
            if prior is not None and prior not in ranker.feature_names_:
                raise ValueError(f"{meta_path}: prior {prior!r} is not one of its feature_names")
        ranker.boosters_ = [lgb.Booster(model_file=str(path / file)) for file in files]
        ranker.priors_ = list(priors)
        ranker.report_ = meta["report"]
        return ranker


# fit_ranker(config, features, labels, groups, feature_names): a fitted ranker, here (below) or on a
# cluster (the Ray engine's, ``recsys.pipeline.ray_train``)
FitRanker = Callable[[RankerConfig, np.ndarray, np.ndarray, np.ndarray, list[str]], LambdaRanker]


def fit_ranker(
    config: RankerConfig,
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    feature_names: list[str],
) -> LambdaRanker:
    """``LambdaRanker(config).fit(...)`` in this process: the local engine's ``FitRanker``."""
    return LambdaRanker(config).fit(features, labels, groups, feature_names=feature_names)
