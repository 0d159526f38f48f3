"""Train one small bundle in this fresh process (tests/test_reproducible.py runs it twice).

    python tests/reproducible_fit.py CHECKPOINT OUT_DIR

CHECKPOINT is a tiny BERT folder (``pipeline_helpers.save_tiny_bert``); the bundle is written under
OUT_DIR. The data is the first 50 users of the bundled MovieLens sample (clock time, so the
data-derived defaults give temporal label windows), the config every source at a small size with
two threads wherever a part takes threads, so that multi-threaded training is what is repeated.
"""

from __future__ import annotations

import sys

import polars as pl

from recsys.data import schema as S
from recsys.data.loading import bundled_paths, load_dataset
from recsys.pipeline.train import train_bundle, train_config_for

THREADS = 2
TABLE = {
    "protocol": "temporal",
    "finetune": False,
    "evaluate_validation": False,
    "model": {
        "candidates": {
            "per_source": 30,
            "total": 60,
            "als": {"factors": 16, "iterations": 5, "num_threads": THREADS},
            "itemknn": {"num_threads": THREADS},
            "sequential": {"hidden": 16, "layers": 1, "max_len": 10, "max_epochs": 2, "threads": THREADS},
        },
        "ranker": {"search": [[15, 0.1]], "max_rounds": 30, "min_data_in_leaf": 5, "bags": 2},
    },
}


def tables(users: int = 50) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The first ``users`` users of the bundled MovieLens sample and the items they rated."""
    dataset = load_dataset(*bundled_paths())
    interactions = dataset.interactions.drop(S.USER_IDX, S.ITEM_IDX)
    first = interactions.get_column(S.USER_ID).unique(maintain_order=True).head(users)
    interactions = interactions.filter(pl.col(S.USER_ID).is_in(first.implode()))
    items = dataset.items.filter(pl.col(S.ITEM_ID).is_in(interactions.get_column(S.ITEM_ID).implode()))
    return items, interactions


def main(checkpoint: str, out_dir: str) -> None:
    items, interactions = tables()
    table = TABLE | {"encoder": {"checkpoint": checkpoint, "max_tokens": 32}}
    config = train_config_for(interactions, table=table)
    print(train_bundle(items, interactions, config=config, out_dir=out_dir))


if __name__ == "__main__":
    main(*sys.argv[1:])
