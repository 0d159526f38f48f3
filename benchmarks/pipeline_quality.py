"""Two-stage pipeline on amazon-scientific (leave-last-out): one fit, several read-outs.

Fits the pipeline on the test task's training data (the test targets are never seen), then reports,
against the test targets: the ranked metrics; candidate recall@N per source and blended (the share
of test targets the first stage finds); and the MMR diversity re-rank's effect on intra-list
diversity vs NDCG for a few lambdas. Writes flat JSON to ``benchmarks/results/pipeline_quality.json``.

    .venv/bin/python -m benchmarks.pipeline_quality [--data ../shared/data/amazon-scientific]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.provenance import start_run, write_results
from recsys.data.adapters import amazon_lcrec
from recsys.data.dataset import Dataset
from recsys.data.splits import leave_last_out
from recsys.encoder.embed import embed_items
from recsys.evaluation.metrics import intra_list_diversity, ranking_metrics
from recsys.pipeline.two_stage import TwoStage, TwoStageConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/amazon-scientific"))
    parser.add_argument("--encoder", default="", help="item encoder folder ('' = packaged MiniLM)")
    parser.add_argument("--lambdas", default="0.1,0.3,0.5")
    args = parser.parse_args()
    started = start_run()

    dataset = Dataset.from_tables(*amazon_lcrec(args.data))
    task = leave_last_out(dataset.to_interactions()).test
    embeddings = embed_items(dataset.items, encoder=args.encoder, cache_dir="artifacts/cache/embeddings")
    config = TwoStageConfig()
    out: dict[str, float | str] = {"encoder": args.encoder or "packaged MiniLM (frozen)"}

    start = time.perf_counter()
    model = TwoStage(config, items=dataset.items, item_embeddings=embeddings).fit(task.train)
    out["fit_seconds"] = time.perf_counter() - start
    histories = task.train.histories(task.users)

    candidates = model.candidates(histories)
    total = config.candidates.total
    per_source = config.candidates.per_source
    assert model.generators_ is not None
    for name, generator in model.generators_.items():
        ids, _ = generator.recommend(histories, per_source)
        out[f"candidate_recall@{per_source}.{name}"] = ranking_metrics(ids, task.targets, ks=[per_source])[
            f"recall@{per_source}"
        ]
    out[f"candidate_recall@{total}.blended"] = ranking_metrics(candidates.ids, task.targets, ks=[total])[
        f"recall@{total}"
    ]

    rows = []
    for diversity in [0.0, *(float(x) for x in args.lambdas.split(","))]:
        model.config = replace(config, diversity=diversity)
        start = time.perf_counter()
        ids, _ = model.recommend(histories, 50)
        seconds = time.perf_counter() - start
        metrics = ranking_metrics(ids, task.targets, ks=[10, 50])
        ild = intra_list_diversity(ids, embeddings, k=10)
        prefix = f"mmr{diversity:g}."
        for key in ("recall@10", "ndcg@10", "recall@50", "ndcg@50", "coverage@10"):
            out[prefix + key] = metrics[key]
        out[prefix + "ild@10"] = ild
        out[prefix + "recommend_seconds"] = seconds
        rows.append((diversity, metrics["recall@10"], metrics["ndcg@10"], metrics["ndcg@50"], ild))

    print(f"fit {out['fit_seconds']:.0f} s; candidate recall:")
    for key, value in out.items():
        if key.startswith("candidate_recall"):
            print(f"  {key:40s} {value:.4f}")
    print(f"{'mmr lambda':>10} {'R@10':>8} {'N@10':>8} {'N@50':>8} {'ILD@10':>8}")
    for diversity, r10, n10, n50, ild in rows:
        print(f"{diversity:>10g} {r10:8.4f} {n10:8.4f} {n50:8.4f} {ild:8.4f}")
    print(f"wrote {write_results('pipeline_quality', out, params=vars(args), started=started)}")


if __name__ == "__main__":
    main()
