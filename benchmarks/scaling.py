"""Cost growth: every training stage's time and memory, the bundle's size and ``/recommend`` latency,
as interactions grow over 100k, 1M, 10M and the catalogue over 10k, 100k, 1M items.

Run from the project root (heavy: under the shared lock)::

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.scaling      # the design below, ~45 min
    .venv/bin/python -m benchmarks.scaling --quick                     # tiny sizes, under a minute

**Design** (not the full 3 x 3 grid): two one-at-a-time axes through (1M interactions, 10k items),
interactions 100k/1M/10M at 10k items and items 10k/100k/1M at 1M interactions, plus the diagonal
(100k, 10k) -> (1M, 100k) -> (10M, 1M), where both grow tenfold at each step. Six points, run
smallest first. Each point is a synthetic shop (``benchmarks.synthetic``, about 20 events per user)
run through the pipeline's stages in a child process of its own (``benchmarks.scaling_stages``,
which says what each stage and its memory figure include). The served bundle is published into the
point's own BentoML home, served by ``recsys serve`` (one worker) and driven by the client of
``benchmarks.serving`` at concurrency 1 for ``--serve-seconds``.

**Embedding** is measured on an axis of its own (``--embed-items``, real BERT through ``embed_items``
on ONNX Runtime or torch, no cache); the pipeline points use the generator's clustered embeddings,
and the embedding time of their catalogues is extrapolated from the measured rate: seconds = items /
(items per second at the largest measured size), stated per point as "extrapolated".

**Guards.** A stage whose time, predicted from the smaller points, exceeds ``--stage-budget-s`` is not
run; a stage still running after it, or RSS over ``--memory-limit-mb``, ends the point; a child is
killed after ``--point-budget-s``. The prediction from a smaller point Q is ``t_Q x max(I/I_Q,
M/M_Q)`` (linear in the size that grew more; the lowest over the smaller points). The table marks
each figure "measured" or how it was stopped; a stage not measured is extrapolated with the growth
exponents measured on the axes
(``t_Q x (I/I_Q)^b_I x (M/M_Q)^b_M`` from the largest measured point), marked "extrapolated".

**Exponents.** Per stage and axis, the slope of the least-squares line through (log size, log
seconds) over the measured points of that axis (two or three), for the time and for the memory the
stage added at its peak.

**Engines** (``--engine local ray``): with ``ray``, each point and each embedding size also runs the
Ray engine's stages in a child of its own on a local Ray instance (``benchmarks.scaling_ray``): the
rows ``features@ray`` and ``ranker_train@ray`` beside the local ``features`` and ``ranker_train``,
and on the embedding axis ``embedding@ray``, ``finetune`` and ``finetune@ray``.

**Merging runs** (``--merge FILE ...``): a point this run does not measure is taken from an earlier
run's results file when that file measured it (each such point's ``merged_from`` names the file), so
that one table, plot and set of exponents can span points too long to measure in one sitting.

Writes ``benchmarks/results/scaling.json`` (flat ``<point>.<stage>.<figure>``,
``exponent.<axis>.<stage>.<figure>``, ``embedding.*``) and the log-log plot ``docs/scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import ROOT, start_run, write_results
from benchmarks.scaling_ray import (
    EMBED_STAGES,
    POINT_STAGES,
    SUFFIX,
    ray_embed_point,
    ray_point,
    stop_leftovers,
)
from benchmarks.scaling_stages import Guards, Point, embed_point, run_point

FULL_AXES = {
    "interactions": [(100_000, 10_000), (1_000_000, 10_000), (10_000_000, 10_000)],
    "items": [(1_000_000, 10_000), (1_000_000, 100_000), (1_000_000, 1_000_000)],
    "diagonal": [(100_000, 10_000), (1_000_000, 100_000), (10_000_000, 1_000_000)],
}
# a tenth of the catalogue and a tenth to a hundredth of the events: a run that stays light enough to
# share a busy 2-core machine, for the growth exponents at small sizes
SMALL_AXES = {
    "interactions": [(10_000, 1_000), (100_000, 1_000)],
    "items": [(10_000, 1_000), (10_000, 10_000)],
    "diagonal": [(10_000, 1_000), (100_000, 10_000)],
}
QUICK_AXES = {
    "interactions": [(2_000, 200), (4_000, 200)],
    "items": [(4_000, 200), (4_000, 400)],
    "diagonal": [(2_000, 200), (4_000, 400)],
}
# the quick mode's ranker: one booster, few rounds (the default bag of five takes minutes on a busy machine)
QUICK_MODEL = {"ranker": {"bags": 1, "max_rounds": 30}}
AXIS_SIZE = {"interactions": 0, "items": 1, "diagonal": 0}  # which size an axis's exponent is over


def design(axes: dict[str, list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """Every point of the axes once, smallest (interactions x items) first."""
    return sorted({p for points in axes.values() for p in points}, key=lambda p: (p[0] * p[1], p))


def predict(stage: str, size: tuple[int, int], done: dict[tuple[int, int], dict[str, Any]]) -> float | None:
    """The guard's prediction of ``stage`` at ``size``: linear in the size that grew more since a
    smaller point (the lowest over those points). Linear in both would skip, at ten times the items,
    every stage that does not read them (the ranker's training, say)."""
    guesses = [
        seconds * max(size[0] / q[0], size[1] / q[1])
        for q, stages in done.items()
        if q[0] <= size[0] and q[1] <= size[1] and q != size
        if (seconds := _seconds(stages.get(stage, {}))) is not None
    ]
    return min(guesses) if guesses else None


def _seconds(stage: dict[str, Any]) -> float | None:
    """Measured seconds, or the lower bound a stopped stage reached."""
    return stage.get("seconds", stage.get("seconds_at_least"))


def run_child(target: Any, args: tuple[Any, ...], out: Path, *, timeout: float) -> dict[str, Any]:
    """``target(*args)`` in a fresh (spawned) process, killed after ``timeout`` s; its JSON from
    ``out``, a stage still running then marked so."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    start = time.perf_counter()
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
    record = json.loads(out.read_text()) if out.exists() else {"stages": {}, "facts": {}}
    for stage in record["stages"].values():
        if stage.get("status") == "running":  # the point's budget ran out (or the child died)
            stage["status"] = (
                "stopped-point-budget"
                if process.exitcode is None or process.exitcode < 0
                else (f"died-exit-{process.exitcode}")
            )
    record["exitcode"] = process.exitcode
    record["seconds"] = time.perf_counter() - start
    return record


def serve(work: Path, *, seconds: float) -> dict[str, float]:
    """``/recommend`` p50/p99 (ms, concurrency 1) and peak server RSS on the point's published bundle."""
    from benchmarks.harness.process import free_port, recsys_serve_command, running
    from benchmarks.serving import measure, request_bodies

    bodies = request_bodies(work / "data" / "interactions.parquet", unknown_share=0.05, count=2_000, seed=0)
    port = free_port()
    env = {"BENTOML_HOME": str(work / "bentoml"), "RECSYS_WORKERS": "1"}
    with running(recsys_serve_command(port=port), port=port, env=env, timeout=900.0) as server:
        found = measure("recsys", server, bodies, levels=[1], duration=seconds, warmup=min(3.0, seconds))
    return {
        k.removeprefix("recsys_c1_"): v
        for k, v in found.items()
        if k.endswith(("p50_ms", "p99_ms", "rss_mb", "errors"))
    }


def exponent(sizes: list[float], values: list[float]) -> float | None:
    """Slope of log(value) on log(size) by least squares; None under two positive points.

    >>> round(exponent([1e5, 1e6, 1e7], [2.0, 20.0, 200.0]), 3)
    1.0
    """
    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v is not None and v > 0]
    if len({s for s, _ in pairs}) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def exponents(axes: dict[str, list[tuple[int, int]]], done: dict[tuple[int, int], dict[str, Any]],
              stages: list[str]) -> dict[str, float | None]:  # fmt: skip
    """``{axis.stage.seconds|added_rss_mb: exponent}`` over each axis's measured points."""
    out: dict[str, float | None] = {}
    for axis, points in axes.items():
        for stage in stages:
            measured = [
                (p, done[p][stage]) for p in points if done[p].get(stage, {}).get("status") == "measured"
            ]
            sizes = [float(p[AXIS_SIZE[axis]]) for p, _ in measured]
            out[f"{axis}.{stage}.seconds"] = exponent(sizes, [s["seconds"] for _, s in measured])
            added = [max(s["peak_rss_mb"] - s["rss_start_mb"], 1.0) for _, s in measured]
            out[f"{axis}.{stage}.added_rss_mb"] = exponent(sizes, added)
    return out


