"""The same data, config and seed give the same bundle, bit for bit: trained twice, in two fresh
processes (``tests/reproducible_fit.py``), with two threads wherever a part takes threads.

What repeats and why:

- LightGBM: ``deterministic`` with the histogram layout forced (``force_row_wise``) and a fixed
  ``num_threads`` (``recsys.ranking.ranker``); the saved boosters' text is compared.
- implicit's ALS: each user's and item's solve is independent of the others and of the thread
  count (measured: 1 and 2 threads give the same factors), so it repeats exactly.
- torch (the sequential source): on CPU, at a fixed seed and a fixed thread count, the weights
  repeat exactly; a *different* thread count changes its float sums (about 4e-8 on this data with 1
  against 2 threads), so ``SequentialConfig.threads = 0`` ("all cores") repeats on one machine
  only. Stopping is by epochs and patience, never a clock. The bundle's sequential model is too
  small for torch's parallel kernels (fewer than 32,768 values a batch), so a second test fits it
  at a size that uses them: there, looking item vectors up by indexing (``vectors[seq]``) summed a
  repeated item's gradient with racing atomic adds, and two fits differed.

Only what holds a clock may differ: creation times, version names and seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pipeline_helpers import save_tiny_bert, vocabulary
from reproducible_fit import tables

from recsys.candidates.sequential import SequentialConfig, SequentialRecommender
from recsys.data.dataset import Dataset

TESTS = Path(__file__).resolve().parent
CLOCKS = {"created", "created_at", "version", "seconds", "fit_seconds", "embed_seconds"}
JSON_WITH_CLOCKS = {
    "metadata.json",
    "features/manifest.json",
    "model/two_stage.json",
    "model/generators/sequential/config.json",
}


def _train(checkpoint: Path, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    command = [sys.executable, str(TESTS / "reproducible_fit.py"), str(checkpoint), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


def _without_clocks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_clocks(v) for k, v in value.items() if k not in CLOCKS}
    if isinstance(value, list):
        return [_without_clocks(v) for v in value]
    return value


@pytest.mark.slow
def test_two_trainings_give_the_same_bundle_bit_for_bit(tmp_path: Path) -> None:
    checkpoint = save_tiny_bert(tmp_path / "bert", vocabulary(tables()[0]))
    first, second = _train(checkpoint, tmp_path / "a"), _train(checkpoint, tmp_path / "b")

    files = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file())
    assert {"model/ranker/model_0.txt", "model/ranker/model_1.txt"} <= set(files)
    assert set(files) >= JSON_WITH_CLOCKS
    for name in files:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        if name in JSON_WITH_CLOCKS:
            assert _without_clocks(json.loads(a)) == _without_clocks(json.loads(b)), name
        else:
            assert a == b, name

    meta = json.loads((first / "metadata.json").read_text())
    assert meta["metrics"] == json.loads((second / "metadata.json").read_text())["metrics"]
    # every stopping reason is in the bundle's metadata: each sequential fit, each booster
    stopping = meta["fit_reports"]["served"]["stopping"]
    assert [s["source"] for s in stopping["sources"]] == ["sequential", "sequential"]  # labels', served
    for fit in stopping["sources"]:
        assert fit["stop_reason"] in ("max_epochs", "patience") and 1 <= fit["best_epoch"] <= fit["epochs"]
    assert len(stopping["ranker"]) == 2  # the bag's boosters
    for booster in stopping["ranker"]:
        assert booster["stop_reason"] in ("early_stopping", "max_rounds")
        assert 1 <= booster["best_iteration"] <= booster["rounds"] <= 30


def test_the_sequential_source_repeats_bit_for_bit_where_torch_runs_in_parallel() -> None:
    # 100 MovieLens users (13,946 events), 128 windows of 20 items x 32 wide: 81,920 values a batch,
    # above the 32,768 where torch splits an op over its two threads
    items, interactions = tables(users=100)
    data = Dataset.from_tables(items, interactions).to_interactions()
    text = np.random.default_rng(0).standard_normal((data.n_items, 24)).astype(np.float32)
    config = SequentialConfig(hidden=32, layers=1, heads=1, max_len=20, max_epochs=1, patience=1, threads=2)
    first, second = (SequentialRecommender(config, item_embeddings=text).fit(data) for _ in range(2))

    assert first.model_ is not None and second.model_ is not None
    a, b = first.model_.state_dict(), second.model_.state_dict()
    assert [name for name in a if not torch.equal(a[name], b[name])] == []
    histories = data.histories(np.arange(data.n_users))
    assert np.array_equal(first.recommend(histories, 20)[1], second.recommend(histories, 20)[1])
