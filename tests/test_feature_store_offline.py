"""Offline features: a plain per-row reference, no leakage from the future, snapshots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feature_store import FeatureConfig, Snapshot, build_features, feature_schema, save_schema, write_snapshot
from feature_store.definitions import registry
from recsys.data import schema as S

CONFIG = FeatureConfig(
    time_unit="steps",
    windows=(5, 20),
    trend_window=10,
    event_types=("view", "cart"),
    top_categories=2,
    last_n=3,
)


def random_world(seed: int) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_items, n_events = 10, 120
    items = pl.DataFrame(
        {
            S.ITEM_ID: [f"i{k}" for k in range(n_items)],
            S.TITLE: [f"title {k}" * (k % 3 + 1) for k in range(n_items)],
            S.DESCRIPTION: [None if k % 4 == 0 else "d" * k for k in range(n_items)],
            S.CATEGORY: [None if k % 5 == 4 else f"c{k % 3}" for k in range(n_items)],
            S.PRICE: [None if k % 3 == 2 else float(k) + 0.25 for k in range(n_items)],
            S.BRAND: [None if k % 4 == 3 else f"b{k % 2}" for k in range(n_items)],
        },
        schema_overrides={S.DESCRIPTION: pl.String, S.CATEGORY: pl.String, S.BRAND: pl.String},
    )
    interactions = pl.DataFrame(
        {
            S.USER_ID: [f"u{k}" for k in rng.integers(0, 6, n_events)],
            S.ITEM_ID: [f"i{k}" for k in rng.integers(0, n_items, n_events)],
            S.TIMESTAMP: rng.integers(0, 100, n_events),  # duplicates on purpose
            S.EVENT: [None if e == 2 else ("view", "cart")[e] for e in rng.integers(0, 3, n_events)],
        },
        schema_overrides={S.EVENT: pl.String, S.TIMESTAMP: pl.Int64},
    )
    emb = rng.normal(size=(n_items, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return items, interactions, emb


def reference(
    row: dict, interactions: list[dict], items: dict[str, dict], emb: np.ndarray, config: FeatureConfig
) -> dict:
    """Every feature of one row by plain Python, from events strictly before the cutoff."""
    u, i, c = row[S.USER_ID], row[S.ITEM_ID], row["cutoff"]
    past = [e for e in interactions if e[S.TIMESTAMP] < c]  # input order breaks time ties
    hist = sorted((e for e in past if e[S.USER_ID] == u), key=lambda e: e[S.TIMESTAMP])
    n = len(hist)
    out: dict = {"user_n_events": n, "user_n_items": len({e[S.ITEM_ID] for e in hist})}
    out["user_since_last"] = (c - max(e[S.TIMESTAMP] for e in hist)) / config.scale if hist else math.nan
    for ev in config.event_types:
        out[f"user_share_{ev}"] = sum(e[S.EVENT] == ev for e in hist) / n if n else 0.0
    cats: dict[str, int] = {}
    for e in hist:
        cat = items[e[S.ITEM_ID]][S.CATEGORY]
        if cat is not None:
            cats[cat] = cats.get(cat, 0) + 1
    top = sorted(cats.values(), reverse=True)
    for k in range(config.top_categories):
        out[f"user_top{k + 1}_category_share"] = top[k] / n if k < len(top) else 0.0
    prices = [items[e[S.ITEM_ID]][S.PRICE] for e in hist if items[e[S.ITEM_ID]][S.PRICE] is not None]
    out["user_mean_price"] = sum(prices) / len(prices) if prices else math.nan
    last = [e[S.ITEM_ID] for e in hist][-config.last_n :]
    out["user_last_items"] = last
    item_ts = [e[S.TIMESTAMP] for e in past if e[S.ITEM_ID] == i]
    out["item_pop_all"] = len(item_ts)
    for w in config.windows:
        out[f"item_pop_{w}"] = sum(c - w * config.scale <= t for t in item_ts)
    tw = config.trend_window * config.scale
    recent = sum(c - tw <= t for t in item_ts)
    older = sum(c - 2 * tw <= t < c - tw for t in item_ts)
    out["item_trend"] = math.log1p(recent) - math.log1p(older)
    out["item_age"] = (c - min(item_ts)) / config.scale if item_ts else math.nan
    meta = items[i]
    out["item_price"] = math.nan if meta[S.PRICE] is None else meta[S.PRICE]
    out["item_category"] = meta[S.CATEGORY] or ""
    out["item_brand"] = meta[S.BRAND] or ""
    out["item_text_len"] = len(meta[S.TITLE]) + len(meta[S.DESCRIPTION] or "")
    cat = meta[S.CATEGORY]
    out["ui_category_share"] = cats.get(cat, 0) / n if (n and cat is not None) else 0.0
    if last:
        rows = [int(x[1:]) for x in last]
        profile = emb[rows].astype(np.float64).mean(axis=0)
        profile /= np.linalg.norm(profile)
        out["ui_embedding_cosine"] = float(emb[int(i[1:])].astype(np.float64) @ profile)
    else:
        out["ui_embedding_cosine"] = math.nan
    last_meta = items[last[-1]] if last else {S.CATEGORY: None, S.BRAND: None}
    same_cat = cat is not None and cat == last_meta[S.CATEGORY]
    same_brand = meta[S.BRAND] is not None and meta[S.BRAND] == last_meta[S.BRAND]
    out["ui_same_category_as_last"] = int(same_cat)
    out["ui_same_brand_as_last"] = int(same_brand)
    out["ui_seen"] = int(any(e[S.ITEM_ID] == i for e in hist))
    return out


def assert_same(actual: object, expected: object, where: str) -> None:
    if isinstance(expected, float):
        assert isinstance(actual, float), where
        if math.isnan(expected):
            assert math.isnan(actual), f"{where}: {actual} != nan"
        else:
            assert actual == pytest.approx(expected, abs=1e-9), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_in_time_features_match_a_plain_reference(seed: int) -> None:
    items, interactions, emb = random_world(seed)
    rng = np.random.default_rng(100 + seed)
    rows = pl.DataFrame(
        {
            S.USER_ID: [f"u{k}" for k in rng.integers(0, 7, 80)],  # u6 never acts
            S.ITEM_ID: [f"i{k}" for k in rng.integers(0, 10, 80)],
            "cutoff": rng.integers(0, 110, 80),
            "label": rng.integers(0, 2, 80),
        }
    )
    out = build_features(rows, interactions=interactions, items=items, config=CONFIG, embeddings=emb)
    assert out.columns == [*rows.columns, *(f["name"] for f in feature_schema(CONFIG))]
    assert out.select(rows.columns).equals(rows.with_columns(pl.col("cutoff").cast(pl.Int64)))
    item_rows = {r[S.ITEM_ID]: r for r in items.iter_rows(named=True)}
    events = interactions.to_dicts()
    for n, row in enumerate(out.iter_rows(named=True)):
        expected = reference(row, events, item_rows, emb, CONFIG)
        for name, value in expected.items():
            assert_same(row[name], value, f"row {n} {name}")


def test_dtypes_and_defaults_follow_the_declarations() -> None:
    items, interactions, emb = random_world(0)
    rows = pl.DataFrame({S.USER_ID: ["nobody"], S.ITEM_ID: ["unknown-item"], "cutoff": [50]})
    out = build_features(rows, interactions=interactions, items=items, config=CONFIG, embeddings=emb)
    for feature in registry(CONFIG):
        assert out.schema[feature.name] == feature.dtype, feature.name
        value = out.get_column(feature.name)[0]
        if feature.default is None:
            continue
        if isinstance(feature.default, float) and math.isnan(feature.default):
            assert math.isnan(value), feature.name
        else:
            assert value == feature.default, feature.name


def test_planted_future_events_never_reach_the_features() -> None:
    items, interactions, emb = random_world(3)
    # distinct users and items per row, so that each row's future is in no other row's past
    rows = pl.DataFrame(
        {S.USER_ID: ["u0", "u1", "u2", "u3"], S.ITEM_ID: ["i1", "i2", "i3", "i9"], "cutoff": [40, 60, 61, 80]}
    )
    clean = build_features(rows, interactions=interactions, items=items, config=CONFIG, embeddings=emb)
    # each row's future starts exactly at its cutoff: the same user on the same item, on a brand-new
    # item, with new event types, and another user (u5, in no row) on the row's item ...
    per_row = [
        pl.DataFrame(
            {
                S.USER_ID: [r[S.USER_ID], r[S.USER_ID], "u5", r[S.USER_ID]] * 3,
                S.ITEM_ID: [r[S.ITEM_ID], "new", r[S.ITEM_ID], r[S.ITEM_ID]] * 3,
                S.TIMESTAMP: [r["cutoff"] + k for k in range(12)],
                S.EVENT: ["purchase", "cart", "view", None] * 3,
            },
            schema_overrides={S.EVENT: pl.String},
        )
        for r in rows.iter_rows(named=True)
    ]
    # ... and everyone on every item after the last cutoff
    after = pl.DataFrame(
        {
            S.USER_ID: [f"u{k % 7}" for k in range(70)],
            S.ITEM_ID: [f"i{k % 10}" for k in range(70)],
            S.TIMESTAMP: [80 + k for k in range(70)],
            S.EVENT: ["purchase"] * 70,
        }
    )
    future = pl.concat([*per_row, after]).cast(interactions.schema)  # type: ignore[arg-type]
    planted = pl.concat([interactions, future])
    leaked = build_features(rows, interactions=planted, items=items, config=CONFIG, embeddings=emb)
    assert leaked.equals(clean)
    # the planted events do count once the cutoff passes them
    moved = build_features(
        rows.with_columns(pl.col("cutoff") + 12),
        interactions=planted,
        items=items,
        config=CONFIG,
        embeddings=emb,
    )
    assert (moved["user_n_events"] > clean["user_n_events"]).all()
    assert (moved["item_pop_all"] > clean["item_pop_all"]).all()
    assert (moved["ui_seen"] == 1).all()


def test_real_timestamps_give_days(movielens_dir: Path) -> None:
    from recsys.data.adapters import movielens

    items, interactions = movielens(movielens_dir)
    config = FeatureConfig(event_types=("rating",))
    last = interactions.sort(S.TIMESTAMP).group_by(S.USER_ID, maintain_order=True).last().head(200)
    rows = last.select(S.USER_ID, S.ITEM_ID, pl.col(S.TIMESTAMP).alias("cutoff"))
    out = build_features(rows, interactions=interactions, items=items, config=config)
    assert out.height == 200
    before = (
        interactions.join(rows.select(S.USER_ID, "cutoff"), on=S.USER_ID)
        .filter(pl.col(S.TIMESTAMP) < pl.col("cutoff"))
        .group_by(S.USER_ID)
        .len()
    )
    check = out.join(before, on=S.USER_ID, how="left").with_columns(pl.col("len").fill_null(0))
    assert (check["user_n_events"] == check["len"]).all()
    # every event is a rating and the last one is held out
    assert ((out["user_share_rating"] == 1.0) | (out["user_n_events"] == 0)).all()
    assert (out.filter(pl.col("user_n_events") > 0)["user_since_last"] >= 0).all()


def test_snapshot_is_atomic_and_self_describing(tmp_path: Path) -> None:
    items, interactions, _ = random_world(4)
    folder = tmp_path / "snaps" / "cutoff-50"
    snap = write_snapshot(folder, interactions=interactions, items=items, cutoff=50, config=CONFIG)
    reopened = Snapshot.open(folder)
    assert reopened == snap
    states = reopened.user_states()
    expected_users = interactions.get_column(S.USER_ID).n_unique()
    assert states.height == expected_users
    assert states["n_events"].sum() == interactions.filter(pl.col(S.TIMESTAMP) < 50).height
    assert reopened.item_features().height == items.height
    assert reopened.item_features()["item_idx"].to_list() == list(range(items.height))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["features"] == feature_schema(CONFIG)
    # a failing rewrite leaves the previous snapshot whole and no temporary folder behind
    with pytest.raises(ValueError, match="interactions table has no 'timestamp'"):
        write_snapshot(
            folder, interactions=interactions.drop(S.TIMESTAMP), items=items, cutoff=60, config=CONFIG
        )
    assert Snapshot.open(folder).cutoff == 50
    assert sorted(p.name for p in folder.parent.iterdir()) == ["cutoff-50"]
    save_schema(CONFIG, tmp_path / "schema.json")
    assert json.loads((tmp_path / "schema.json").read_text())["features"][0]["name"] == "user_n_events"


def test_item_features_can_have_their_own_cutoff() -> None:
    items, interactions, _ = random_world(5)
    rows = pl.DataFrame({S.USER_ID: ["u0", "u1"], S.ITEM_ID: ["i1", "i2"], "cutoff": [30, 40]})
    split = build_features(
        rows.with_columns(item_cutoff=pl.lit(90)), interactions=interactions, items=items, config=CONFIG
    )
    same_user = build_features(rows, interactions=interactions, items=items, config=CONFIG)
    late = build_features(
        rows.with_columns(cutoff=pl.lit(90)), interactions=interactions, items=items, config=CONFIG
    )
    item_names = [f["name"] for f in feature_schema(CONFIG) if f["entity"] == "item"]
    other = [f["name"] for f in feature_schema(CONFIG) if f["entity"] != "item"]
    assert split.select(item_names).equals(late.select(item_names))
    assert split.select(other).equals(same_user.select(other))
    assert not split.select(item_names).equals(same_user.select(item_names))


def test_bad_input_is_named() -> None:
    items, interactions, emb = random_world(0)
    rows = pl.DataFrame({S.USER_ID: ["u0"], S.ITEM_ID: ["i0"]})
    with pytest.raises(ValueError, match="rows has no 'cutoff' column"):
        build_features(rows, interactions=interactions, items=items, config=CONFIG)
    rows = rows.with_columns(cutoff=pl.lit(5))
    with pytest.raises(ValueError, match=r"embeddings must have shape \(n_items=10, dim\)"):
        build_features(rows, interactions=interactions, items=items, config=CONFIG, embeddings=emb[:3])
    with pytest.raises(ValueError, match="time_unit"):
        FeatureConfig(time_unit="hours")  # type: ignore[arg-type]
