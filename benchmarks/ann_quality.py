"""What the ANN costs in quality: the default pipeline with exact retrieval against the same pipeline
whose vector sources (text, ALS, sequential) search their IVF index, per user, on the shared data.

Both sides are the model ``recsys train`` and ``recsys evaluate --models pipeline`` fit on the data
(``recsys.pipeline.defaults``), with the packaged encoder's embeddings, at one seed; the ANN side only
lowers ``ann.min_items`` to 1 for the three sources, so the index is built and searched (at its default
lists and probes) where the default keeps exact scoring below 50,000 items. Each side is fitted on the
test task's training events and scored on its targets; the difference is the per-user paired
bootstrap of ``recsys.evaluation.metrics.paired_difference`` (ANN minus exact). Protocols as in
docs/RESULTS.md: amazon-scientific leave-last-out, MovieLens temporal (the last 10%).

    .venv/bin/python -m benchmarks.ann_quality [--datasets amazon,movielens] [--quick]

``--quick`` runs the bundled MovieLens sample with small budgets (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.provenance import ROOT, start_run, write_results
from recsys.candidates.ann import AnnConfig
from recsys.data.adapters import amazon_lcrec, movielens
from recsys.data.dataset import Dataset
from recsys.data.loading import bundled_paths, load_dataset
from recsys.data.splits import EvalTask, leave_last_out, temporal
from recsys.encoder.embed import embed_items
from recsys.evaluation.metrics import accuracy_per_user, paired_difference
from recsys.pipeline.defaults import pipeline_config_for
from recsys.pipeline.two_stage import TwoStage, TwoStageConfig

DATA = ROOT.parent / "shared" / "data"


def load(name: str) -> tuple[Dataset, EvalTask]:
    if name == "amazon":
        dataset = Dataset.from_tables(*amazon_lcrec(DATA / "amazon-scientific"))
        return dataset, leave_last_out(dataset.to_interactions()).test
    if name == "movielens":
        dataset = Dataset.from_tables(*movielens(DATA / "movielens-latest-small"))
    else:  # the bundled sample, already in the contract's tables
        dataset = load_dataset(*bundled_paths())
    return dataset, temporal(dataset.to_interactions()).test


def with_ann(config: TwoStageConfig) -> TwoStageConfig:
    """``config`` with the text, ALS and sequential sources searching an index at any catalogue size."""
    c = config.candidates
    return replace(
        config,
        candidates=replace(
            c,
            als=replace(c.als, ann=replace(c.als.ann, min_items=1)),
            text=replace(c.text, ann=replace(c.text.ann, min_items=1)),
            sequential=replace(c.sequential, ann=replace(c.sequential.ann, min_items=1)),
        ),
    )


def quick(config: TwoStageConfig) -> TwoStageConfig:
    c = config.candidates
    sources = tuple(s for s in c.sources if s != "sequential")
    return replace(config, candidates=replace(c, sources=sources), ranker=replace(config.ranker, bags=1))


def per_user_ndcg(
    config: TwoStageConfig, dataset: Dataset, task: EvalTask, embeddings: np.ndarray
) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    model = TwoStage(config, items=dataset.items, item_embeddings=embeddings).fit(task.train)
    ids, _ = model.recommend(task.train.histories(task.users), 10)
    return accuracy_per_user(ids, task.targets, ks=[10])["ndcg@10"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="amazon,movielens")
    parser.add_argument("--quick", action="store_true", help="the bundled sample, small budgets")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/ann_quality.json")
    args = parser.parse_args()
    started = start_run()
    names = ["bundled"] if args.quick else args.datasets.split(",")
    out: dict[str, object] = {"ann_defaults": str(AnnConfig())}
    header = ("dataset", "items", "users", "N@10 exact", "N@10 ANN", "diff", "95% interval")
    print("{:<10} {:>6} {:>6} {:>10} {:>9} {:>8} {:>20}".format(*header))
    for name in names:
        dataset, task = load(name)
        embeddings = embed_items(
            dataset.items, encoder="", cache_dir=ROOT / "artifacts" / "cache" / "embeddings"
        )
        exact_config = pipeline_config_for(dataset.interactions)
        if args.quick:
            exact_config = quick(exact_config)
        exact, exact_s = per_user_ndcg(exact_config, dataset, task, embeddings)
        ann, ann_s = per_user_ndcg(with_ann(exact_config), dataset, task, embeddings)
        d = paired_difference(ann, exact)
        row = {
            "items": dataset.n_items,
            "users": d["users"],
            "ndcg@10_exact": float(np.nanmean(exact)),
            "ndcg@10_ann": float(np.nanmean(ann)),
            "diff": d["mean_diff"],
            "ci_low": d["ci_low"],
            "ci_high": d["ci_high"],
            "wins": d["wins"],
            "losses": d["losses"],
            "fit_s_exact": exact_s,
            "fit_s_ann": ann_s,
        }
        out.update({f"{name}_{key}": value for key, value in row.items()})
        interval = f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
        print(
            f"{name:<10} {dataset.n_items:>6} {d['users']:>6} {row['ndcg@10_exact']:>10.4f} "
            f"{row['ndcg@10_ann']:>9.4f} {d['mean_diff']:>+8.4f} {interval:>20}"
        )
    write_results("ann_quality", out, params=vars(args), started=started, out=args.out)


if __name__ == "__main__":
    main()