def extrapolate(stage: str, size: tuple[int, int], done: dict[tuple[int, int], dict[str, Any]],
                slopes: dict[str, float | None]) -> float | None:  # fmt: skip
    """``t_Q x (I/I_Q)^b_I x (M/M_Q)^b_M`` from the largest smaller point Q where ``stage`` was
    measured; an exponent not measured counts as 1."""
    measured = [q for q, s in done.items() if s.get(stage, {}).get("status") == "measured"
                and q[0] <= size[0] and q[1] <= size[1]]  # fmt: skip
    if not measured:
        return None
    q = max(measured, key=lambda p: p[0] * p[1])
    b_i = slopes.get(f"interactions.{stage}.seconds") or 1.0
    b_m = slopes.get(f"items.{stage}.seconds") or 1.0
    return float(done[q][stage]["seconds"] * (size[0] / q[0]) ** b_i * (size[1] / q[1]) ** b_m)


def flat_figures(done: dict[tuple[int, int], dict[str, Any]], facts: dict[tuple[int, int], dict[str, Any]],
                 slopes: dict[str, float | None], stages: list[str]) -> dict[str, Any]:  # fmt: skip
    """The results file's flat figures (module docstring)."""
    out: dict[str, Any] = {}
    for size, stage_records in done.items():
        name = Point(*size).name
        for fact, value in facts[size].items():
            if isinstance(value, str | int | float | bool):
                out[f"{name}.{fact}"] = value
        for stage in stages:
            record = stage_records.get(stage, {"status": "not-run"})
            out[f"{name}.{stage}.status"] = record["status"]
            if record["status"] == "measured":
                out[f"{name}.{stage}.seconds"] = record["seconds"]
                out[f"{name}.{stage}.peak_rss_mb"] = record["peak_rss_mb"]
                out[f"{name}.{stage}.added_rss_mb"] = record["peak_rss_mb"] - record["rss_start_mb"]
            else:
                out[f"{name}.{stage}.seconds_extrapolated"] = extrapolate(stage, size, done, slopes)
                if _seconds(record) is not None:
                    out[f"{name}.{stage}.seconds_at_least"] = _seconds(record)
    out |= {f"exponent.{key}": value for key, value in slopes.items()}
    return out


