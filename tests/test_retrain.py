"""The nightly job, ``recsys retrain``: config, gate rule, and whole runs on a generated shop.

The shop is generated here (the project never saw it): 40 items in 4 themes, 60 users who each keep
to one theme, clock-time events over 10 days. Runs use a tiny random BERT, no fine-tuning
(``finetune = false``: the head needs more co-occurring pairs than this shop has) and small model
budgets, so a run takes seconds. Each run is a subprocess with its own ``BENTOML_HOME``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pipeline_helpers import save_tiny_bert

from recsys.config import ConfigError
from recsys.data.dataset import Dataset
from recsys.pipeline.gate import GateScores, decide, gate_task
from recsys.pipeline.retrain_config import RetrainConfig, load_retrain_config

DAY = 86_400
START = 1_700_000_000
THEMES = ("garden", "kitchen", "camping", "office")


def shop_items(n: int = 40) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [f"sku-{i}" for i in range(n)],
            "title": [f"{THEMES[i % 4]} tool model {i}" for i in range(n)],
            "category": [THEMES[i % 4] for i in range(n)],
        }
    )


def shop_events(*, days: range, users: int = 60, per_day: int = 2, seed: int = 0) -> pl.DataFrame:
    """Each user buys ``per_day`` items of their theme on each of ``days``."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in days:
        for u in range(users):
            theme = u % 4
            for j in rng.choice(10, size=per_day, replace=False):
                ts = START + day * DAY + int(rng.integers(0, DAY - 1))
                rows.append((f"user-{u}", f"sku-{4 * int(j) + theme}", ts))
    return pl.DataFrame(
        rows, schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}, orient="row"
    )


def needs_ingest() -> None:
    """Whole runs need the ingest and the run lock (``recsys.pipeline.ingest``, ``.lock``)."""
    pytest.importorskip("recsys.pipeline.ingest")
    pytest.importorskip("recsys.pipeline.lock")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = sorted({*THEMES, "tool", "model", *(str(i) for i in range(40))})
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), words)


@pytest.fixture(scope="module")
def published_shop(tmp_path_factory: pytest.TempPathFactory, bert: Path) -> Path:
    """A shop after its first night: 10 days of events ingested, the first model published."""
    needs_ingest()
    root = tmp_path_factory.mktemp("shop")
    write_config(root, bert)
    drop(root, "items.parquet", shop_items())
    drop(root, "events-0.parquet", shop_events(days=range(10)))
    first = retrain(root, root / "retrain.toml")
    assert first.returncode == 0, first.stderr
    return root


@pytest.fixture
def shop(published_shop: Path, tmp_path: Path) -> Path:
    """A copy of ``published_shop`` that the test may change."""
    return Path(shutil.copytree(published_shop, tmp_path / "shop", symlinks=True))


def write_config(root: Path, bert: Path, *, extra: str = "") -> Path:
    path = root / "retrain.toml"
    path.write_text(
        f"""data_dir = "data"
inbox_dir = "inbox"
work_dir = "work"
{extra}
[train]
finetune = false
[train.encoder]
checkpoint = "{bert}"
max_tokens = 16
[train.model]
label_protocol = "temporal"
[train.model.candidates]
per_source = 20
total = 40
sources = ["popularity", "als", "cooccurrence", "text"]
[train.model.candidates.als]
factors = 8
iterations = 3
[train.model.ranker]
search = [[7, 0.1]]
max_rounds = 30
min_data_in_leaf = 5
"""
    )
    return path


def drop(root: Path, name: str, frame: pl.DataFrame) -> None:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    frame.write_parquet(root / "inbox" / name)


def retrain(root: Path, config: Path, *, die_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "RECSYS_RUNS_DIR": str(root / "records")}
    env.pop("RECSYS_RETRAIN_DIE_AT", None)
    if die_at:
        env["RECSYS_RETRAIN_DIE_AT"] = die_at
    command = [
        sys.executable,
        "-c",
        "from recsys.cli import main; main()",
        "retrain",
        "--config",
        str(config),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=root)


