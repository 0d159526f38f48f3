"""The ranker bag on amazon-scientific (leave-last-out): single boosters against their mean.

For each task (validation, then test) the default pipeline is fitted once on the task's training
data, keeping the rows its ranker was trained on (``ranker_settings._Recorded``). On those rows,
boosters with seeds ``0 .. bags-1`` (each holding out its own user groups for its search and early
stopping) are fitted alone, and together as one bag (``RankerConfig.bags``: the mean of the same
boosters' scores); the whole pipeline answers the task's users with each. The validation task is
where the bag is judged; the test task is shown beside it. Also times ``predict`` on one user's
candidates (one thread, as the service calls it), single booster against the bag.
Writes flat JSON to ``benchmarks/results/ranker_bag.json``.

    .venv/bin/python -P benchmarks/ranker_bag.py [--data ../shared/data/amazon-scientific] [--bags 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from recsys.data.adapters import amazon_lcrec
from recsys.data.dataset import Dataset
from recsys.data.splits import leave_last_out
from recsys.encoder.embed import embed_items
from recsys.evaluation.metrics import ranking_metrics
from recsys.pipeline.two_stage import TwoStage, TwoStageConfig
from recsys.ranking.ranker import LambdaRanker

sys.path.append(str(Path(__file__).parent))  # appended, not first: see pipeline_quality.py
from ranker_settings import _Recorded

RESULTS = Path(__file__).parent / "results" / "ranker_bag.json"
METRICS = ("recall@10", "ndcg@10", "ndcg@50")


def predict_ms(ranker: LambdaRanker, features: np.ndarray, groups: np.ndarray, n: int = 200) -> float:
    """Median milliseconds of ``predict`` on one group's rows (the first ``n`` groups)."""
    starts = np.concatenate([[0], np.cumsum(groups)])
    times = []
    for g in range(min(n, len(groups))):
        rows = np.ascontiguousarray(features[starts[g] : starts[g + 1]])
        start = time.perf_counter()
        ranker.predict(rows, num_threads=1)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    import recsys.pipeline.two_stage as two_stage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/amazon-scientific"))
    parser.add_argument("--bags", type=int, default=5)
    args = parser.parse_args()

    dataset = Dataset.from_tables(*amazon_lcrec(args.data))
    split = leave_last_out(dataset.to_interactions())
    embeddings = embed_items(dataset.items, encoder="", cache_dir="artifacts/cache/embeddings")
    base = TwoStageConfig()
    config = replace(base, ranker=replace(base.ranker, bags=1))  # the rows do not depend on the ranker
    two_stage.LambdaRanker = _Recorded  # type: ignore[attr-defined, misc]
    out: dict[str, float | int] = {"bags": args.bags}
    print(
        f"{'task':10s} {'ranker':12s} {'inner N@10':>10s} {'rounds':>6s} {'fit s':>6s} "
        + " ".join(f"{m:>9s}" for m in METRICS)
    )
    for task in (split.validation, split.test):
        start = time.perf_counter()
        model = TwoStage(config, items=dataset.items, item_embeddings=embeddings).fit(task.train)
        out[f"{task.name}.pipeline_fit_seconds"] = time.perf_counter() - start
        rows = _Recorded.rows
        X, y, groups, names = rows["features"], rows["labels"], rows["groups"], rows["feature_names"]
        histories = task.train.histories(task.users)
        rankers = {f"single{b}": replace(base.ranker, bags=1, seed=b) for b in range(args.bags)}
        rankers["bag"] = replace(base.ranker, bags=args.bags, seed=0)
        for name, ranker_config in rankers.items():
            start = time.perf_counter()
            ranker = LambdaRanker(ranker_config).fit(X, y, groups, feature_names=names)
            fit_seconds = time.perf_counter() - start
            model.ranker_ = ranker
            ids, _ = model.recommend(histories, 50)
            metrics = ranking_metrics(ids, task.targets, ks=[10, 50])
            assert ranker.report_ is not None
            bests = [bag["best"] for bag in ranker.report_["bags"]]
            values = {
                "inner_ndcg@10": float(np.mean([b["valid_ndcg"] for b in bests])),
                "rounds": float(np.mean([b["best_iteration"] for b in bests])),
                "fit_seconds": fit_seconds,
                "predict_ms": predict_ms(ranker, X, groups),
                **{m: metrics[m] for m in METRICS},
            }
            out |= {f"{task.name}.{name}.{key}": value for key, value in values.items()}
            print(
                f"{task.name:10s} {name:12s} {values['inner_ndcg@10']:10.4f} {values['rounds']:6.1f} "
                f"{fit_seconds:6.1f} " + " ".join(f"{values[m]:9.4f}" for m in METRICS),
                flush=True,
            )
        singles = [out[f"{task.name}.single{b}.ndcg@10"] for b in range(args.bags)]
        out[f"{task.name}.singles_median.ndcg@10"] = float(np.median(singles))
        bag = {key: out[f"{task.name}.bag.{key}"] for key in ("ndcg@10", "predict_ms")}
        print(
            f"{task.name}: bag N@10 {bag['ndcg@10']:.4f}; singles median {np.median(singles):.4f}, "
            f"min {min(singles):.4f}, max {max(singles):.4f}; predict ms single "
            f"{out[f'{task.name}.single0.predict_ms']:.2f}, bag {bag['predict_ms']:.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