def embedding_axis(sizes: list[int], work: Path, *, timeout: float) -> dict[str, Any]:
    """BERT on catalogues of ``sizes`` items, each in a child; the measured rate and its exponent."""
    out: dict[str, Any] = {}
    measured: list[tuple[int, float]] = []
    for n in sizes:
        record = run_child(
            embed_point, (n, work / f"embed{n}.json"), work / f"embed{n}.json", timeout=timeout
        )
        stage = record["stages"].get("embedding", {"status": "not-run"})
        out[f"embedding.m{n}.status"] = stage["status"]
        if stage["status"] == "measured":
            measured.append((n, stage["seconds"]))
            out[f"embedding.m{n}.seconds"] = stage["seconds"]
            out[f"embedding.m{n}.peak_rss_mb"] = stage["peak_rss_mb"]
        print(
            f"  embedding {n:>8,} items: {stage['status']} {stage.get('seconds', float('nan')):8.1f} s",
            flush=True,
        )
    if measured:
        n, seconds = measured[-1]
        out["embedding.items_per_s"] = n / seconds
        out["embedding.exponent"] = exponent([float(m) for m, _ in measured], [s for _, s in measured])
    return out


def ray_embedding_axis(
    sizes: list[int], work: Path, *, timeout: float, workers: int | None
) -> dict[str, Any]:
    """The Ray engine's embedding and the head's fine-tuning, local and on Ray, at each of ``sizes``
    (``benchmarks.scaling_ray.ray_embed_point``, each size in a child)."""
    out: dict[str, Any] = {}
    for n in sizes:
        path = work / f"embed{n}{SUFFIX}.json"
        record = run_child(ray_embed_point, (n, path, workers), path, timeout=timeout)
        stop_leftovers(record["facts"].get("ray_pids", []))
        out[f"embedding.m{n}.ray_workers"] = record["facts"].get("ray_workers")
        for stage in ("finetune", *(f"{s}{SUFFIX}" for s in EMBED_STAGES)):
            figures = record["stages"].get(stage, {"status": "not-run"})
            out[f"embedding.m{n}.{stage}.status"] = figures["status"]
            if figures["status"] == "measured":
                out[f"embedding.m{n}.{stage}.seconds"] = figures["seconds"]
                out[f"embedding.m{n}.{stage}.peak_rss_mb"] = figures["peak_rss_mb"]
            print(f"  {stage:14s} {n:>8,} items: {figures['status']} "
                  f"{figures.get('seconds', float('nan')):8.1f} s", flush=True)  # fmt: skip
    return out