def last_summary(root: Path) -> dict:
    runs = sorted((root / "work" / "runs").glob("*.json"))
    return json.loads(runs[-1].read_text())


def current(root: Path) -> str | None:
    pointer = root / "bentoml" / "recsys" / "recsys-bundle.current.json"
    return json.loads(pointer.read_text())["current"] if pointer.exists() else None


# --- config ---------------------------------------------------------------------------------------
def test_three_keys_are_a_config_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "/abs/w"\n')
    config = load_retrain_config(path)
    assert config.data_dir == tmp_path / "d" and config.work_dir == Path("/abs/w")
    path.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\ngate_day = 2\n')
    with pytest.raises(ConfigError, match="gate_day"):
        load_retrain_config(path)
    path.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\nkeep_versions = 1\n')
    with pytest.raises(ConfigError, match="keep_versions"):
        load_retrain_config(path)
    with pytest.raises(ConfigError, match="work_dir"):
        path.write_text('data_dir = "d"\ninbox_dir = "i"\n')
        load_retrain_config(path)
    assert RetrainConfig(Path("d"), Path("i"), Path("w")).on_bad_file == "fail"
    # [train.model] is checked on load, naming the file and the key, and kept raw for the data
    path.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\n[train.model]\nlabel_windowz = 2\n')
    with pytest.raises(ConfigError, match=r"r\.toml: unknown key 'label_windowz' in train\.model"):
        load_retrain_config(path)
    path.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\n[train.model.ranker]\nbags = 1\n')
    config = load_retrain_config(path)
    assert config.train.model is None and config.model_overrides == {"ranker": {"bags": 1}}
    path.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\nmodel_overrides = {}\n')
    with pytest.raises(ConfigError, match=r"unknown key 'model_overrides'.*\[train\.model\]"):
        load_retrain_config(path)


# --- the gate rule --------------------------------------------------------------------------------
def test_the_gate_window_is_the_last_days_or_on_order_index_data_each_users_last_event() -> None:
    items = shop_items()
    clock = shop_events(days=range(5), users=8)
    task = gate_task(Dataset.from_tables(items, clock), gate_days=1)
    cutoff = clock["timestamp"].max() + 1 - DAY
    assert int(task.train.timestamps.max()) < cutoff and 0 < len(task.users) <= 8  # new items only
    order = pl.int_range(pl.len(), dtype=pl.Int64)
    ordered = clock.sort("timestamp").with_columns(timestamp=order)
    task = gate_task(Dataset.from_tables(items, ordered), gate_days=1)
    assert len(task.users) == 8 and task.targets.sum() == 8  # one held-out event per user
    assert len(task.train) == len(ordered) - 8


def scores(per_user: list[float], problems: tuple[str, ...] = ()) -> GateScores:
    values = np.array(per_user)
    return GateScores(values, {"ndcg@10": float(values.mean())}, problems)


def test_gate_refuses_a_resolved_loss_and_publishes_an_equal_or_better_candidate() -> None:
    rng = np.random.default_rng(0)
    production = rng.uniform(0.2, 0.8, size=200)
    worse = decide(scores(list(production - 0.1)), scores(list(production)), tolerance=0.01)
    assert not worse.publish and worse.interval is not None and worse.interval["ci_high"] < -0.01
    equal = decide(scores(list(production)), scores(list(production)), tolerance=0.01)
    better = decide(scores(list(production + 0.05)), scores(list(production)), tolerance=0.0)
    assert equal.publish and better.publish
    noisy = production + rng.normal(0, 0.3, size=200) * 0.01  # within tolerance: not resolved
    assert decide(scores(list(noisy)), scores(list(production)), tolerance=0.01).publish


