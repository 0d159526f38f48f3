"""ANN retrieval at catalogue scale: the IVF index of ``recsys.candidates.ann`` against exact scoring.

Synthetic text-like embeddings, not uniform noise: ``clusters`` topics of Pareto-distributed sizes
(a few large, many small) grouped under broader themes, each with its own spread, all sharing a common
direction (sentence embeddings are anisotropic: two random titles have cosine ~0.1, near neighbours
~0.8). Queries are built like user profiles: the normalised mean of 2-5 items from one or two
clusters, clusters drawn by size. Everything is seeded.

Per query, one at a time, as a service worker answers (one thread): the exact top-100 (``q @ Y.T``
and a partial sort, as the text source scores) and the index's top-100. Recall@100 is against the
exact top-100, as the mean over queries and the worst query. ``--probes`` sweeps the cells scanned;
the figures without prefix are those of the default ``AnnConfig``. ``--hnsw`` also builds the HNSW
graphs of FAISS and of hnswlib on the same vectors (the library and method comparison; hnswlib is not
a dependency of the project, install it to run this; at 1M each graph takes ~15 min to build)::

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.ann                       # 1,000,000 items
    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.ann --items 100000 --hnsw --out ...
    .venv/bin/python -m benchmarks.ann --quick                                      # 20,000 items
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import start_run, write_results
from recsys.candidates.ann import AnnConfig, AnnIndex, exact_top_k, recall_per_row
from recsys.data.dataset import Histories

K = 100


def catalogue(n: int, dim: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit vectors and (n,) cluster of each; see the module docstring."""
    rng = np.random.default_rng(seed)
    clusters = max(10, n // 500)
    themes = _unit(rng.standard_normal((max(5, clusters // 40), dim)).astype(np.float32))
    noise = rng.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
    centres = themes[rng.integers(0, len(themes), clusters)] + 0.8 * noise  # (clusters, dim)
    centres += 0.5 * _unit(rng.standard_normal((1, dim)).astype(np.float32))  # the common direction
    sizes = rng.pareto(1.2, clusters) + 1.0
    cluster = rng.choice(clusters, n, p=sizes / sizes.sum()).astype(np.int32)
    spread = np.exp(rng.normal(np.log(0.8), 0.35, clusters)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in chunks: the noise of 1M x 384 at once would be 1.5 GB more
        c = cluster[start : start + 100_000]
        x = centres[c] + spread[c, None] * rng.standard_normal((len(c), dim), dtype=np.float32) / np.sqrt(dim)
        out[start : start + len(c)] = _unit(x)
    return out, cluster


def profiles(vectors: np.ndarray, cluster: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """(count, dim) user-profile queries: the normalised mean of 2-5 items of one or two clusters."""
    return profiles_and_histories(vectors, cluster, count, seed=seed)[0]


def profiles_and_histories(
    vectors: np.ndarray, cluster: np.ndarray, count: int, *, seed: int
) -> tuple[np.ndarray, Histories]:
    """:func:`profiles`, and the items each profile was made of (the user's history)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[order], np.arange(cluster.max() + 2))
    queries = np.empty((count, vectors.shape[1]), np.float32)
    histories = []
    for q in range(count):
        picked = []
        for c in cluster[rng.integers(0, len(cluster), rng.integers(1, 3))]:  # clusters drawn by size
            members = order[starts[c] : starts[c + 1]]
            picked.append(rng.choice(members, int(rng.integers(1, 4))))
        histories.append(np.concatenate(picked))
        queries[q] = vectors[histories[-1]].mean(axis=0)
    return _unit(queries), Histories.from_lists(histories)


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def latencies_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    """Milliseconds of ``search`` on each query alone, as a (1, dim) batch."""
    out = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        search(queries[i : i + 1])
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_ivf(
    vectors: np.ndarray,
    queries: np.ndarray,
    histories: Histories,
    truth: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Our index: build, save, load, then each ``--probes`` setting, one query at a time."""
    import faiss

    start = time.perf_counter()
    index = AnnIndex.build(vectors, AnnConfig(min_items=1))
    figures: dict[str, Any] = {"build_seconds": time.perf_counter() - start, "lists": int(index.index.nlist)}
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "ann")
        figures["index_bytes"] = (Path(tmp) / "ann" / "index.faiss").stat().st_size
        start = time.perf_counter()
        index = AnnIndex.load(Path(tmp) / "ann")
        figures["load_seconds"] = time.perf_counter() - start
    figures["rss_mb_with_index"] = rss_mb()[0]
    faiss.omp_set_num_threads(1)  # one worker, one core
    default = AnnConfig().probes
    for probes in sorted({*args.probes, default}):
        index.config = AnnConfig(min_items=1, probes=probes)
        prefix = "" if probes == default else f"probes{probes}."
        figures |= _figures(
            prefix, "faiss-ivf", f"probes={probes}", lambda q: index.search(q, K)[0], queries, truth
        )
    index.config = AnnConfig(min_items=1)
    figures["ranked_p50_ms"] = float(np.median(ranked_ms(index, vectors, queries, histories)))
    print(f"faiss-ivf  a source's request (search, drop the history): p50 {figures['ranked_p50_ms']:.3f} ms")
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return figures


def _figures(
    prefix: str,
    label: str,
    setting: str,
    search: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    truth: np.ndarray,
) -> dict[str, Any]:
    """Recall (mean, worst query) of ``search`` over all queries, and its one-query latencies."""
    ms = latencies_ms(search, queries)
    recall = recall_per_row(np.asarray(search(queries), dtype=np.int64), truth)
    p50, p99 = float(np.median(ms)), float(np.percentile(ms, 99))
    print(
        f"{label:10s} {setting:12s} recall@100 {recall.mean():.4f} (worst {recall.min():.2f})"
        f"  p50 {p50:.3f} ms  p99 {p99:.3f} ms"
    )
    return {
        f"{prefix}recall_at_100": float(recall.mean()),
        f"{prefix}recall_at_100_worst": float(recall.min()),
        f"{prefix}ann_p50_ms": p50,
        f"{prefix}ann_p99_ms": p99,
    }


def measure_hnsw(
    vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """The graphs we did not keep: FAISS's HNSW (M=32) and hnswlib's (M=16), efConstruction 100."""
    import faiss
    import hnswlib

    threads = os.cpu_count() or 1
    figures: dict[str, Any] = {}
    start = time.perf_counter()
    graph = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 100
    graph.add(vectors)
    figures["faiss_hnsw.build_seconds"] = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    for ef in sorted(set(args.ef)):
        params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]

        def search(q: np.ndarray, params: Any = params, graph: Any = graph) -> np.ndarray:
            return np.asarray(graph.search(q, K, params=params)[1])

        figures |= _figures(f"faiss_hnsw.ef{ef}.", "faiss-hnsw", f"ef={ef}", search, queries, truth)
    faiss.omp_set_num_threads(threads)
    del graph
    gc.collect()
    start = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=16, ef_construction=100, random_seed=0)
    index.set_num_threads(threads)
    index.add_items(vectors)
    figures["hnswlib.build_seconds"] = time.perf_counter() - start
    index.set_num_threads(1)
    for ef in sorted(set(args.ef)):
        index.set_ef(ef)
        figures |= _figures(
            f"hnswlib.ef{ef}.", "hnswlib", f"ef={ef}", lambda q: index.knn_query(q, K)[0], queries, truth
        )
    return figures


def _one(query: np.ndarray, block: Histories) -> tuple[np.ndarray, np.ndarray]:
    return query, np.ones(1, dtype=bool)


def _exact(query: np.ndarray, vectors: np.ndarray, block: Histories) -> np.ndarray:
    return np.asarray(query @ vectors.T)


def ranked_ms(index: AnnIndex, vectors: np.ndarray, queries: np.ndarray, histories: Histories) -> np.ndarray:
    """Milliseconds of ``AnnIndex.ranked`` for one history at a time: what a source's ``recommend``
    adds to the search (over-fetch past the history, drop it, the exact path if a row comes back short)."""
    out = np.empty(len(queries))
    for i in range(len(queries)):
        query, history = queries[i : i + 1], histories.rows(i, i + 1)
        start = time.perf_counter()
        index.ranked(partial(_one, query), partial(_exact, query, vectors), history, K)
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def measure_exact(vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """One query at a time on one BLAS thread, in the text source's layout ((dim, n) columns)."""
    from threadpoolctl import threadpool_limits

    columns = np.ascontiguousarray(vectors.T)  # (dim, n_items)

    def exact(q: np.ndarray) -> None:
        row = (q @ columns)[0]
        np.argpartition(-row, K - 1)[:K]

    with threadpool_limits(limits=1, user_api="blas"):
        ms = latencies_ms(exact, queries)
    return {"exact_p50_ms": float(np.median(ms)), "exact_p99_ms": float(np.percentile(ms, 99))}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000, help="timed one at a time; recall over all")
    parser.add_argument("--exact-queries", type=int, default=50, help="exact top-100 timed one at a time")
    parser.add_argument("--probes", type=_ints, default=[16, 32, 128], help="cells scanned, comma-separated")
    parser.add_argument("--ef", type=_ints, default=[128, 256, 512, 1024], help="HNSW search widths")
    parser.add_argument("--hnsw", action="store_true", help="also FAISS HNSW and hnswlib (not a dependency)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20,000 items, 200 queries: seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.items, args.queries, args.exact_queries = 20_000, 200, 20
    started = start_run()
    vectors, cluster = catalogue(args.items, args.dim, seed=args.seed)
    queries, histories = profiles_and_histories(vectors, cluster, args.queries, seed=args.seed + 1)
    truth = exact_top_k(vectors, queries, K)[0]
    figures: dict[str, Any] = {"items": args.items, "dim": args.dim, "queries": args.queries}
    figures |= {"library": "faiss", "index": "IVFFlat", "probes": AnnConfig().probes}
    figures |= measure_exact(vectors, queries[: args.exact_queries])
    figures["rss_mb_vectors"] = rss_mb()[0]
    print(f"exact    p50 {figures['exact_p50_ms']:.3f} ms  p99 {figures['exact_p99_ms']:.3f} ms")
    figures |= measure_ivf(vectors, queries, histories, truth, args)
    gc.collect()
    if args.hnsw:
        figures |= measure_hnsw(vectors, queries, truth, args)
    figures["rss_mb_peak"] = rss_mb()[1]
    mib, peak = figures["index_bytes"] / 2**20, figures["rss_mb_peak"]
    print(f"build {figures['build_seconds']:.1f} s  index {mib:.0f} MiB  peak RSS {peak:.0f} MB")
    out = write_results("ann", figures, params=vars(args), started=started, out=args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
