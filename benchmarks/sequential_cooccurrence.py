"""Quality and training time of the co-occurrence and sequential (SASRec-style) candidate generators.

Run from the project root (needs ``../shared/data``)::

    .venv/bin/python -m benchmarks.sequential_cooccurrence --datasets amazon,movielens \\
        --threads 1 --time-budget 600 [--embeddings amazon=/path/a.npy,movielens=/path/m.npy]

Protocols: amazon-scientific leave-last-out, movielens-latest-small temporal (10 % test, 10 %
validation), full ranking over all items, history items excluded, metrics from
``recsys.evaluation.metrics``.

* ``cooccurrence``: a small grid is tuned on the validation task (fit on ``split.validation.train``),
  the best NDCG@10 configuration is refitted on ``split.test.train`` and reported on the test task.
* ``sequential``: fitted once on ``split.test.train``; early stopping holds out the last training
  event of ``--validation-users`` sampled users (0: all users, which under leave-last-out is exactly
  the validation target). ``sequential+text`` is the same with frozen MiniLM text embeddings
  (``--embeddings``, (n_items, 384) ``.npy``).

Prints a table and writes flat JSON to ``benchmarks/results/sequential_cooccurrence.json`` (or
``--out``), keeping the figures of datasets and models this run did not measure; the provenance of the
runs that wrote those is kept under ``provenance.earlier_runs``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import ROOT, start_run, write_results
from recsys.candidates.cooccurrence import CoOccurrence, CoOccurrenceConfig
from recsys.data.adapters import amazon_lcrec, movielens
from recsys.data.dataset import Dataset
from recsys.data.splits import EvalTask, Split, leave_last_out, temporal
from recsys.evaluation.metrics import ranking_metrics

DATA = ROOT.parent / "shared" / "data"
KS = (10, 50)
COOC_GRID = [
    CoOccurrenceConfig(window=window, beta=beta, recency_decay=recency)
    for window in (3, 5, 10)
    for beta in (0.1, 0.3)
    for recency in (0.6, 0.8)
]


def load_split(name: str) -> Split:
    if name == "amazon":
        data = Dataset.from_tables(*amazon_lcrec(DATA / "amazon-scientific")).to_interactions()
        return leave_last_out(data)
    data = Dataset.from_tables(*movielens(DATA / "movielens-latest-small")).to_interactions()
    return temporal(data)


def score(model: object, task: EvalTask) -> dict[str, float]:
    ids, _ = model.recommend(task.train.histories(task.users), max(KS))  # type: ignore[attr-defined]
    metrics = ranking_metrics(ids, task.targets, ks=KS)
    return {f"{m}@{k}": metrics[f"{m}@{k}"] for m in ("recall", "ndcg") for k in KS}


def run_cooccurrence(split: Split) -> dict[str, object]:
    best, best_ndcg = COOC_GRID[0], -1.0
    for config in COOC_GRID:
        ndcg = score(CoOccurrence(config).fit(split.validation.train), split.validation)["ndcg@10"]
        if ndcg > best_ndcg:
            best, best_ndcg = config, ndcg
    start = time.perf_counter()
    model = CoOccurrence(best).fit(split.test.train)
    fit_s = time.perf_counter() - start
    return {
        "validation_ndcg@10": best_ndcg,
        "params": f"window={best.window} beta={best.beta} recency_decay={best.recency_decay}",
        "fit_s": fit_s,
        "epochs": 0,
        **score(model, split.test),
    }


def run_sequential(
    split: Split, args: argparse.Namespace, embeddings: np.ndarray | None
) -> dict[str, object]:
    from recsys.candidates.sequential import SequentialConfig, SequentialRecommender

    config = SequentialConfig(
        time_budget_s=args.time_budget,
        threads=args.threads,
        lr=args.lr,
        seed=args.seed,
        validation_users=args.validation_users,
    )
    model = SequentialRecommender(config, item_embeddings=embeddings).fit(split.test.train)
    return {
        "validation_ndcg@10": model.best_score_,
        "params": f"best_epoch={model.best_epoch_} epochs={len(model.history_)} stop={model.stop_reason_}",
        "fit_s": model.fit_seconds_,
        "epochs": len(model.history_),
        **score(model, split.test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="amazon,movielens")
    parser.add_argument("--models", default="cooccurrence,sequential,sequential+text")
    parser.add_argument("--embeddings", default="", help="name=path.npy,... for sequential+text")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-budget", type=float, default=600.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-users", type=int, default=2000, help="0: hold out every user")
    parser.add_argument("--out", type=Path, default=None, help="(results/sequential_cooccurrence.json)")
    args = parser.parse_args()
    started = start_run()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    embedding_paths = dict(kv.split("=", 1) for kv in args.embeddings.split(",") if kv)

    import torch

    torch.set_num_threads(args.threads)
    flat: dict[str, object] = {"time_budget_s": args.time_budget}
    rows = []
    for name in args.datasets.split(","):
        split = load_split(name)
        for model_name in args.models.split(","):
            if model_name == "cooccurrence":
                result = run_cooccurrence(split)
            elif model_name == "sequential":
                result = run_sequential(split, args, None)
            elif model_name == "sequential+text":
                if name not in embedding_paths:
                    continue
                emb = np.load(embedding_paths[name], allow_pickle=False)
                result = run_sequential(split, args, emb)
            else:
                raise SystemExit(f"unknown model {model_name!r}")
            rows.append((name, model_name, result))
            flat.update({f"{name}.{model_name}.{k}": v for k, v in result.items()})
            print(name, model_name, result, flush=True)

    header = f"{'dataset':<10} {'model':<16} {'val N@10':>8} {'R@10':>7} {'N@10':>7} {'R@50':>7} {'N@50':>7}"
    print("\n" + header + f" {'fit s':>7}  params")
    for name, model_name, r in rows:
        print(
            f"{name:<10} {model_name:<16} {r['validation_ndcg@10']:>8.4f} {r['recall@10']:>7.4f} "
            f"{r['ndcg@10']:>7.4f} {r['recall@50']:>7.4f} {r['ndcg@50']:>7.4f} {r['fit_s']:>7.1f}  "
            f"{r['params']}"
        )
    # runs for one dataset or model keep the others' figures
    out = write_results(
        "sequential_cooccurrence", flat, params=vars(args), started=started, out=args.out, merge=True
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