def test_gate_sanity_checks_refuse_even_without_production() -> None:
    broken = decide(scores([0.5, 0.5], ("1 of 2 users got an empty list",)), None, tolerance=0.01)
    assert not broken.publish and "empty list" in broken.reason
    first = decide(scores([0.5, 0.5]), None, tolerance=0.01)
    assert first.publish and "no production" in first.reason and first.interval is None


# --- whole runs -----------------------------------------------------------------------------------
def test_nightly_runs_publish_then_nothing_to_do_then_embed_nothing(shop: Path) -> None:
    config = shop / "retrain.toml"
    summary = last_summary(shop)  # the first night (the fixture's run)
    assert summary["outcome"] == "published" and summary["published"] == current(shop)
    assert summary["items_embedded"] == 40 and "no production" in summary["gate"]["reason"]
    assert {"ingest", "embed", "fit", "bundle", "gate", "publish"} <= set(summary["stages"])
    assert all(s["peak_rss_mb"] > 0 for s in summary["stages"].values())
    events = [
        json.loads(line) for line in (shop / "work" / "logs" / "retrain.jsonl").read_text().splitlines()
    ]
    assert events[-1]["event"] == "finished" and any(e["event"] == "gate" for e in events)
    (record,) = [json.loads(p.read_text()) for p in (shop / "records").glob("*.json")]
    assert record["command"] == "retrain" and record["data"]["fingerprint"] == summary["data"]["fingerprint"]
    assert record["metrics"]["candidate"]["ndcg@10"] == summary["gate"]["candidate"]["ndcg@10"]

    again = retrain(shop, config)
    assert again.returncode == 0 and last_summary(shop)["outcome"] == "nothing to do"

    drop(shop, "events-10.parquet", shop_events(days=range(10, 11), seed=1))
    night = retrain(shop, config)
    summary = last_summary(shop)
    assert night.returncode in (0, 3), night.stderr
    assert summary["items_embedded"] == 0 and summary["gate"]["production"] is not None
    assert summary["gate"]["interval"]["users"] > 0
    assert (summary["published"] is not None) == (night.returncode == 0)


def test_gate_keeps_production_with_exit_3(shop: Path, bert: Path) -> None:
    production = current(shop)
    # a planted worse candidate: popularity alone can only answer the same 10 items to everyone
    worse = write_config(shop, bert, extra="tolerance = 0.0\n")
    worse.write_text(
        worse.read_text().replace(
            'sources = ["popularity", "als", "cooccurrence", "text"]', 'sources = ["popularity"]'
        )
    )
    drop(shop, "events-10.parquet", shop_events(days=range(10, 11), seed=1))
    kept = retrain(shop, worse)
    summary = last_summary(shop)
    assert kept.returncode == 3, (kept.stderr, summary["gate"])
    assert summary["outcome"] == "kept production" and not summary["gate"]["publish"]
    assert current(shop) == production


