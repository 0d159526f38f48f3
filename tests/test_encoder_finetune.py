"""``recsys.encoder.finetune``: the one entry point of both methods, what it records, and its CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from encoder_toys import fixture_tiny_bert as fixture_tiny_bert  # the fixture `tiny_bert`
from encoder_toys import tiny_head_config, tiny_layers_config, toy_interactions, toy_items

from recsys.data import schema as S
from recsys.encoder.config import EncoderConfig, ProjectionConfig
from recsys.encoder.finetune import finetune


def test_finetune_refuses_mismatched_catalogue(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="items has 3 rows"):
        finetune(toy_items().head(3), toy_interactions(), tiny_layers_config(), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_finetune_records_where_its_time_goes(tiny_bert: Path, tmp_path: Path) -> None:
    """The phases add up to the run, and a second run reads the lower layers' states from disk."""
    encoder = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16)
    config = tiny_layers_config(train_layers=1, epochs=2)
    runs, states = [], tmp_path / "states"
    for name in ("first", "second"):
        runs.append(
            finetune(
                toy_items(),
                toy_interactions(),
                config,
                out=tmp_path / name,
                encoder=encoder,
                state_cache=states,
            )
        )
        if name == "first":
            written = {p.name: p.stat().st_mtime_ns for p in states.iterdir()}
    assert len(written) == 2 and {p.name: p.stat().st_mtime_ns for p in states.iterdir()} == written
    assert runs[0].fingerprint == runs[1].fingerprint  # the cached states are the computed ones
    for result in runs:
        meta = json.loads((result.path / "recsys_encoder.json").read_text())
        seconds = list(meta["timings"].values())
        assert seconds and min(seconds) >= 0 and sum(seconds) <= meta["wall_seconds"] + 1e-6
        training = meta["seconds_per_step"] * result.steps
        assert meta["prepare_seconds"] > 0 and meta["prepare_seconds"] + training <= sum(seconds) + 1e-3


@pytest.mark.parametrize("method", ["head", "layers"])
def test_progress_prints_a_line_per_validation(
    method: str, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both methods report through one step callback: the bar, these lines, TensorBoard."""
    config: Any = (
        tiny_head_config(head=ProjectionConfig(hidden=32, lr=1e-2, batch_size=16, max_epochs=4))
        if method == "head"
        else tiny_layers_config(epochs=1, eval_every=2)
    )
    encoder = EncoderConfig(checkpoint=str(tiny_bert), max_tokens=16)
    result = finetune(
        toy_items(), toy_interactions(), config, out=tmp_path / "p", encoder=encoder, progress=True
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if "pair R@10" in line]
    unit, total = ("epoch", 4) if method == "head" else ("step", result.steps)  # patience never ends it
    validations = [h for h in result.history[1:] if "recall@10" in h]  # after the baseline
    assert len(validations) >= 2
    assert [line.split(":")[0] for line in lines] == [f"{unit} {int(h[unit])}/{total}" for h in validations]
    assert all(f"pair R@10 {h['recall@10']:.4f}" in line for h, line in zip(validations, lines, strict=True))


def test_finetune_cli_writes_an_encoder_that_evaluate_uses(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app

    monkeypatch.chdir(tmp_path)  # `recsys evaluate` keeps its embedding cache under ./artifacts
    data = toy_interactions()
    toy_items().write_parquet("items.parquet")
    pl.DataFrame(
        {
            S.USER_ID: [f"u{u}" for u in data.users.tolist()],
            S.ITEM_ID: [f"i{i}" for i in data.items.tolist()],
            S.TIMESTAMP: np.arange(len(data.users), dtype=np.int64),
        }
    ).write_parquet("events.parquet")
    settings = (
        f"[encoder]\ncheckpoint = {json.dumps(str(tiny_bert))}\nmax_tokens = 16\n"
        "[encoder_training]\nwindow = 3\ntemperature = 0.1\nvalidation_pairs = {held_out}\n"
        "[encoder_training.head]\nhidden = 32\nlr = 0.01\nbatch_size = 16\nmax_epochs = 10\n"
    )
    data_args = ["--items", "items.parquet", "--interactions", "events.parquet"]

    def finetune_cli(out: str, held_out: int) -> Any:
        Path("config.toml").write_text(settings.replace("{held_out}", str(held_out)))
        args = ["finetune", *data_args, "--out", out, "--config", "config.toml", "--cache-dir", "cache"]
        return CliRunner().invoke(app, [*args, "--no-progress"])

    result = finetune_cli("encoder", held_out=20)
    assert result.exit_code == 0, result.output
    assert Path("encoder/head.safetensors").is_file() and "held-out pair R@10" in result.output
    meta = json.loads(Path("encoder/recsys_encoder.json").read_text())
    assert meta["train_pairs"] + meta["held_out_pairs"] < 80  # the validation task's events only
    again = finetune_cli("encoder", held_out=20)
    assert again.exit_code == 2 and "already exists" in again.output  # never overwrites
    evaluate = [
        "evaluate",
        *data_args,
        "--models",
        "text",
        "--encoder",
        "encoder",
        "--k",
        "5",
        "--json",
        "e.json",
    ]
    evaluated = CliRunner().invoke(app, evaluate)
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(Path("e.json").read_text())["models"]["text"]["recall@5"] >= 0.0
    short = finetune_cli("other", held_out=500)  # more held-out pairs than the data has
    assert short.exit_code == 2 and "co-occurrence pairs" in short.output and not Path("other").exists()
