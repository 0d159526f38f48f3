"""Text retrieval with the frozen vs the fine-tuned BERT item encoder, on amazon-scientific.

Run from the project root::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/text_finetune.py --threads 2

The encoder is fine-tuned on co-occurrence pairs of the *validation task's training interactions*
(leave-last-out: every user's last two events are held out), so neither the validation nor the test
targets are ever a training pair; the same fine-tuned encoder is then evaluated on both tasks. Text
retrieval ranks all items (full ranking, history excluded) by cosine to the user profile: the last
item (as the peer baseline), and the recency-weighted profile of ``recsys.candidates.text``.
Catalogue embeddings go through the embedding cache, so a re-run only re-evaluates. Prints a table
and writes ``benchmarks/results/text_finetune.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.candidates.text import TextRetriever, TextRetrieverConfig  # noqa: E402
from recsys.data.adapters import amazon_lcrec  # noqa: E402
from recsys.data.dataset import Dataset  # noqa: E402
from recsys.data.splits import leave_last_out  # noqa: E402
from recsys.encoder.config import EncoderConfig, FinetuneConfig  # noqa: E402
from recsys.evaluation.metrics import ranking_metrics  # noqa: E402

KEYS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
PROFILES = {"last": TextRetrieverConfig(last_n=1), "recency": TextRetrieverConfig()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-scientific"))
    parser.add_argument("--out-model", default=str(ROOT / "artifacts" / "encoders" / "amazon-finetuned"))
    parser.add_argument("--reuse", action="store_true", help="evaluate an existing --out-model, no training")
    parser.add_argument("--finetune", default="{}", help="FinetuneConfig overrides as JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(ROOT / "artifacts" / "cache" / "embeddings"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_finetune.json"))
    args = parser.parse_args()

    import torch

    from recsys.config import from_dict
    from recsys.encoder.embed import embed_items
    from recsys.encoder.finetune import finetune
    from recsys.encoder.model import load_encoder, read_meta

    torch.set_num_threads(args.threads)
    items, interactions = amazon_lcrec(args.data)
    dataset = Dataset.from_tables(items, interactions)
    split = leave_last_out(dataset.to_interactions())
    results: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads}
    if not args.reuse:
        defaults = {
            "lr": 3e-5,
            "temperature": 0.05,
            "max_tokens": 48,
            "batch_size": 64,
            "window": 2,
            "eval_every": 25,
            "patience": 4,
            "time_budget_s": 720.0,
            "validation_pairs": 500,
        }
        config = from_dict(FinetuneConfig, {**defaults, **json.loads(args.finetune)})
        run = finetune(
            dataset.items,
            split.validation.train,
            config,
            out=args.out_model,
            encoder=EncoderConfig(threads=args.threads),
        )
        print(
            f"fine-tuned: {run.steps} steps in {run.wall_seconds:.0f}s; pair R@10 "
            f"{run.baseline_recall:.4f} -> {run.best_recall:.4f} (best step {run.best_step})",
            flush=True,
        )
    meta = read_meta(Path(args.out_model)) or {}
    results["finetune"] = {
        k: meta.get(k)
        for k in (
            "finetune",
            "train_pairs",
            "held_out_pairs",
            "baseline_recall@10",
            "best_recall@10",
            "best_step",
            "steps",
            "wall_seconds",
            "device",
            "data_fingerprint",
        )
    }
    for name, checkpoint in (("frozen", ""), ("finetuned", args.out_model)):
        encoder = load_encoder(checkpoint)
        encoder = load_encoder(
            checkpoint, config=dataclasses.replace(encoder.config, max_tokens=128, threads=args.threads)
        )
        t0 = time.perf_counter()
        emb = embed_items(dataset.items, encoder=encoder, cache_dir=args.cache_dir)
        results[f"{name}_embed_s"] = time.perf_counter() - t0
        for profile, retriever_config in PROFILES.items():
            for task in (split.validation, split.test):
                model = TextRetriever(retriever_config, item_embeddings=emb).fit(task.train)
                ids, _ = model.recommend(task.train.histories(task.users), 50)
                metrics = ranking_metrics(ids, task.targets, ks=[10, 50])
                for key in KEYS:
                    results[f"{name}_{profile}_{task.name}_{key}"] = metrics[key]
        print(f"{name}: embedded in {results[f'{name}_embed_s']:.0f}s", flush=True)
    print(f"\n{'encoder':10s} {'profile':8s} {'split':10s} " + " ".join(f"{k:>9s}" for k in KEYS))
    for name in ("frozen", "finetuned"):
        for profile in PROFILES:
            for part in ("validation", "test"):
                row = " ".join(f"{results[f'{name}_{profile}_{part}_{k}']:9.4f}" for k in KEYS)  # type: ignore[str-format]
                print(f"{name:10s} {profile:8s} {part:10s} {row}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