def test_a_bad_file_is_quarantined_and_exits_2_after_the_good_ones(tmp_path: Path, bert: Path) -> None:
    needs_ingest()
    config = write_config(tmp_path, bert)
    drop(tmp_path, "items.parquet", shop_items())
    drop(tmp_path, "events-0.parquet", shop_events(days=range(10)))
    drop(tmp_path, "events-bad.parquet", shop_events(days=range(10)).drop("timestamp"))
    result = retrain(tmp_path, config)
    summary = last_summary(tmp_path)
    assert result.returncode == 2, result.stderr
    assert summary["published"] == current(tmp_path) is not None, "the valid files were still used"
    assert summary["ingest"]["files_quarantined"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", ["ingest-before-commit", "ingest-moving", "ingest", "finetune", "bundle", "before-pointer"]
)
def test_a_kill_at_any_stage_leaves_production_and_the_next_run_publishes_once(
    shop: Path, stage: str
) -> None:
    config = shop / "retrain.toml"
    production = current(shop)
    drop(shop, "events-10.parquet", shop_events(days=range(10, 11), seed=1))
    killed = retrain(shop, config, die_at=stage)
    assert killed.returncode == -9, killed.stderr
    assert current(shop) == production
    inbox = {p.name for p in (shop / "inbox").glob("*.parquet")}
    processed = {p.name for p in (shop / "inbox" / "processed").glob("*.parquet")}
    assert "events-10.parquet" in inbox ^ processed, "each file is in exactly one place"
    runs_before = len(list((shop / "work" / "runs").glob("*.json")))
    after = retrain(shop, config)
    summary = last_summary(shop)
    assert after.returncode in (0, 3), after.stderr
    assert len(list((shop / "work" / "runs").glob("*.json"))) == runs_before + 1
    assert "events-10.parquet" in {p.name for p in (shop / "inbox" / "processed").glob("*.parquet")}
    assert summary["outcome"] in ("published", "kept production"), "the killed night's data is decided on"
    published = [v for v in (shop / "bentoml" / "models" / "recsys-bundle").iterdir() if v.is_dir()]
    assert len(published) == (2 if summary["published"] else 1)
    assert retrain(shop, config).returncode == 0 and last_summary(shop)["outcome"] == "nothing to do"


def test_cli_exits_2_on_a_bad_config_1_when_another_run_holds_the_lock_0_on_an_empty_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_ingest()
    from typer.testing import CliRunner

    from recsys.cli import app

    bad = tmp_path / "bad.toml"
    bad.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\non_bad_file = "ignore"\n')
    result = CliRunner().invoke(app, ["retrain", "--config", str(bad)])
    assert result.exit_code == 2 and "on_bad_file" in result.output

    from recsys.pipeline.lock import RunLock

    good = tmp_path / "good.toml"
    good.write_text('data_dir = "d"\ninbox_dir = "i"\nwork_dir = "w"\n')
    with RunLock(tmp_path / "w" / "retrain.lock"):
        held = CliRunner().invoke(app, ["retrain", "--config", str(good)])
    assert held.exit_code == 1 and "another retrain run" in held.output
    assert not (tmp_path / "d").exists(), "nothing was started"

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    empty = CliRunner().invoke(
        app, ["retrain", "--config", str(good), "--runs-dir", str(tmp_path / "records")]
    )
    assert empty.exit_code == 0 and "nothing to do" in empty.output


@pytest.mark.slow
def test_the_three_key_config_runs_a_never_seen_shop_with_every_default(tmp_path: Path) -> None:
    """The packaged encoder and the default pipeline (about a minute on 2 cores). The shop is too
    small for the head's held-out pairs: the run says so and embeds with the frozen encoder."""
    needs_ingest()
    config = tmp_path / "retrain.toml"
    config.write_text('data_dir = "data"\ninbox_dir = "inbox"\nwork_dir = "work"\n')
    drop(tmp_path, "items.parquet", shop_items())
    drop(tmp_path, "events-0.parquet", shop_events(days=range(10)))
    result = retrain(tmp_path, config)
    assert result.returncode == 0, result.stderr
    summary = last_summary(tmp_path)
    assert summary["published"] == current(tmp_path) and summary["items_embedded"] == 40
    assert '"head_finetune_skipped"' in result.stderr


