"""Text retrieval with the frozen vs the fine-tuned BERT item encoder, on amazon-scientific.

Run from the project root::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/text_finetune.py --threads 2

The encoder is fine-tuned (``FinetuneConfig``; the default method trains a projection head on the
frozen vectors, ``--finetune '{"method": "layers", ...}'`` trains transformer layers, with this script's
layer defaults below) on co-occurrence pairs of the *validation task's training interactions*
(leave-last-out: every user's last two events are held out), so neither the validation nor the test
targets are ever a training pair; the same fine-tuned encoder is then evaluated on both tasks. Text
retrieval ranks all items (full ranking, history excluded) by cosine to the user profile: the last
item (as the peer baseline), and the recency-weighted profile of ``recsys.candidates.text``.
Catalogue embeddings go through the embedding cache, so a re-run only re-evaluates. For a
``train_layers`` run only the trained top layers are re-run at evaluation, on the frozen lower layers'
outputs at ``--eval-tokens`` (kept in ``--state-cache``; at the training length they are the training
cache); with ``--eval-tokens`` below 128 the frozen encoder is also evaluated at that length, the
like-for-like reference. Per-user paired differences (fine-tuned minus each frozen row, mean and
standard error) are under ``diff_vs_*``. ``--train-only`` fine-tunes and stops; ``--reuse`` evaluates
an existing ``--out-model``. ``--interpolate 0.5,1.5`` (``train_layers`` runs) also evaluates the top
layers' weights moved that share of the way from the frozen to the fine-tuned ones (weight-space
interpolation as in WiSE-FT, Wortsman et al. 2022; above 1 it extrapolates along the fine-tuning
direction), as encoders ``interp<a>``. Prints a table and writes ``benchmarks/results/text_finetune.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from recsys.candidates.text import TextRetriever, TextRetrieverConfig  # noqa: E402
from recsys.data.adapters import amazon_lcrec  # noqa: E402
from recsys.data.dataset import Dataset  # noqa: E402
from recsys.data.splits import leave_last_out  # noqa: E402
from recsys.encoder.config import EncoderConfig, FinetuneConfig  # noqa: E402
from recsys.evaluation.metrics import ranking_metrics  # noqa: E402

KEYS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
PROFILES = {"last": TextRetrieverConfig(last_n=1), "recency": TextRetrieverConfig()}


def user_hits(ids: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    """Per user Recall@10 and NDCG@10 of ranked ``ids`` (users, k) against ``targets``. -> (users, 2)."""
    rel = np.asarray(targets[np.arange(len(ids))[:, None], np.maximum(ids[:, :10], 0)].todense()) > 0
    rel &= ids[:, :10] >= 0
    n_true = np.asarray(targets.sum(axis=1)).ravel()
    gains = 1 / np.log2(np.arange(2, 12))
    ideal = np.array([gains[: min(int(n), 10)].sum() for n in n_true])
    return np.stack([rel.sum(1) / np.maximum(n_true, 1), (rel * gains).sum(1) / np.maximum(ideal, 1e-12)], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-scientific"))
    parser.add_argument("--out-model", default=str(ROOT / "artifacts" / "encoders" / "amazon-finetuned"))
    parser.add_argument("--reuse", action="store_true", help="evaluate an existing --out-model, no training")
    parser.add_argument("--finetune", default="{}", help="FinetuneConfig overrides as JSON")
    parser.add_argument("--train-only", action="store_true", help="fine-tune and save, evaluate later")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(ROOT / "artifacts" / "cache" / "embeddings"))
    parser.add_argument(
        "--state-cache",
        default=str(ROOT / "artifacts" / "cache" / "lower_states"),
        help="folder for the frozen lower layers' outputs (fine-tuning and evaluation of train_layers runs)",
    )
    parser.add_argument(
        "--eval-tokens",
        type=int,
        default=128,
        help="max_tokens of the fine-tuned encoder at evaluation (the frozen one is also run at 128)",
    )
    parser.add_argument(
        "--interpolate",
        default="",
        help="comma-separated shares a: also evaluate top layers (1-a)*frozen + a*tuned (train_layers runs)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_finetune.json"))
    args = parser.parse_args()

    import torch

    from recsys.config import from_dict
    from recsys.encoder.config import item_texts
    from recsys.encoder.embed import EmbeddingCache, embed_items, text_hashes
    from recsys.encoder.finetune import TopLayers, finetune
    from recsys.encoder.model import ItemEncoder, load_encoder, read_meta

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
            state_cache=args.state_cache,
            embedding_cache=args.cache_dir,
        )
        print(
            f"fine-tuned: {run.steps} steps in {run.wall_seconds:.0f}s; pair R@10 "
            f"{run.baseline_recall:.4f} -> {run.best_recall:.4f} (best step {run.best_step})",
            flush=True,
        )
        if args.train_only:
            return
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
            "prepare_seconds",
            "seconds_per_step",
            "timings",
            "device",
            "data_fingerprint",
        )
    }
    queries = 2 * int(meta.get("held_out_pairs") or 0)  # each held-out pair is asked both ways
    for key in ("baseline_recall@10", "best_recall@10"):
        p = float(meta.get(key) or 0.0)
        results["finetune"][f"{key}_se"] = (p * (1 - p) / max(1, queries)) ** 0.5  # type: ignore[index]
    results["finetune"]["validation_history"] = [  # type: ignore[index]
        h for h in meta.get("history", []) if "recall@10" in h
    ]
    losses = [h["loss"] for h in meta.get("history", []) if "loss" in h]
    results["finetune"]["loss_by_tenth"] = [  # type: ignore[index]
        float(np.mean(part)) for part in np.array_split(np.array(losses), 10) if len(part)
    ]

    def at_inference(checkpoint: str, max_tokens: int) -> ItemEncoder:
        encoder = load_encoder(checkpoint)
        return load_encoder(
            checkpoint,
            config=dataclasses.replace(encoder.config, max_tokens=max_tokens, threads=args.threads),
        )

    tokens = args.eval_tokens
    t0 = time.perf_counter()
    frozen = at_inference("", 128)  # the deployed default, embedded once into the embedding cache
    embeddings = {"frozen": embed_items(dataset.items, encoder=frozen, cache_dir=args.cache_dir)}
    results["frozen_embed_s"] = time.perf_counter() - t0
    results["eval_tokens"] = tokens
    tuned = at_inference(args.out_model, tokens)
    n_top = int((meta.get("finetune") or {}).get("train_layers") or 0)
    t0 = time.perf_counter()
    if n_top and not meta.get("lora"):
        # Only the top n_top layers changed: the frozen lower layers' outputs at the evaluation length
        # are computed once (and kept on disk; at the training length they are the training cache),
        # and each encoder only runs its top layers on them.
        texts = item_texts(dataset.items, frozen.config).to_list()
        lower = TopLayers(frozen, n_top)
        lower.cache_lower(frozen.tokenize(texts, max_tokens=tokens), cache_dir=args.state_cache)
        results["lower_states_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        check = lower.embed_all()
        results["frozen_top_layers_s"] = time.perf_counter() - t1
        if tokens == 128:
            results["frozen_cache_path_max_abs_diff"] = float(np.abs(check - embeddings["frozen"]).max())
        else:  # the frozen encoder at the same (shorter) length: the like-for-like reference
            embeddings[f"frozen_t{tokens}"] = check
        upper = TopLayers(tuned, n_top)
        upper.share_lower(lower)
        t1 = time.perf_counter()
        embeddings["finetuned"] = upper.embed_all()
        results["finetuned_top_layers_s"] = time.perf_counter() - t1
        shares = [float(a) for a in args.interpolate.split(",") if a]
        if shares:
            # copies: a state_dict shares its tensors with the parameters load_state_dict overwrites
            tuned_state = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in upper.upper]
            frozen_state = [layer.state_dict() for layer in lower.upper]  # never overwritten
            for share in shares:
                for layer, f, t in zip(upper.upper, frozen_state, tuned_state, strict=True):
                    layer.load_state_dict({k: (1 - share) * f[k] + share * t[k] for k in f})
                embeddings[f"interp{share:g}"] = upper.embed_all()
            for layer, t in zip(upper.upper, tuned_state, strict=True):
                layer.load_state_dict(t)
        sample = np.random.default_rng(0).choice(len(texts), size=32, replace=False)
        full = tuned.encode([texts[i] for i in sample])
        results["finetuned_cache_path_max_abs_diff_32_items"] = float(
            np.abs(full - embeddings["finetuned"][sample]).max()
        )
        hashes = text_hashes(texts)
        _, first = np.unique(np.array(hashes), return_index=True)
        EmbeddingCache(args.cache_dir).put(
            tuned.fingerprint, [hashes[i] for i in first], embeddings["finetuned"][first]
        )
    else:
        if args.interpolate:
            parser.error("--interpolate needs a train_layers run (only the top layers differ)")
        embeddings["finetuned"] = embed_items(dataset.items, encoder=tuned, cache_dir=args.cache_dir)
    results["finetuned_embed_s"] = time.perf_counter() - t0
    per_user: dict[tuple[str, str, str], np.ndarray] = {}
    for name, emb in embeddings.items():
        for profile, retriever_config in PROFILES.items():
            for task in (split.validation, split.test):
                model = TextRetriever(retriever_config, item_embeddings=emb).fit(task.train)
                ids_, _ = model.recommend(task.train.histories(task.users), 50)
                metrics = ranking_metrics(ids_, task.targets, ks=[10, 50])
                for key in KEYS:
                    results[f"{name}_{profile}_{task.name}_{key}"] = metrics[key]
                hits = per_user[name, profile, task.name] = user_hits(ids_, task.targets)
                if not np.allclose(hits.mean(0), [metrics["recall@10"], metrics["ndcg@10"]], atol=1e-9):
                    raise AssertionError(
                        f"user_hits disagrees with ranking_metrics: {hits.mean(0)}, {metrics}"
                    )
    # each fine-tuned (or interpolated) encoder minus each frozen reference, per user (same users, so
    # paired): mean and standard error
    tuned_names = [n for n in embeddings if not n.startswith("frozen")]
    for name, reference in itertools.product(tuned_names, [n for n in embeddings if n.startswith("frozen")]):
        prefix = "diff" if name == "finetuned" else f"diff_{name}"
        for profile in PROFILES:
            for part in ("validation", "test"):
                diff = per_user[name, profile, part] - per_user[reference, profile, part]
                for j, key in enumerate(("recall@10", "ndcg@10")):
                    results[f"{prefix}_vs_{reference}_{profile}_{part}_{key}"] = {
                        "mean": float(diff[:, j].mean()),
                        "se": float(diff[:, j].std(ddof=1) / np.sqrt(len(diff))),
                    }
    print(f"\n{'encoder':10s} {'profile':8s} {'split':10s} " + " ".join(f"{k:>9s}" for k in KEYS))
    for name in embeddings:
        for profile in PROFILES:
            for part in ("validation", "test"):
                row = " ".join(f"{results[f'{name}_{profile}_{part}_{k}']:9.4f}" for k in KEYS)  # type: ignore[str-format]
                print(f"{name:10s} {profile:8s} {part:10s} {row}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
