"""``benchmarks.scaling --engine ray`` end to end at the quick mode's smallest point: the Ray
engine's stages are measured in a child with its own local Ray instance, and none of its processes
outlives the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]


def ray_processes() -> set[int]:
    return {
        p.pid
        for p in psutil.process_iter(["name"])
        if (p.info["name"] or "").startswith(("raylet", "gcs_server"))
    }


@pytest.mark.slow
def test_the_scaling_benchmark_measures_the_ray_engine_s_stages(tmp_path: Path) -> None:
    before = ray_processes()
    out = tmp_path / "scaling.json"
    command = [sys.executable, "-m", "benchmarks.scaling", "--quick", "--engine", "ray",
               "--points", "2000x200", "--embed-items", "--out", str(out),
               "--plot", str(tmp_path / "scaling.png"), "--work", str(tmp_path / "work")]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, timeout=900)
    figures = json.loads(out.read_text())
    assert figures["i2000_m200.ray_exitcode"] == 0
    for stage in ("features@ray", "ranker_train@ray"):
        assert figures[f"i2000_m200.{stage}.status"] == "measured", stage
        assert figures[f"i2000_m200.{stage}.seconds"] > 0 and figures[f"i2000_m200.{stage}.peak_rss_mb"] > 0
    assert "i2000_m200.ranker_train.status" not in figures  # the local engine was not asked for
    assert "driver" in figures["i2000_m200.ray_memory_note"]
    assert ray_processes() <= before, "the benchmark's Ray instance left processes behind"
