"""Dump what ``Recommender.recommend`` answers over the serving benchmark's requests, or compare dumps.

A speed change to the request path must not change the answers. Run this once with the code before
the change and once after, on the same bundle, then compare. For the old code, unpack the old commit
with ``git archive`` into a folder, copy this ``benchmarks/`` folder into it and run from there:
``python -m`` puts the folder it runs in first on ``sys.path``, so that folder's code is measured::

    .venv/bin/python -m benchmarks.serving_answers --home H --out before.json
    .venv/bin/python -m benchmarks.serving_answers --compare before.json after.json

Requests: the benchmark's bodies (real user ids of ``--interactions``, the demo's by default, 10%
unknown), varied so the fallbacks and options
are covered: every 5th asks for n=50, every 11th adds two context items, every 13th keeps seen items,
every 7th passes an (empty) filter. Each answer is ``[item_id, score, sources]`` per item; the dump
also records the run's provenance (commit, dirty flag), so each dump says which code answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.provenance import provenance, start_run
from benchmarks.serving import request_bodies


def dump(
    home: Path,
    requests: int,
    out: Path,
    *,
    interactions: Path | None,
    compile_ranker: bool,
    params: dict[str, Any],
) -> None:
    started = start_run()
    os.environ["BENTOML_HOME"] = str(home.resolve())
    from feature_store.online import open_store
    from feature_store.record import history
    from recsys.data.loading import bundled_paths
    from recsys.pipeline import registry
    from recsys.pipeline.recommender import Filters, Recommender

    bodies = request_bodies(interactions or bundled_paths()[1], unknown_share=0.1, count=requests, seed=0)

    recommender = Recommender.load(registry.current().path, compile_ranker=compile_ranker)
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
    record = {
        "model": registry.current().tag,
        "answers": answers,
        "provenance": provenance("serving_answers", params=params, started=started),
    }
    out.write_text(json.dumps(record))
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
    parser.add_argument("--interactions", type=Path, default=None, help="Where real user ids come from.")
    parser.add_argument(
        "--compile-ranker",
        action="store_true",
        help="Compile the ranker first, as `recsys serve --compile-ranker`.",
    )
    parser.add_argument("--out", type=Path, help="Where to write the answers (JSON).")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.home and args.out:
        dump(
            args.home,
            args.requests,
            args.out,
            interactions=args.interactions,
            compile_ranker=args.compile_ranker,
            params=vars(args),
        )
    else:
        parser.error("give --home and --out to dump answers, or --compare BEFORE AFTER")


if __name__ == "__main__":
    main()