def print_table(figures: dict[str, Any], sizes: list[tuple[int, int]], stages: list[str]) -> None:
    print(f"\n{'stage':16s}" + "".join(f"{Point(*s).name:>22s}" for s in sizes))
    for stage in stages:
        cells = []
        for size in sizes:
            key = f"{Point(*size).name}.{stage}"
            if figures.get(f"{key}.status") == "measured":
                cells.append(f"{figures[f'{key}.seconds']:9.1f}s {figures[f'{key}.peak_rss_mb']:7.0f}MB")
            else:
                guess = figures.get(f"{key}.seconds_extrapolated")
                cells.append(
                    f"~{guess:8.0f}s (extrap.)" if guess else f"{figures.get(f'{key}.status', '-'):>20s}"
                )
        print(f"{stage:16s}" + "".join(f"{c:>22s}" for c in cells))
    for fact in ("bundle_mb", "serve_p50_ms", "serve_p99_ms", "serve_rss_mb"):
        values = [figures.get(f"{Point(*s).name}.{fact}") for s in sizes]
        print(
            f"{fact:16s}" + "".join(f"{v:22.1f}" if isinstance(v, float) else f"{'-':>22s}" for v in values)
        )


def plot(
    figures: dict[str, Any], axes: dict[str, list[tuple[int, int]]], stages: list[str], out: Path
) -> None:
    """Seconds against size on log-log axes, one panel per axis; hollow markers: extrapolated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(axes), figsize=(6 * len(axes), 5), sharey=True)
    for panel, (axis, points) in zip(np.atleast_1d(panels), axes.items(), strict=True):
        panel.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # one colour per stage
        for stage in stages:
            xs, ys, hollow = [], [], []
            for size in points:
                key = f"{Point(*size).name}.{stage}"
                value = figures.get(f"{key}.seconds") or figures.get(f"{key}.seconds_extrapolated")
                if value:
                    xs.append(size[AXIS_SIZE[axis]])
                    ys.append(value)
                    hollow.append(figures.get(f"{key}.status") != "measured")
            if not xs:
                continue
            (line,) = panel.plot(xs, ys, "-", label=stage)
            for x, y, h in zip(xs, ys, hollow, strict=True):
                panel.plot(x, y, "o", color=line.get_color(), fillstyle="none" if h else "full")
        label = {"interactions": "interactions (items fixed)", "items": "items (interactions fixed)",
                 "diagonal": "interactions (items = interactions / 10)"}[axis]  # fmt: skip
        panel.set(xscale="log", yscale="log", xlabel=label, title=axis)
        panel.grid(True, which="both", alpha=0.3)
    np.atleast_1d(panels)[0].set_ylabel("seconds (hollow: extrapolated)")
    np.atleast_1d(panels)[-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


STAGES = ["generate", "ingest", "ranker_rows", "ranker_train", "source_als", "source_itemknn",
          "source_cooccurrence", "source_text", "source_popularity", "source_sequential",
          "features", "bundle_write", "publish"]  # fmt: skip


def merged(files: list[Path], sizes: list[tuple[int, int]], stages: list[str]) -> dict[tuple[int, int], Any]:
    """``{size: (stage records, facts)}`` of the points that earlier results ``files`` measured (the
    first file that has a point wins), rebuilt from their flat figures (:func:`flat_figures`)."""
    out: dict[tuple[int, int], Any] = {}
    for file in files:
        figures = json.loads(file.read_text())
        for size in (size for size in sizes if size not in out):
            name = Point(*size).name
            records = {
                stage: {figure: figures[f"{name}.{stage}.{figure}"]
                        for figure in ("status", "seconds", "peak_rss_mb", "seconds_at_least")
                        if f"{name}.{stage}.{figure}" in figures}
                for stage in stages if figures.get(f"{name}.{stage}.status", "not-run") != "not-run"
            }  # fmt: skip
            if not records:
                continue
            for stage, record in records.items():
                if record["status"] == "measured":
                    record["rss_start_mb"] = record["peak_rss_mb"] - figures[f"{name}.{stage}.added_rss_mb"]
            facts = {key.partition(".")[2]: value for key, value in figures.items()
                     if key.startswith(f"{name}.") and key.count(".") == 1}  # fmt: skip
            out[size] = (records, facts | {"merged_from": str(file)})
    return out


def chosen_points(points: list[str] | None, sizes: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The sizes ``--points`` names (every size without it); a point outside the design is an error.

    >>> sorted(chosen_points(["1000x10"], [(1000, 10), (10, 10)]))
    [(1000, 10)]
    """
    if points is None:
        return set(sizes)
    chosen = set()
    for text in points:
        interactions, _, items = text.partition("x")
        if not (interactions.isdigit() and items.isdigit()) or (int(interactions), int(items)) not in sizes:
            known = " ".join(f"{i}x{m}" for i, m in sizes)
            raise SystemExit(f"--points: {text!r} is not a point of the design ({known})")
        chosen.add((int(interactions), int(items)))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes (under a minute), for tests.")
    parser.add_argument("--small", action="store_true", help="10k-100k events, 1k-10k items (light).")
    parser.add_argument("--stage-budget-s", type=float, default=None, help="default 300 (quick: 120)")
    parser.add_argument("--point-budget-s", type=float, default=None, help="default 900 (quick: 300)")
    parser.add_argument("--total-budget-s", type=float, default=2700.0, help="Points after it: not run.")
    parser.add_argument("--memory-limit-mb", type=float, default=10_000.0)
    parser.add_argument("--serve-seconds", type=float, default=None, help="default 15 (quick: 2)")
    parser.add_argument(
        "--embed-items", type=int, nargs="*", default=None, help="default 500 2000 (quick: none)"
    )
    parser.add_argument(
        "--engine", nargs="+", choices=["local", "ray"], default=["local"],
        help="Engines whose stages are measured (ray: a local Ray instance on 2 CPUs).",
    )  # fmt: skip
    parser.add_argument("--ray-workers", type=int, default=None, help="default: the Ray engine's own")
    parser.add_argument("--no-sequential", action="store_true", help="Skip the sequential source's fit.")
    parser.add_argument(
        "--points", nargs="+", default=None, metavar="IxM",
        help="Only these points of the design, as INTERACTIONSxITEMS (1000000x10000); the others: not run.",
    )  # fmt: skip
    parser.add_argument("--skip-stages", nargs="+", default=[], choices=STAGES, help="Stages not run.")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], metavar="FILE",
                        help="Earlier results: their points this run does not measure.")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("/tmp/recsys-scaling"), help="Scratch (emptied).")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/scaling.json")
    parser.add_argument("--plot", type=Path, default=None, help="default docs/scaling.png")
    args = parser.parse_args()
    started = start_run()
    quick = args.quick
    args.stage_budget_s = args.stage_budget_s or (120.0 if quick else 300.0)
    args.point_budget_s = args.point_budget_s or (300.0 if quick else 900.0)
    args.serve_seconds = args.serve_seconds or (2.0 if quick else 15.0)
    args.embed_items = args.embed_items if args.embed_items is not None else ([] if quick else [500, 2000])
    axes = QUICK_AXES if quick else SMALL_AXES if args.small else FULL_AXES
    sizes = design(axes)
    chosen = chosen_points(args.points, sizes)
    clock = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    done: dict[tuple[int, int], dict[str, Any]] = {}
    facts: dict[tuple[int, int], dict[str, Any]] = {}
    embedded = embedding_axis(args.embed_items, args.work, timeout=args.point_budget_s)  # first: cheap
    if "ray" in args.engine:
        embedded |= ray_embedding_axis(
            args.embed_items, args.work, timeout=args.point_budget_s, workers=args.ray_workers
        )
    stages = (STAGES if "local" in args.engine else []) + (
        [f"{s}{SUFFIX}" for s in POINT_STAGES] if "ray" in args.engine else []
    )
    earlier = merged(args.merge, sizes, stages)
    for size in sizes:
        if size not in chosen:
            done[size], facts[size] = earlier.get(size, ({}, {"not_run": "not in --points"}))
            continue
        left = args.total_budget_s - (time.perf_counter() - clock)
        if left < 60:
            print(f"{Point(*size).name}: not run, the total budget is spent", flush=True)
            done[size], facts[size] = {}, {"not_run": "total budget spent"}
            continue
        standalone = () if args.no_sequential or quick else ("sequential",)
        point = Point(*size, standalone=standalone, model=QUICK_MODEL if quick else {})
        work = args.work / point.name
        work.mkdir()
        predicted = {s: p for s in stages if (p := predict(s, size, done)) is not None}
        guards = Guards(args.stage_budget_s, args.memory_limit_mb, predicted, tuple(args.skip_stages))
        print(f"{point.name}: {size[0]:,} interactions, {size[1]:,} items", flush=True)
        done[size], facts[size] = {}, {}
        if "local" in args.engine:
            record = run_child(run_point, (point, guards, work, work / "stages.json"), work / "stages.json",
                               timeout=min(args.point_budget_s, left))  # fmt: skip
            done[size], facts[size] = record["stages"], record["facts"] | {"exitcode": record["exitcode"]}
        if "ray" in args.engine:  # after the local child: its own child, its own Ray instance
            (work / "ray").mkdir()
            left = max(60.0, args.total_budget_s - (time.perf_counter() - clock))
            on_ray = run_child(ray_point, (point, guards, work / "ray", work / "ray.json", args.ray_workers),
                               work / "ray.json", timeout=min(args.point_budget_s, left))  # fmt: skip
            stop_leftovers(on_ray["facts"].pop("ray_pids", []))
            done[size] |= on_ray["stages"]
            facts[size] |= on_ray["facts"] | {"ray_exitcode": on_ray["exitcode"]}
        for stage, figures in done[size].items():
            print(f"  {stage:20s} {figures['status']:18s} {figures.get('seconds', float('nan')):9.1f} s  "
                  f"peak {figures.get('peak_rss_mb', float('nan')):8.0f} MB", flush=True)  # fmt: skip
        if facts[size].get("published") and (size == sizes[-1] or not quick):  # quick: serve one
            facts[size] |= {f"serve_{k}": v for k, v in serve(work, seconds=args.serve_seconds).items()}
        shutil.rmtree(work / "data", ignore_errors=True)
        shutil.rmtree(work / "ray", ignore_errors=True)
        shutil.rmtree(work / "bentoml", ignore_errors=True)
    slopes = exponents(axes, done, stages)
    figures = flat_figures(done, facts, slopes, stages) | embedded
    rate = figures.get("embedding.items_per_s")
    for size in done:
        if rate:
            figures[f"{Point(*size).name}.embedding.seconds_extrapolated"] = size[1] / rate
    print_table(figures, design(axes), stages)
    figures |= {
        "design": json.dumps({a: [list(p) for p in ps] for a, ps in axes.items()}),
        "cpu_count": os.cpu_count(),
    }
    plot(figures, axes, [s for s in stages if s != "generate"], args.plot or ROOT / "docs" / "scaling.png")
    out = write_results("scaling", figures, params=vars(args), started=started, out=args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
