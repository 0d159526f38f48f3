"""Item-encoding throughput: a naive Hugging Face loop vs our encoder (fp32 and dynamic int8).

Run from the project root::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode.py --threads 2

Variants, all on the same item texts (our template, 128 tokens) and the same torch threads:

* ``naive``: the tokenizer pads every text to ``max_length=128``, batches of 32 in catalogue order,
  fp32, ``torch.no_grad``: what a first implementation usually does.
* ``ours``: ``ItemEncoder.encode``: tokenize once, sort by length, pad each batch to its own
  longest text, batches of 64, ``inference_mode``, fp32.
* ``ours-int8``: the same with dynamic int8 ``Linear`` layers.

Speed is measured on a seeded sample of the catalogue split into chunks; the variants run
interleaved chunk by chunk, so a change in load from other jobs on the shared machine hits all of
them alike. Items/s is total items over total wall seconds; the per-chunk speed-up ratios are
reported as medians. The process CPU time per item is reported too: on a machine shared with other
jobs it tracks the work done better than wall time. Model loading is timed separately.

Quality: text retrieval (profile = last history item, as the peer baseline) with each variant's
embeddings of the full catalogue, leave-last-out, full ranking, Recall@10 / NDCG@10 on the
validation and test users. The naive and fp32 vectors differ only by float rounding (reported as the
largest absolute difference on the sample), so the naive loop is not re-run over the whole
catalogue. Prints a table and writes ``benchmarks/results/encode.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.candidates.text import TextRetriever, TextRetrieverConfig  # noqa: E402
from recsys.data.adapters import amazon_lcrec  # noqa: E402
from recsys.data.dataset import Dataset  # noqa: E402
from recsys.data.splits import leave_last_out  # noqa: E402
from recsys.encoder.config import EncoderConfig, item_texts  # noqa: E402
from recsys.evaluation.metrics import ranking_metrics  # noqa: E402


def naive_encode(tokenizer: object, model: object, texts: list[str]) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            enc = tokenizer(  # type: ignore[operator]
                texts[start : start + 32],
                padding="max_length",
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state  # type: ignore[operator]  # (32, 128, dim)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def quality(dataset: Dataset, embeddings: np.ndarray) -> dict[str, float]:
    split = leave_last_out(dataset.to_interactions())
    result: dict[str, float] = {}
    for task in (split.validation, split.test):
        model = TextRetriever(TextRetrieverConfig(last_n=1), item_embeddings=embeddings).fit(task.train)
        ids, _ = model.recommend(task.train.histories(task.users), 50)
        metrics = ranking_metrics(ids, task.targets, ks=[10, 50])
        for key in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"):
            result[f"{task.name}_{key}"] = metrics[key]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-scientific"))
    parser.add_argument("--sample", type=int, default=1200, help="items timed (0: whole catalogue)")
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(ROOT / "artifacts" / "cache" / "embeddings"))
    parser.add_argument("--no-quality", action="store_true", help="skip the full-catalogue retrieval check")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "encode.json"))
    args = parser.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    from recsys.encoder.embed import embed_items
    from recsys.encoder.model import default_checkpoint, load_encoder

    torch.set_num_threads(args.threads)
    items, interactions = amazon_lcrec(args.data)
    dataset = Dataset.from_tables(items, interactions)
    config = EncoderConfig(threads=args.threads)
    texts = item_texts(dataset.items, config).to_list()
    rng = np.random.default_rng(0)
    n = len(texts) if args.sample == 0 else min(args.sample, len(texts))
    sample = [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]
    chunks = np.array_split(np.arange(n), args.chunks)

    load_s: dict[str, float] = {}
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint(), local_files_only=True)
    naive_model = AutoModel.from_pretrained(default_checkpoint(), local_files_only=True).eval()
    load_s["naive"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = load_encoder(config=config)
    load_s["ours"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_int8 = ours.quantized()
    load_s["ours-int8"] = load_s["ours"] + time.perf_counter() - t0

    runners = {
        "naive": lambda t: naive_encode(tokenizer, naive_model, t),
        "ours": lambda t: ours.encode(t),
        "ours-int8": lambda t: ours_int8.encode(t),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in runners}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    for c, chunk in enumerate(chunks):
        part = [sample[i] for i in chunk]
        for name, run in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            vectors[name].append(run(part))
            seconds[name].append(time.perf_counter() - t0)
            cpu_seconds[name].append(time.process_time() - c0)
            print(
                f"chunk {c + 1}/{len(chunks)} {name:10s} {len(part) / seconds[name][-1]:7.1f} items/s",
                flush=True,
            )
    stacked = {name: np.concatenate(v) for name, v in vectors.items()}

    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "torch_threads": args.threads,
        "items_timed": n,
        "chunks": args.chunks,
        "catalogue_items": len(texts),
    }
    for name in runners:
        results[f"{name}_items_per_s"] = n / sum(seconds[name])
        results[f"{name}_load_s"] = load_s[name]
        # CPU seconds of this process (all its threads): less sensitive to other jobs than wall time
        results[f"{name}_cpu_ms_per_item"] = 1000 * sum(cpu_seconds[name]) / n
    for name in ("ours", "ours-int8"):
        ratios = [a / b for a, b in zip(seconds["naive"], seconds[name], strict=True)]
        results[f"{name}_speedup_median"] = statistics.median(ratios)
        results[f"{name}_speedup_total"] = sum(seconds["naive"]) / sum(seconds[name])
        results[f"{name}_cpu_speedup"] = sum(cpu_seconds["naive"]) / sum(cpu_seconds[name])
    results["max_abs_diff_naive_vs_ours"] = float(np.abs(stacked["naive"] - stacked["ours"]).max())
    results["max_abs_diff_ours_vs_int8"] = float(np.abs(stacked["ours"] - stacked["ours-int8"]).max())
    results["min_cosine_ours_vs_int8"] = float((stacked["ours"] * stacked["ours-int8"]).sum(1).min())

    if not args.no_quality:
        # int8 first: by the time it is done the fp32 vectors are usually in the cache (text_finetune.py)
        for name, encoder in (("ours-int8", ours_int8), ("ours", ours)):
            t0 = time.perf_counter()
            emb = embed_items(dataset.items, encoder=encoder, cache_dir=args.cache_dir)
            print(
                f"full catalogue {name}: {time.perf_counter() - t0:.1f}s (cache {args.cache_dir})", flush=True
            )
            for key, value in quality(dataset, emb).items():
                results[f"{name}_{key}"] = value
        base = float(results["ours_validation_recall@10"])  # type: ignore[arg-type]
        int8 = float(results["ours-int8_validation_recall@10"])  # type: ignore[arg-type]
        results["int8_relative_recall_loss"] = (base - int8) / base
        results["int8_kept"] = bool((base - int8) / base < 0.01)

    print()
    print(
        f"{'variant':10s} {'items/s':>8s} {'x naive':>8s} {'val R@10':>9s} {'test R@10':>9s} "
        f"{'test N@10':>9s}"
    )
    for name in runners:
        speed = results[f"{name}_items_per_s"]
        ratio = results.get(f"{name}_speedup_median", 1.0)
        src = "ours" if name == "naive" else name  # naive vectors == ours up to rounding (see diff)
        q = [
            results.get(f"{src}_{k}", float("nan"))
            for k in ("validation_recall@10", "test_recall@10", "test_ndcg@10")
        ]
        print(f"{name:10s} {speed:8.1f} {ratio:8.2f} {q[0]:9.4f} {q[1]:9.4f} {q[2]:9.4f}")
    print(json.dumps(results, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
