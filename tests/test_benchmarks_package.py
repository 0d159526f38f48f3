"""The benchmarks package: every module imports and answers ``--help``, results files carry their
provenance, and the server harness the end-to-end tests share with the benchmarks stays out of the Bento.

Nothing here runs a benchmark; a broken import or argument parser fails here instead of on the day
someone runs it.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import re
import socket
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import benchmarks
from benchmarks.harness.process import free_port
from benchmarks.provenance import start_run, write_results

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(benchmarks.__path__, prefix="benchmarks."))
# a benchmark is a module with a ``main``; the rest (provenance, harness) are what they share
RUNNABLE = [
    "benchmarks.ann",
    "benchmarks.ann_quality",
    "benchmarks.catalogue_size",
    "benchmarks.encode",
    "benchmarks.events_under_load",
    "benchmarks.feature_store",
    "benchmarks.nightly_incremental",
    "benchmarks.nightly_replay",
    "benchmarks.pipeline_quality",
    "benchmarks.scaling",
    "benchmarks.sequential_cooccurrence",
    "benchmarks.serving",
    "benchmarks.serving_answers",
    "benchmarks.serving_profile",
    "benchmarks.validation",
]
PROVENANCE_KEYS = {
    "benchmark", "command", "commit", "dirty", "commit_at_end", "started_utc", "finished_utc", "cpu_model",
    "cpu_count", "loadavg_1min_start", "loadavg_1min_end", "python", "platform", "libraries", "params",
}  # fmt: skip


def test_the_benchmark_list_is_complete() -> None:
    """Every module with a ``main`` is listed above (so it is imported and asked for ``--help``)."""
    with_main = [m for m in MODULES if hasattr(importlib.import_module(m), "main")]
    assert with_main == RUNNABLE
    hacks = re.compile(r"sys\.path\.(insert|append)|spec_from_file_location")  # run as modules instead
    assert not [p.name for p in (ROOT / "benchmarks").rglob("*.py") if hacks.search(p.read_text())]


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_module_imports(name: str) -> None:
    importlib.import_module(name)


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_benchmark_answers_help(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_results_carry_flat_figures_and_their_provenance(tmp_path: Path) -> None:
    started = start_run()
    figures = {"recsys_c16_rps": 91.8, "errors": np.int64(0), "model": "recsys-bundle:v1", "kept": True}
    params = {"workers": 2, "out": tmp_path / "x.json", "concurrency": [1, 16]}
    out = write_results("serving", figures, params=params, started=started, out=tmp_path / "x.json")
    record = json.loads(out.read_text())
    provenance = record.pop("provenance")
    assert record == {"recsys_c16_rps": 91.8, "errors": 0, "model": "recsys-bundle:v1", "kept": True}
    assert set(provenance) >= PROVENANCE_KEYS
    assert provenance["benchmark"] == "serving"
    assert provenance["command"].startswith("python -m benchmarks.serving")
    assert provenance["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", provenance["commit"])
    assert provenance["dirty"] in (None, True, False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", provenance["started_utc"])
    assert provenance["started_utc"] <= provenance["finished_utc"]
    assert provenance["cpu_count"] == os.cpu_count() and provenance["cpu_model"]
    assert isinstance(provenance["loadavg_1min_start"], float)
    assert provenance["python"] == platform.python_version()
    assert provenance["libraries"]["numpy"] == np.__version__
    assert provenance["libraries"]["polars"] == pl.__version__
    assert provenance["params"] == {"workers": 2, "out": str(tmp_path / "x.json"), "concurrency": [1, 16]}


def test_replicate_runs_share_one_file(tmp_path: Path) -> None:
    runs = [{"recsys_c16_rps": 91.8}, {"recsys_c16_rps": 54.8}, {"recsys_c16_rps": 95.5}]
    out = write_results("serving", runs, params={"repeats": 3}, started=start_run(), out=tmp_path / "r.json")
    record = json.loads(out.read_text())
    assert record["runs"] == runs and record["provenance"]["params"] == {"repeats": 3}


def test_results_stay_flat(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    with pytest.raises(TypeError, match="stages"):
        write_results("x", {"stages": {"ranker": 0.3}}, params={}, started=start_run(), out=out)
    with pytest.raises(ValueError, match="provenance"):
        write_results("x", {"provenance": "mine"}, params={}, started=start_run(), out=out)
    assert not out.exists()


def test_merge_keeps_earlier_figures_and_their_provenance(tmp_path: Path) -> None:
    out = tmp_path / "seq.json"
    first = {"amazon.cooc.ndcg@10": 0.09}
    write_results("seq", first, params={"datasets": "amazon"}, started=start_run(), out=out, merge=True)
    second = {"ml.cooc.ndcg@10": 0.05}
    write_results("seq", second, params={"datasets": "ml"}, started=start_run(), out=out, merge=True)
    record = json.loads(out.read_text())
    assert record["amazon.cooc.ndcg@10"] == 0.09 and record["ml.cooc.ndcg@10"] == 0.05
    assert record["provenance"]["params"] == {"datasets": "ml"}
    assert [run["params"] for run in record["provenance"]["earlier_runs"]] == [{"datasets": "amazon"}]


def test_every_results_file_says_where_it_comes_from() -> None:
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        assert "provenance" in record, path.name
        assert not re.search(r"_run\d+$", path.stem), f"{path.name}: replicate runs go in one file"
        for run in record.get("runs", [record]):
            nested = [k for k, v in run.items() if k != "provenance" and isinstance(v, dict | list)]
            assert not nested, f"{path.name}: not flat: {nested}"


def test_free_port_is_free() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # nobody listens there


def test_the_bento_carries_the_service_and_no_harness() -> None:
    """What ``bentoml build -f serving/bentofile.yaml .`` packs, by its own include/exclude rules
    (gitignore-style, as BentoML reads them): the service and the code it calls, no tests or benchmarks."""
    import pathspec
    import yaml

    config = yaml.safe_load((ROOT / "serving" / "bentofile.yaml").read_text())
    include = pathspec.PathSpec.from_lines("gitwildmatch", config["include"])
    exclude = pathspec.PathSpec.from_lines("gitwildmatch", config["exclude"])
    files = [
        p.relative_to(ROOT).as_posix()
        for top in ("recsys", "feature_store", "serving", "benchmarks", "tests")
        for p in (ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    packed = {f for f in files if include.match_file(f) and not exclude.match_file(f)}
    assert {"serving/service.py", "serving/schemas.py", "recsys/pipeline/recommender.py"} <= packed
    assert {"serving/ui/index.html", "serving/ui/ui.css", "serving/ui/ui.js"} <= packed  # the page at /ui
    assert "benchmarks/harness/process.py" in files
    assert not [f for f in packed if f.split("/")[0] not in ("recsys", "feature_store", "serving")]
    assert not [f for f in packed if 'bentoml.service(name="echo"' in (ROOT / f).read_text(errors="ignore")]


@pytest.mark.slow
def test_the_nightly_replay_quick_mode_runs_the_job_night_after_night(tmp_path: Path) -> None:
    """``benchmarks.nightly_replay --quick``: a bootstrap and 2 nights of the real job (about a minute)."""
    import subprocess

    command = [sys.executable, "-m", "benchmarks.nightly_replay", "--quick", "--work", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = json.loads((tmp_path / "nightly_replay.json").read_text())["runs"]
    assert [r["night"] for r in runs] == [0, 1, 2] and (tmp_path / "nightly_replay.png").stat().st_size
    assert all(r["outcome"] in ("published", "kept production") for r in runs)
    assert runs[0]["published"] and runs[0].get("production_ndcg@10") is None  # nothing to compare with yet
    for night in runs[1:]:
        assert night["rows_ingested"] == night["rows_dropped"] > 0
        # only the night's new items are embedded: the rest come from the embedding cache
        assert night["items_embedded"] <= night["new_items_dropped"]
        assert night["interval_ci_low"] is not None and night["stage_fit_s"] > 0
