"""Item-encoding throughput and quality: a naive Hugging Face loop vs our encoder, in one run.

Run from the project root::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.encode --threads 2

Variants, all on the same item texts (our template, 128 tokens) and the same number of threads:

* ``naive``: the tokenizer pads every text to ``max_length=128``, batches of 32 in catalogue order,
  fp32 torch, ``torch.no_grad``: what a first implementation usually does.
* ``ours-torch``: ``ItemEncoder.encode`` on torch: tokenize once, sort by length, pad each batch to
  its own longest text, batches of 64, ``inference_mode``, fp32.
* ``ours``: the same batches on ONNX Runtime (the default path of ``recsys embed``): the exported,
  fused fp32 graph (:mod:`recsys.encoder.ort`). Its vectors equal torch's up to float rounding.
* ``torch-int8``: ``ours-torch`` with torch dynamic int8 ``Linear`` layers (per-tensor scales).
* ``ort-int8``: ``ours`` with ONNX Runtime dynamic int8 weights (per-channel, 7-bit).

Part 1, speed on a sample: a seeded sample of the catalogue is split into chunks and the variants
run interleaved chunk by chunk (their order rotated each chunk), so a change in load from other
jobs on the shared machine hits all of them alike. Items/s is total items over total wall
seconds; speed-ups are the median over chunks of the per-chunk ratios. The process CPU time per
item is reported too: on a shared machine it tracks the work done better than wall time.

Part 2, the whole command on the full catalogue: ``recsys embed --no-cache`` and ``recsys embed
--no-cache --int8`` (model load, tokenisation, encoding, Parquet write; the ONNX graphs exported
beforehand into their cache folder, the one-time exports timed separately) against the naive loop
run as a command doing the same (``--naive-command``), each in its own process: wall and CPU
seconds of the child.

Quality: text retrieval (profile = last history item) with each variant's embeddings of the full
catalogue (naive, ours and ort-int8 from the commands' output files; torch-int8 encoded here),
leave-last-out, full ranking,
Recall@10 / NDCG@10 on the validation and test users. An int8 variant is kept only if it loses
under 1% relative validation Recall@10. Prints a table and writes flat JSON
(``benchmarks/results/encode.json``, or ``--out``), with the run's provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.provenance import ROOT, start_run, write_results
from recsys.encoder.config import EncoderConfig, item_texts

INT8 = ("torch-int8", "ort-int8")


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


def naive_load() -> tuple[object, object]:
    from transformers import AutoModel, AutoTokenizer

    from recsys.encoder.model import default_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint(), local_files_only=True)
    model = AutoModel.from_pretrained(default_checkpoint(), local_files_only=True).eval()
    return tokenizer, model


def naive_command(items: Path, out: Path, threads: int) -> None:
    """The naive loop as a whole command: load, read items, build texts, encode, write Parquet."""
    import polars as pl
    import torch

    from recsys.encoder.embed import write_embeddings

    torch.set_num_threads(threads)
    tokenizer, model = naive_load()
    frame = pl.read_parquet(items)
    vectors = naive_encode(tokenizer, model, item_texts(frame, EncoderConfig()).to_list())
    write_embeddings(frame["item_id"], vectors, out, fingerprint="naive")


def quality(dataset: object, embeddings: np.ndarray) -> dict[str, float]:
    from recsys.candidates.text import TextRetriever, TextRetrieverConfig
    from recsys.data.splits import leave_last_out
    from recsys.evaluation.metrics import ranking_metrics

    split = leave_last_out(dataset.to_interactions())  # type: ignore[attr-defined]
    result: dict[str, float] = {}
    for task in (split.validation, split.test):
        model = TextRetriever(TextRetrieverConfig(last_n=1), item_embeddings=embeddings).fit(task.train)
        ids, _ = model.recommend(task.train.histories(task.users), 50)
        metrics = ranking_metrics(ids, task.targets, ks=[10, 50])
        for key in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"):
            result[f"{task.name}_{key}"] = metrics[key]
    return result


def timed_command(argv: list[str]) -> tuple[float, float, tuple[float, float]]:
    """(wall s, CPU s of the child, load average before/after) of one subprocess run."""
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, (load_before, os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-scientific"))
    parser.add_argument("--sample", type=int, default=600, help="items timed per variant (0: all)")
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-command", action="store_true", help="skip the whole-command timing")
    parser.add_argument("--no-quality", action="store_true", help="skip torch-int8's full-catalogue quality")
    parser.add_argument("--command-items", type=int, default=0, help=argparse.SUPPRESS)  # smoke tests
    parser.add_argument("--out", type=Path, default=None, help="(benchmarks/results/encode.json)")
    parser.add_argument("--naive-command", nargs=2, metavar=("ITEMS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    started = start_run()
    if args.naive_command:
        naive_command(Path(args.naive_command[0]), Path(args.naive_command[1]), args.threads)
        return

    import torch

    from recsys.data.adapters import amazon_lcrec
    from recsys.data.dataset import Dataset
    from recsys.encoder.embed import read_embeddings
    from recsys.encoder.model import load_encoder
    from recsys.encoder.ort import onnx_encoder

    torch.set_num_threads(args.threads)
    items, interactions = amazon_lcrec(args.data)
    dataset = Dataset.from_tables(items, interactions)
    config = EncoderConfig(threads=args.threads)
    texts = item_texts(dataset.items, config).to_list()
    rng = np.random.default_rng(0)
    n = len(texts) if args.sample == 0 else min(args.sample, len(texts))
    sample = [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]
    chunks = np.array_split(np.arange(n), args.chunks)
    work = Path(tempfile.mkdtemp(prefix="encode-bench-"))
    onnx_dir = work / "cache" / "onnx"  # the folder `recsys embed --cache-dir work/cache` reuses

    load_s: dict[str, float] = {}
    t0 = time.perf_counter()
    tokenizer, naive_model = naive_load()
    load_s["naive"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch_fp32 = load_encoder(config=config)
    load_s["ours-torch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = onnx_encoder(torch_fp32, onnx_dir)  # cold: trace, fuse, check, write
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx_encoder(torch_fp32, onnx_dir)  # warm: the cached graph
    load_s["ours"] = load_s["ours-torch"] + time.perf_counter() - t0
    t0 = time.perf_counter()
    torch_int8 = torch_fp32.quantized()
    load_s["torch-int8"] = load_s["ours-torch"] + time.perf_counter() - t0
    t0 = time.perf_counter()
    ort_int8 = onnx_encoder(torch_fp32, onnx_dir, precision="int8")  # cold: export + quantize
    int8_export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx_encoder(torch_fp32, onnx_dir, precision="int8")
    load_s["ort-int8"] = load_s["ours-torch"] + time.perf_counter() - t0
    t0 = time.perf_counter()
    torch_fp32.tokenize(texts)
    tokenize_s = time.perf_counter() - t0

    runners: dict[str, Callable[[list[str]], np.ndarray]] = {
        "naive": lambda t: naive_encode(tokenizer, naive_model, t),
        "ours-torch": torch_fp32.encode,
        "ours": ours.encode,
        "torch-int8": torch_int8.encode,
        "ort-int8": ort_int8.encode,
    }
    names = list(runners)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in runners}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    load_sample = [os.getloadavg()[0]]
    for c, chunk in enumerate(chunks):
        part = [sample[i] for i in chunk]
        for name in names[c % len(names) :] + names[: c % len(names)]:  # rotate the order per chunk
            t0, c0 = time.perf_counter(), time.process_time()
            vectors[name].append(runners[name](part))
            seconds[name].append(time.perf_counter() - t0)
            cpu_seconds[name].append(time.process_time() - c0)
            print(
                f"chunk {c + 1}/{len(chunks)} {name:10s} {len(part) / seconds[name][-1]:7.1f} items/s "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    load_sample.append(os.getloadavg()[0])
    stacked = {name: np.concatenate(v) for name, v in vectors.items()}  # chunks in sample order

    results: dict[str, object] = {
        "threads": args.threads,
        "items_timed": n,
        "chunks": args.chunks,
        "catalogue_items": len(texts),
        "load_before_sample": load_sample[0],
        "load_after_sample": load_sample[1],
        "onnx_export_s": export_s,
        "onnx_int8_export_s": int8_export_s,
        "tokenize_catalogue_s": tokenize_s,
    }
    for name in runners:
        results[f"{name}_items_per_s"] = n / sum(seconds[name])
        results[f"{name}_load_s"] = load_s[name]
        # CPU seconds of this process (all its threads): less sensitive to other jobs than wall time
        results[f"{name}_cpu_ms_per_item"] = 1000 * sum(cpu_seconds[name]) / n
        if name != "naive":
            ratios = [a / b for a, b in zip(seconds["naive"], seconds[name], strict=True)]
            results[f"{name}_speedup_median"] = statistics.median(ratios)
            results[f"{name}_speedup_total"] = sum(seconds["naive"]) / sum(seconds[name])
            results[f"{name}_cpu_speedup"] = sum(cpu_seconds["naive"]) / sum(cpu_seconds[name])
            diff = stacked[name] - stacked["ours-torch"]
            results[f"{name}_max_abs_diff_vs_torch"] = float(np.abs(diff).max())
            results[f"{name}_min_cosine_vs_torch"] = float(
                (stacked[name] * stacked["ours-torch"]).sum(1).min()
            )
    results["naive_max_abs_diff_vs_torch"] = float(np.abs(stacked["naive"] - stacked["ours-torch"]).max())

    full: dict[str, np.ndarray] = {}
    if not args.no_command:
        items_path = work / "items.parquet"
        catalogue = dataset.items.head(args.command_items) if args.command_items else dataset.items
        catalogue.write_parquet(items_path)
        naive_out, ours_out = str(work / "naive.parquet"), str(work / "ours.parquet")
        threads = ["--threads", str(args.threads)]
        recsys = str(Path(sys.executable).with_name("recsys"))
        naive_args = ["--naive-command", str(items_path), naive_out]
        ours_args = ["--out", ours_out, "--cache-dir", str(work / "cache"), "--no-cache"]
        commands = {
            "naive": [sys.executable, "-m", "benchmarks.encode", *threads, *naive_args],
            "ours": [recsys, "embed", "--items", str(items_path), *ours_args, *threads],
            "ort-int8": [recsys, "embed", "--items", str(items_path), *ours_args, *threads, "--int8"],
        }
        commands["ort-int8"][commands["ort-int8"].index(ours_out)] = str(work / "ort-int8.parquet")
        for name, argv in commands.items():
            wall, cpu, (before, after) = timed_command(argv)
            results[f"command_{name}_wall_s"] = wall
            results[f"command_{name}_cpu_s"] = cpu
            results[f"command_{name}_load_before"] = before
            results[f"command_{name}_load_after"] = after
            ids, emb, _ = read_embeddings(work / f"{name}.parquet")
            if ids.to_list() != catalogue["item_id"].to_list():
                raise SystemExit(f"{name}: the command wrote items in another order")
            full[name] = emb
            print(f"command {name}: {wall:.1f}s wall, {cpu:.1f}s CPU (load {before:.1f} -> {after:.1f})")
        for name in ("ours", "ort-int8"):
            for unit in ("wall", "cpu"):
                naive_s = float(results[f"command_naive_{unit}_s"])  # type: ignore[arg-type]
                results[f"command_{name}_speedup_{unit}"] = naive_s / float(
                    results[f"command_{name}_{unit}_s"]
                )  # type: ignore[arg-type]
        results["command_ours_vs_naive_max_abs_diff"] = float(np.abs(full["ours"] - full["naive"]).max())
    if not args.no_quality:
        for name, encoder in (("torch-int8", torch_int8),):
            t0 = time.perf_counter()
            full[name] = encoder.encode(texts)
            print(f"full catalogue {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    for name, emb in full.items() if not args.command_items else ():
        for key, value in quality(dataset, emb).items():
            results[f"{name}_{key}"] = value
    if "ours_validation_recall@10" in results:
        base = float(results["ours_validation_recall@10"])  # type: ignore[arg-type]
        for name in INT8:
            if f"{name}_validation_recall@10" in results:
                loss = (base - float(results[f"{name}_validation_recall@10"])) / base  # type: ignore[arg-type]
                results[f"{name}_relative_recall_loss"] = loss
                results[f"{name}_kept"] = bool(loss < 0.01)

    print()
    print(
        f"{'variant':10s} {'items/s':>8s} {'x naive':>8s} {'CPU ms/it':>9s} {'x naive CPU':>11s} "
        f"{'val R@10':>9s} {'test R@10':>9s} {'test N@10':>9s}"
    )
    for name in runners:
        q = [
            results.get(f"{name}_{k}", float("nan"))
            for k in ("validation_recall@10", "test_recall@10", "test_ndcg@10")
        ]
        speed, ratio = results[f"{name}_items_per_s"], results.get(f"{name}_speedup_median", 1.0)
        print(
            f"{name:10s} {speed:8.2f} {ratio:8.2f} "
            f"{results[f'{name}_cpu_ms_per_item']:9.1f} {results.get(f'{name}_cpu_speedup', 1.0):11.2f} "
            f"{q[0]:9.4f} {q[1]:9.4f} {q[2]:9.4f}"
        )
    if not args.no_command:
        for name in ("ours", "ort-int8"):
            print(
                f"whole command, {len(texts)} items: naive {results['command_naive_wall_s']:.1f}s, "
                f"recsys embed ({name}) {results[f'command_{name}_wall_s']:.1f}s: "
                f"{results[f'command_{name}_speedup_wall']:.2f}x wall, "
                f"{results[f'command_{name}_speedup_cpu']:.2f}x CPU"
            )
    print(json.dumps(results, indent=2))
    print(f"wrote {write_results('encode', results, params=vars(args), started=started, out=args.out)}")


if __name__ == "__main__":
    main()
