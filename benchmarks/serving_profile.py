"""Where ``Recommender.recommend`` spends its time: per-stage CPU per request, in process.

Run from the project root::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.serving_profile --home H

It loads the current bundle of the BentoML home ``H`` (as the service does), reads user records from
the online store ``recsys train`` loaded, and answers the same request mix as ``benchmarks.serving``
(real user ids of ``--interactions``, the bundled MovieLens by default, 10% unknown, n=10), one
request at a time. Every stage is timed by wrapping the function that does it (thread CPU time, so
other processes on the machine do not count), and the total
is the whole ``recommend`` call (the rest of it, history rows, filters and the popularity fallback, is
what the listed stages leave); ``store`` is the online-store read the service does first. Prints the
median and mean milliseconds per request of each stage and, with ``--out``, writes them as flat JSON
(``<stage>_median_ms``, ``<stage>_mean_ms``) with the run's provenance.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import start_run, write_results
from benchmarks.serving import request_bodies


class Stages:
    """Thread-CPU milliseconds per stage of the current request; nested stages count in both."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.requests: list[dict[str, float]] = []

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        original: Callable[..., Any] | None = getattr(owner, attribute, None)
        if original is None:  # a stage this version of the code does not have
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[label] += 1000 * (time.thread_time() - t0)

        setattr(owner, attribute, timed)

    def done(self) -> None:
        self.requests.append(dict(self.current))
        self.current.clear()


def instrument(recommender: Any, stages: Stages) -> None:
    from feature_store import serving as fs_serving
    from recsys.pipeline import two_stage
    from recsys.ranking import features as F

    model = recommender.model
    for name, generator in model.generators_.items():
        stages.wrap(generator, "recommend", f"source {name}")
    stages.wrap(model.ranker_, "predict", "ranker predict")
    stages.wrap(two_stage, "blend", "blend")
    stages.wrap(F, "retriever_features", "features: retriever")
    stages.wrap(model, "last_item_features", "features: last item")
    stages.wrap(fs_serving.ServingFeatures, "__call__", "features: store")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="BENTOML_HOME with a published bundle.")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--interactions", type=Path, default=None, help="Where real user ids come from.")
    parser.add_argument(
        "--compile-ranker",
        action="store_true",
        help="Compile the ranker first, as `recsys serve --compile-ranker`.",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the per-stage figures.")
    args = parser.parse_args()
    started = start_run()
    os.environ["BENTOML_HOME"] = str(args.home.resolve())

    from feature_store.online import open_store
    from feature_store.record import history as history_of
    from recsys.data.loading import bundled_paths
    from recsys.pipeline import registry
    from recsys.pipeline.recommender import Recommender

    version = registry.current()
    recommender = Recommender.load(version.path, compile_ranker=args.compile_ranker)
    store = open_store(registry.default_online_store_url())
    interactions = args.interactions or bundled_paths()[1]
    bodies = request_bodies(interactions, unknown_share=0.1, count=args.requests, seed=0)
    users = [json.loads(b)["user_id"] for b in bodies]
    for user in users[:20]:  # warm-up
        record = store.get_records([user])[0]
        recommender.recommend(history_of(record), n=10, user_features=record)

    stages = Stages()
    instrument(recommender, stages)
    for user in users:
        t0 = time.thread_time()
        record = store.get_records([user])[0]
        stages.current["store"] += 1000 * (time.thread_time() - t0)
        t0 = time.thread_time()
        recommender.recommend(history_of(record), n=10, user_features=record)
        stages.current["recommend (total)"] += 1000 * (time.thread_time() - t0)
        stages.done()

    names = sorted({k for r in stages.requests for k in r}, key=lambda k: (k != "recommend (total)", k))
    summary: dict[str, Any] = {"model": version.tag, "requests": len(users)}
    print(f"model {version.tag}; {len(users)} requests; thread CPU ms per request")
    print(f"{'stage':28s} {'median':>8s} {'mean':>8s}")
    for name in names:
        values = np.array([r.get(name, 0.0) for r in stages.requests])
        summary[f"{name}_median_ms"] = float(np.median(values))
        summary[f"{name}_mean_ms"] = float(values.mean())
        print(f"{name:28s} {np.median(values):8.3f} {values.mean():8.3f}")
    if args.out is not None:
        write_results("serving_profile", summary, params=vars(args), started=started, out=args.out)


if __name__ == "__main__":
    main()
