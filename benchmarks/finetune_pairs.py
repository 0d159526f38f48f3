"""What the fine-tuning pairs look like to the frozen encoder, on amazon-scientific.

Run from the project root (about a minute once the frozen embeddings are cached)::

    HF_HUB_OFFLINE=1 .venv/bin/python -P benchmarks/finetune_pairs.py

Fine-tuning pulls together items within ``window`` positions in a training history. This measures,
with the frozen encoder's catalogue embeddings (inference length, from the embedding cache): how
similar the two items of a pair already are (cosine quantiles, share of near-duplicates, share with
the same title), how often the frozen encoder already ranks the partner in its catalogue top 10, and
the same for the validation task's (last training item, target) pairs that text retrieval is scored
on. Random item pairs are the reference. Writes ``benchmarks/results/text_finetune_pairs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recsys.data.adapters import amazon_lcrec  # noqa: E402
from recsys.data.dataset import Dataset  # noqa: E402
from recsys.data.splits import leave_last_out  # noqa: E402
from recsys.encoder.embed import embed_items  # noqa: E402
from recsys.encoder.finetune import cooccurrence_pairs  # noqa: E402

NEAR = (0.8, 0.9, 0.95)


def describe(emb: np.ndarray, pairs: np.ndarray, titles: np.ndarray) -> dict[str, object]:
    """Cosine quantiles, near-duplicate shares and frozen partner rank of ``pairs`` ((n, 2) items)."""
    cos = np.einsum("ij,ij->i", emb[pairs[:, 0]], emb[pairs[:, 1]])
    hit10, ranks = [], []
    for start in range(0, len(pairs), 2048):  # partner's rank among all other catalogue items
        block = pairs[start : start + 2048]
        scores = emb[block[:, 0]] @ emb.T  # (block, n_items)
        scores[np.arange(len(block)), block[:, 0]] = -np.inf
        partner = scores[np.arange(len(block)), block[:, 1]]
        rank = (scores > partner[:, None]).sum(axis=1)
        ranks.append(rank)
        hit10.append(rank < 10)
    rank_all = np.concatenate(ranks)
    return {
        "n": len(pairs),
        "cosine_quantiles_10_25_50_75_90": np.quantile(cos, [0.1, 0.25, 0.5, 0.75, 0.9]).round(4).tolist(),
        **{f"share_cosine_ge_{t}": float((cos >= t).mean()) for t in NEAR},
        "share_same_title": float((titles[pairs[:, 0]] == titles[pairs[:, 1]]).mean()),
        "frozen_catalogue_recall@10": float(np.concatenate(hit10).mean()),
        "frozen_partner_rank_median": float(np.median(rank_all)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-scientific"))
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(ROOT / "artifacts" / "cache" / "embeddings"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_finetune_pairs.json"))
    args = parser.parse_args()

    started = time.perf_counter()
    items, interactions = amazon_lcrec(args.data)
    dataset = Dataset.from_tables(items, interactions)
    split = leave_last_out(dataset.to_interactions())
    emb = embed_items(dataset.items, encoder="", cache_dir=args.cache_dir)  # frozen, 128 tokens
    titles = dataset.items.get_column("title").fill_null("").str.to_lowercase().str.strip_chars().to_numpy()
    results: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "window": args.window}
    train = split.validation.train
    pairs, counts = cooccurrence_pairs(train, window=args.window)
    results["train_pairs"] = describe(emb, pairs, titles)
    results["train_pairs"]["share_seen_more_than_once"] = float((counts > 1).mean())  # type: ignore[index]
    for window in sorted({1, args.window}):
        if window != args.window:
            results[f"train_pairs_window_{window}"] = describe(
                emb, cooccurrence_pairs(train, window=window)[0], titles
            )
    histories = train.histories(split.validation.users)
    last = histories.last(1)[:, 0].astype(np.int64)
    target = split.validation.targets.indices.astype(np.int64)  # one target per user, row order
    keep = last != target
    results["validation_last_to_target"] = describe(emb, np.stack([last[keep], target[keep]], 1), titles)
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(0, len(emb), size=(20_000, 2))
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]
    results["random_pairs"] = describe(emb, random_pairs, titles)
    results["seconds"] = time.perf_counter() - started
    print(json.dumps(results, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
