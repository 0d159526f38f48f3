"""Dump what ``Recommender.recommend`` answers over the serving benchmark's requests, or compare dumps.

A speed change to the request path must not change the answers. Run this once with the code before
the change and once after (e.g. the old commit unpacked with ``git archive`` into a folder, run from
there with ``PYTHONPATH`` set to it), on the same bundle, then compare::

    .venv/bin/python -P benchmarks/serving_answers.py --home H --out before.json
    .venv/bin/python -P benchmarks/serving_answers.py --compare before.json after.json

Requests: the benchmark's bodies (real demo user ids, 10% unknown), varied so the fallbacks and options
are covered: every 5th asks for n=50, every 11th adds two context items, every 13th keeps seen items,
every 7th passes an (empty) filter. Each answer is ``[item_id, score, sources]`` per item.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def dump(home: Path, requests: int, out: Path) -> None:
    os.environ["BENTOML_HOME"] = str(home.resolve())
    sys.path.insert(0, os.getcwd())  # the checkout being measured (old or new)
    from feature_store.online import open_store
    from feature_store.record import history
    from recsys.data.loading import bundled_paths
    from recsys.pipeline import registry
    from recsys.pipeline.recommender import Filters, Recommender

    # benchmarks/serving.py by path: on sys.path its name would shadow the ``serving`` package
    spec = importlib.util.spec_from_file_location("serving_benchmark", ROOT / "benchmarks" / "serving.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bodies = bench.request_bodies(bundled_paths()[1], unknown_share=0.1, count=requests, seed=0)

    recommender = Recommender.load(registry.current().path)
    store = open_store(registry.default_online_store_url())
    context = [str(recommender._ids[0]), str(recommender._ids[49])]
    answers: list[list[Any]] = []
    for i, body in enumerate(bodies):
        record = store.get_user([json.loads(body)["user_id"]]).to_pylist()[0]
        recs = recommender.recommend(
            history(record),
            n=50 if i % 5 == 0 else 10,
            user_features=record,
            context_item_ids=context if i % 11 == 0 else [],
            exclude_seen=bool(i % 13),
            filters=Filters() if i % 7 == 3 else None,
        )
        answers.append([[r.item_id, r.score, list(r.sources)] for r in recs])
    out.write_text(json.dumps({"model": registry.current().tag, "answers": answers}))
    print(f"wrote {len(answers)} answers to {out}")


def compare(a: Path, b: Path) -> None:
    left, right = (json.loads(p.read_text()) for p in (a, b))
    if left["model"] != right["model"]:
        sys.exit(f"different models: {left['model']} vs {right['model']}")
    pairs = list(zip(left["answers"], right["answers"], strict=True))
    same_items = sum([i[0] for i in x] == [i[0] for i in y] for x, y in pairs)
    same_sources = sum([i[2] for i in x] == [i[2] for i in y] for x, y in pairs)
    identical = sum(x == y for x, y in pairs)
    diffs = [abs(i[1] - j[1]) for x, y in pairs for i, j in zip(x, y, strict=False)]
    print(
        f"{len(pairs)} answers: same items in order {same_items}, same sources {same_sources}, "
        f"identical (items, scores, sources) {identical}; max |score difference| {max(diffs, default=0.0):g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, help="BENTOML_HOME with a published bundle.")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, help="Where to write the answers (JSON).")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.home and args.out:
        dump(args.home, args.requests, args.out)
    else:
        parser.error("give --home and --out to dump answers, or --compare BEFORE AFTER")


if __name__ == "__main__":
    main()
