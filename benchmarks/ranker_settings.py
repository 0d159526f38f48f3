"""LightGBM settings of the two-stage ranker on amazon-scientific (leave-last-out): one pipeline fit,
the ranker refitted under each setting on the same training rows.

Fits the default pipeline on the test task's training data once, keeping the rows its ranker was
trained on (the fit of ``LambdaRanker`` is wrapped to record its arguments, a benchmark-only
instrument like the timers of ``serving_profile.py``). Then, for each setting, only the ranker is
refitted on those rows, with the default's own search and early stopping on its held-out user groups
(the same groups for every setting), and the whole pipeline answers the test users with it. A
setting is chosen by the ranker's held-out NDCG@10 (``inner``), never by the test figures printed
beside it. Every setting is one booster (``bags=1``), as the default was when this was measured;
``ranker_bag.py`` measures the bag. Writes flat JSON to ``benchmarks/results/ranker_settings.json``.

    .venv/bin/python -P benchmarks/ranker_settings.py [--data ../shared/data/amazon-scientific]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from recsys.data.adapters import amazon_lcrec
from recsys.data.dataset import Dataset
from recsys.data.splits import leave_last_out
from recsys.encoder.embed import embed_items
from recsys.evaluation.metrics import ranking_metrics
from recsys.pipeline.two_stage import TwoStage, TwoStageConfig
from recsys.ranking.ranker import LambdaRanker, RankerConfig

RESULTS = Path(__file__).parent / "results" / "ranker_settings.json"


def _slower(c: RankerConfig) -> RankerConfig:
    return replace(c, search=((15, 0.03), (31, 0.03), (63, 0.02)), max_rounds=1500, early_stopping_rounds=60)


def settings(base: RankerConfig) -> dict[str, tuple[RankerConfig, dict[str, Any]]]:
    """Name -> (ranker config, extra LightGBM parameters)."""
    return {
        "default": (base, {}),
        "min_data_in_leaf=200": (replace(base, min_data_in_leaf=200), {}),
        "slower learning rates, more rounds": (_slower(base), {}),
        "feature_fraction=0.5": (replace(base, feature_fraction=0.5), {}),
        "lambda_l2=10": (base, {"lambda_l2": 10.0}),
        "bagging 0.8": (base, {"bagging_fraction": 0.8, "bagging_freq": 1}),
        "truncation 50": (replace(base, lambdarank_truncation_level=50), {}),
        "all regularisers + slower": (
            _slower(replace(base, min_data_in_leaf=200, feature_fraction=0.5)),
            {"lambda_l2": 10.0},
        ),
    }


class _Recorded(LambdaRanker):
    """A ``LambdaRanker`` that keeps its training rows and adds ``extra`` LightGBM parameters."""

    rows: ClassVar[dict[str, Any]] = {}
    extra: ClassVar[dict[str, Any]] = {}

    def fit(
        self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, feature_names: list[str]
    ) -> Self:
        _Recorded.rows.update(features=features, labels=labels, groups=groups, feature_names=feature_names)
        return super().fit(features, labels, groups, feature_names=feature_names)

    def _params(self, num_leaves: int, learning_rate: float, seed: int) -> dict[str, Any]:
        return super()._params(num_leaves, learning_rate, seed) | _Recorded.extra


def main() -> None:
    import recsys.pipeline.two_stage as two_stage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/amazon-scientific"))
    args = parser.parse_args()

    dataset = Dataset.from_tables(*amazon_lcrec(args.data))
    task = leave_last_out(dataset.to_interactions()).test
    embeddings = embed_items(dataset.items, encoder="", cache_dir="artifacts/cache/embeddings")
    config = TwoStageConfig()
    two_stage.LambdaRanker = _Recorded  # type: ignore[attr-defined, misc]
    start = time.perf_counter()
    model = TwoStage(config, items=dataset.items, item_embeddings=embeddings).fit(task.train)
    out: dict[str, float | int] = {"fit_seconds": time.perf_counter() - start}
    rows = _Recorded.rows
    out["training_rows"], out["training_groups"] = len(rows["labels"]), len(rows["groups"])
    histories = task.train.histories(task.users)

    print(f"fit {out['fit_seconds']:.0f} s; {out['training_groups']} groups, {out['training_rows']} rows")
    print(f"{'setting':36s} {'inner N@10':>10s} {'test R@10':>9s} {'test N@10':>9s} {'rounds':>6s}")
    for name, (ranker_config, extra) in settings(replace(config.ranker, bags=1)).items():
        _Recorded.extra = extra
        ranker = _Recorded(ranker_config).fit(
            rows["features"], rows["labels"], rows["groups"], feature_names=rows["feature_names"]
        )
        model.ranker_ = ranker
        ids, _ = model.recommend(histories, 50)
        metrics = ranking_metrics(ids, task.targets, ks=[10, 50])
        assert ranker.report_ is not None
        (bag,) = ranker.report_["bags"]
        best = bag["best"]
        values = {
            "inner_ndcg@10": best["valid_ndcg"],
            "best_iteration": best["best_iteration"],
            **{key: metrics[key] for key in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")},
        }
        out |= {f"{name}.{key}": value for key, value in values.items()}
        print(
            f"{name:36s} {best['valid_ndcg']:10.4f} {metrics['recall@10']:9.4f} {metrics['ndcg@10']:9.4f} "
            f"{best['best_iteration']:6d}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
