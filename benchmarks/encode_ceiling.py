"""How far fp32 encoding can go on this CPU: the work each variant must do vs the machine's GEMM rate.

Run from the project root::

    HF_HUB_OFFLINE=1 .venv/bin/python -P benchmarks/encode_ceiling.py --cpu-seconds 312.1 220.6

For the amazon-scientific catalogue with our template at 128 tokens it counts the tokens each variant
computes (naive: every text padded to 128; ours: length-sorted batches of 64, each padded to its own
longest text) and the floating-point operations of the packaged BERT on them (linear layers and
attention, from the model's config; layer norms, GELU and the embedding lookup are left out, so the
counts are a lower bound). It then times single-thread fp32 matrix products at the model's own
shapes: the fastest repeat of the fastest shape (a burst, generous on purpose: this VM's speed varies)
and the rate sustained over ``--sustain`` seconds at the FFN shape, the largest share of the work; the
two bound what one core does per second. With the CPU seconds of the
two whole commands (``--cpu-seconds NAIVE OURS``, e.g. from ``/usr/bin/time`` around the commands of
``benchmarks/encode.py``) it prints each one's achieved rate as a share of that ceiling, and the best
speed-up an fp32 engine could reach with our batches at each rate: the padding saved times the
headroom to the rate. Writes flat JSON to ``benchmarks/results/encode_ceiling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def flops_per_sequence(length: int, *, layers: int, hidden: int, intermediate: int) -> float:
    """Multiply-adds x 2 of one sequence through the encoder's linear layers and attention."""
    linear = layers * (4 * hidden * hidden + 2 * hidden * intermediate) * length
    attention = layers * 2 * length * length * hidden  # scores and weighted values
    return 2.0 * (linear + attention)


def gemm_gflops(rows: int, k: int, n: int, *, repeats: int = 0, seconds: float = 0.0) -> float:
    """GFLOP/s of (rows, k) @ (k, n): the fastest of ``repeats`` products, or the mean over ``seconds``."""
    import torch

    a, w = torch.randn(rows, k), torch.randn(k, n)
    for _ in range(3):
        a @ w
    if seconds:
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            a @ w
            done += 1
        return 2.0 * rows * k * n * done / (time.perf_counter() - start) / 1e9
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ w
        times.append(time.perf_counter() - start)
    return 2.0 * rows * k * n / min(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-scientific"))
    parser.add_argument("--cpu-seconds", nargs=2, type=float, metavar=("NAIVE", "OURS"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sustain", type=float, default=8.0, help="seconds of the sustained GEMM run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "encode_ceiling.json"))
    args = parser.parse_args()

    import torch

    from recsys.data.adapters import amazon_lcrec
    from recsys.data.dataset import Dataset
    from recsys.encoder.config import item_texts
    from recsys.encoder.model import load_encoder

    torch.set_num_threads(1)
    items, interactions = amazon_lcrec(args.data)
    encoder = load_encoder("")
    texts = item_texts(Dataset.from_tables(items, interactions).items, encoder.config).to_list()
    lengths = np.array([len(ids) for ids in encoder.tokenize(texts)])
    config = encoder.model.config
    shape = {
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
    }
    max_tokens, batch = encoder.config.max_tokens, encoder.config.batch_size
    ordered = np.sort(lengths)[::-1]
    batches = [ordered[i : i + batch] for i in range(0, len(ordered), batch)]
    results: dict[str, float | str] = {
        "date": time.strftime("%Y-%m-%d"),
        "items": len(lengths),
        "tokens_real": int(lengths.sum()),
        "tokens_naive": len(lengths) * max_tokens,
        "tokens_ours": int(sum(int(b.max()) * len(b) for b in batches)),
        "share_of_texts_at_max_tokens": float(np.mean(lengths >= max_tokens)),
        "gflop_naive": len(lengths) * flops_per_sequence(max_tokens, **shape) / 1e9,
        "gflop_ours": sum(len(b) * flops_per_sequence(int(b.max()), **shape) for b in batches) / 1e9,
    }
    results["work_ratio_naive_over_ours"] = float(results["gflop_naive"]) / float(results["gflop_ours"])
    rows = batch * int(lengths.mean())  # one batch's tokens at the mean length
    hidden, inter = shape["hidden"], shape["intermediate"]
    for name, (k, n) in {
        "qkvo": (hidden, hidden),
        "ffn_up": (hidden, inter),
        "ffn_down": (inter, hidden),
    }.items():
        results[f"gemm_gflops_1thread_{name}"] = gemm_gflops(rows, k, n, repeats=args.repeats)
    ceilings = {
        "burst": max(float(results[f"gemm_gflops_1thread_{n}"]) for n in ("qkvo", "ffn_up", "ffn_down")),
        "sustained": gemm_gflops(rows, hidden, inter, seconds=args.sustain),
    }
    print(f"{'':34s} {'naive':>10s} {'ours':>10s}")
    print(f"{'tokens computed':34s} {results['tokens_naive']:>10,} {results['tokens_ours']:>10,}")
    print(
        f"{'GFLOP (linear + attention)':34s} {results['gflop_naive']:>10.0f} {results['gflop_ours']:>10.0f}"
    )
    for kind, rate in ceilings.items():
        results[f"gemm_gflops_1thread_{kind}"] = rate
        print(f"1-thread fp32 GEMM, {kind}: {rate:.1f} GFLOP/s")
    if args.cpu_seconds:
        naive_seconds, ours_seconds = args.cpu_seconds
        results |= {"cpu_seconds_naive": naive_seconds, "cpu_seconds_ours": ours_seconds}
        for name, seconds in (("naive", naive_seconds), ("ours", ours_seconds)):
            achieved = float(results[f"gflop_{name}"]) / seconds
            results[f"achieved_gflops_per_cpu_second_{name}"] = achieved
            print(f"{name}: {achieved:.1f} GFLOP per CPU-second", end="")
            for kind, rate in ceilings.items():
                results[f"achieved_share_of_{kind}_gemm_{name}"] = achieved / rate
                print(f", {achieved / rate:.0%} of the {kind} rate", end="")
            print()
        for kind, rate in ceilings.items():
            # our batches' work done at that rate, against the naive command's measured CPU seconds
            best = naive_seconds / (float(results["gflop_ours"]) / rate)
            results[f"best_fp32_speedup_over_naive_at_{kind}_gemm"] = best
            print(f"best fp32 speed-up over naive, our batches at the {kind} GEMM rate: {best:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