def test_retention_keeps_the_newest_and_what_a_rollback_needs(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving_fixtures import copy_as_version

    from recsys.pipeline import registry
    from recsys.pipeline.retrain import retain_versions

    monkeypatch.setenv("BENTOML_HOME", str(shop / "bentoml"))
    (bundle,) = (shop / "work" / "bundles").iterdir()
    tags = [registry.current().tag]
    for night in range(3):
        release = copy_as_version(bundle, shop / f"release-{night}", f"v2099010{night}-000000-aaaaaa")
        tags.append(registry.publish(release).tag)
        registry.set_current(tags[-1])
    assert retain_versions(2) == tags[:2]
    assert [v.tag for v in registry.list_versions()] == tags[2:]
    assert registry.rollback().tag == tags[2], "a rollback across retrains still works"


def test_a_production_bundle_this_code_cannot_read_is_no_bar(shop: Path) -> None:
    from serving_fixtures import incompatible_copy

    (stored,) = (p for p in (shop / "bentoml" / "models" / "recsys-bundle").iterdir() if p.is_dir())
    broken = incompatible_copy(stored, shop / "broken", stored.name)
    shutil.rmtree(stored / "model")
    shutil.copytree(broken / "model", stored / "model")
    drop(shop, "events-10.parquet", shop_events(days=range(10, 11), seed=1))
    result = retrain(shop, shop / "retrain.toml")
    summary = last_summary(shop)
    assert result.returncode == 0, (result.stderr, summary)
    assert "cannot be evaluated by this code" in summary["gate"]["reason"] and summary["published"]


def test_the_head_starts_from_production_s_and_from_scratch_on_its_schedule(
    tmp_path: Path, bert: Path
) -> None:
    """Night 1 trains the head from scratch (with early stopping); night 2 starts from production's
    head and trains ``warm_head_epochs``; a week after the from-scratch head, night 3 starts over.
    Each night is a subprocess (BentoML binds ``BENTOML_HOME`` at import) told the date."""
    needs_ingest()
    config = write_config(tmp_path, bert, extra="tolerance = 1.0\nwarm_head_epochs = 1\n")
    head = "[train.encoder_training]\nvalidation_pairs = 20\n"
    head += "[train.encoder_training.head]\nhidden = 16\nbatch_size = 32\n"
    config.write_text(config.read_text().replace("finetune = false\n", f"finetune = true\n{head}"))
    drop(tmp_path, "items.parquet", shop_items())
    code = (
        "import json, sys; from datetime import date; from recsys.pipeline.retrain import run_retrain; "
        "from recsys.pipeline.retrain_config import load_retrain_config; "
        "s = run_retrain(load_retrain_config(sys.argv[1]), log=lambda e: print(json.dumps(e)), "
        "today=date.fromisoformat(sys.argv[2])); assert s.outcome == 'published', s"
    )
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "RECSYS_RUNS_DIR": str(tmp_path / "records"),
    }

    def night(day: int, today: str) -> tuple[list[dict], Path]:
        drop(tmp_path, f"events-{day}.parquet", shop_events(days=range(day, day + 10), seed=day))
        command = [sys.executable, "-c", code, str(config), today]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        tag = current(tmp_path)
        assert tag is not None
        return [
            json.loads(line) for line in run.stdout.splitlines()
        ], tmp_path / "bentoml" / "models" / tag.replace(":", "/")

    def records(bundle: Path) -> tuple[dict, dict]:
        metadata = json.loads((bundle / "metadata.json").read_text())["encoder"]
        return metadata, json.loads((bundle / "encoder" / "recsys_encoder.json").read_text())

    events, production = night(0, "2026-03-01")
    assert any(e["event"] == "head_from_scratch" and "no production" in e["reason"] for e in events), events
    metadata, encoder = records(production)
    assert metadata["head_from_scratch"] == "2026-03-01" and encoder["head"]["start"] == ""

    events, bundle = night(10, "2026-03-02")
    (warm,) = [e for e in events if e["event"] == "head_warm_start"]
    assert warm["start"] == str(production / "encoder") and warm["epochs"] == 1
    metadata, encoder = records(bundle)
    assert encoder["head"]["start"] == warm["start"] and len(encoder["history"]) == 2  # epochs 0 and 1
    assert metadata["head_from_scratch"] == "2026-03-01"  # its lineage

    events, bundle = night(20, "2026-03-08")
    (cold,) = [e for e in events if e["event"] == "head_from_scratch"]
    assert cold["reason"] == "schedule: 7 days since the head was trained from scratch on 2026-03-01"
    assert records(bundle)[0]["head_from_scratch"] == "2026-03-08"
