"""``recsys train`` (fit, evaluate, publish a bundle), ``recsys finetune`` (the encoder alone) and
``recsys demo`` (``train`` on bundled data)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli._errors import data_errors
from recsys.cli.app import app
from recsys.cli.runs import MlflowOption, RunsDirOption, TensorBoardOption, check_exporters, finish_run

if TYPE_CHECKING:
    import polars as pl

    from recsys.data.dataset import Dataset
    from recsys.pipeline.train import TrainConfig

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def _config_error(exc: Exception, path: Path | None) -> typer.Exit:
    from rich.console import Console

    where = f"{path}: " if path is not None else ""  # the error names the key, this the file
    Console(stderr=True).print(f"[bold red]Invalid config:[/] {where}{exc}", highlight=False)
    return typer.Exit(2)


def _load_config(path: Path | None, *, finetune: bool) -> dict[str, Any]:
    """The config file's table, checked as far as it can be before the data is read."""
    from recsys.config import ConfigError, read_toml
    from recsys.pipeline.train import check_train_table

    try:
        table = read_toml(path) if path is not None else {}
        check_train_table(table)
    except ConfigError as exc:
        raise _config_error(exc, path) from None
    return table if finetune else table | {"finetune": False}


def _config_for(table: dict[str, Any], path: Path | None, interactions: pl.DataFrame) -> TrainConfig:
    """The table's config for these interactions: the model's unset keys derived from the data."""
    from recsys.config import ConfigError
    from recsys.pipeline.train import train_config_for

    try:
        return train_config_for(interactions, table=table)
    except ConfigError as exc:
        raise _config_error(exc, path) from None


def _metrics_table(rows: dict[str, dict[str, float]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for name in METRICS:
        table.add_column(name, justify="right")
    for model, metrics in rows.items():
        table.add_row(model, *(f"{metrics[m]:.4f}" if m in metrics else "-" for m in METRICS))
    return table


def _train_and_publish(
    dataset: Dataset,
    config: TrainConfig,
    out: Path,
    *,
    publish: bool,
    store: str | None = None,
) -> tuple[Path, dict[str, Any], str | None]:
    """The bundle, its metadata and its tag in the model store (``None`` unless published)."""
    import json

    from rich.console import Console

    from recsys.pipeline.publish import PublishError, publish_bundle
    from recsys.pipeline.train import train_bundle

    console = Console()
    bundle = train_bundle(
        dataset.items,
        dataset.interactions.drop("user_idx", "item_idx"),
        config=config,
        out_dir=out,
        cache_dir=out / "embedding-cache",
        progress=True,
    )
    meta = json.loads((bundle / "metadata.json").read_text())
    for task, metrics in meta["metrics"].items():
        console.print(_metrics_table({"pipeline": metrics}, f"two-stage pipeline, {task} split"))
    console.print(f"bundle written: {bundle}")
    tag = None
    if publish:
        try:
            tag = publish_bundle(bundle, store_url=store).tag
        except PublishError as err:
            Console(stderr=True).print(f"[bold red]Not published:[/] {err}", highlight=False)
            raise typer.Exit(1) from None
        console.print(f"published [bold]{tag}[/bold] (current) to the BentoML model store")
    return bundle, meta, tag


@app.command()
def train(
    ctx: typer.Context,
    items: Annotated[Path, typer.Option("--items", help="Items table (Parquet, CSV or JSON lines).")],
    interactions: Annotated[Path, typer.Option("--interactions", help="Interactions table.")],
    config: Annotated[Path | None, typer.Option("--config", help="Pipeline config (TOML).")] = None,
    finetune: Annotated[
        bool, typer.Option("--finetune/--no-finetune", help="Fine-tune the BERT encoder first.")
    ] = True,
    out: Annotated[Path, typer.Option("--out", help="Folder for bundles.")] = Path("artifacts/bundles"),
    publish: Annotated[
        bool, typer.Option("--publish/--no-publish", help="Publish to the BentoML model store.")
    ] = True,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Online store to load the features into (sqlite:///path.db or redis://host:port/db); "
            "default $RECSYS_ONLINE_STORE_URL or sqlite in $BENTOML_HOME/recsys/online.db.",
        ),
    ] = None,
    runs_dir: RunsDirOption = None,
    tensorboard: TensorBoardOption = None,
    mlflow: MlflowOption = False,
) -> None:
    """Fit encoder, retrievers and ranker; evaluate on validation and test; publish the bundle.

    Publishing loads the bundle's features into the online store first and makes the model current
    only once that worked: if it fails (exit 1), the previous model and its features keep serving.
    """
    import time

    from recsys.data.loading import load_dataset
    from recsys.experiments.runs import Invocation, data_files, training_record

    started = time.perf_counter()
    table = _load_config(config, finetune=finetune)
    check_exporters(tensorboard=tensorboard, mlflow=mlflow)
    with data_errors():
        dataset = load_dataset(items, interactions)
    settings = _config_for(table, config, dataset.interactions)
    bundle, meta, tag = _train_and_publish(dataset, settings, out, publish=publish, store=store)
    record = training_record(
        meta,
        data={"files": data_files(items=items, interactions=interactions)},
        run=Invocation(
            options=ctx.params,
            outputs={"bundle": bundle, "bundle_tag": tag},
            seconds=time.perf_counter() - started,
        ),
    )
    finish_run(record, runs_dir=runs_dir, tensorboard=tensorboard, mlflow=mlflow)


@app.command()
def finetune(
    items: Annotated[Path, typer.Option("--items", help="Items table (Parquet, CSV or JSON lines).")],
    interactions: Annotated[Path, typer.Option("--interactions", help="Interactions table.")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the fine-tuned encoder.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Pipeline config (TOML): its protocol, \\[encoder] and \\[encoder_training]."
        ),
    ] = None,
    cache_dir: Annotated[
        Path, typer.Option("--cache-dir", help="Embedding cache (the frozen vectors are reused).")
    ] = Path("artifacts/cache/embeddings"),
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="A progress bar and a line per validation.")
    ] = True,
    tensorboard: Annotated[
        Path | None,
        typer.Option("--tensorboard", help="Write TensorBoard logs here (needs the tensorboard package)."),
    ] = None,
) -> None:
    """Fine-tune the item encoder on the validation task's training events, as `recsys train` does.

    Those events exclude every validation and test target of the config's protocol, so the folder can
    be evaluated without leakage (`recsys evaluate --encoder OUT`) or used to embed (`recsys embed
    --model OUT`).
    """
    from rich.console import Console

    from recsys.data.loading import load_dataset
    from recsys.encoder.finetune import finetune as run_finetune

    table = _load_config(config, finetune=True)
    console = Console(stderr=True)
    if out.exists():
        console.print(
            f"[bold red]--out {out} already exists:[/] choose a new folder (nothing is overwritten)"
        )
        raise typer.Exit(2)
    with data_errors():
        dataset = load_dataset(items, interactions)
    settings = _config_for(table, config, dataset.interactions)
    training = settings.encoder_training
    try:
        split = settings.split(dataset.to_interactions())
        result = run_finetune(
            dataset.items,
            split.validation.train,
            training,
            out=out,
            encoder=settings.encoder,
            embedding_cache=cache_dir,
            progress=progress,
            tensorboard_dir=tensorboard,
        )
    except ValueError as exc:  # e.g. too few co-occurrence pairs for the held-out set and one batch
        console.print(f"[bold red]Cannot fine-tune:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    report = Console()
    report.print(
        f"fine-tuned ({training.method}) on {len(split.validation.train):,} training events: held-out pair "
        f"R@10 {result.baseline_recall:.4f} -> {result.best_recall:.4f} (best step {result.best_step} of "
        f"{result.steps}) in {result.wall_seconds:.0f} s",
        highlight=False,
    )
    report.print(f"wrote {out} (fingerprint {result.fingerprint[:12]})", highlight=False)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for bundles.")] = Path("artifacts/bundles"),
) -> None:
    """Train the full pipeline on the bundled MovieLens sample, compare it with the baselines, publish it."""
    import time

    import numpy as np
    from rich.console import Console

    from recsys.candidates.registry import source
    from recsys.data.loading import bundled_paths, load_dataset
    from recsys.evaluation.protocol import evaluate_task
    from recsys.pipeline.recommender import Recommender

    console = Console()
    started = time.perf_counter()
    items, interactions = bundled_paths()
    dataset = load_dataset(items, interactions)
    config = _config_for(_load_config(DEMO_CONFIG, finetune=True), DEMO_CONFIG, dataset.interactions)
    assert config.model is not None
    console.rule("two-stage pipeline (demo budget: see recsys/configs/demo.toml)")
    bundle, meta, _ = _train_and_publish(dataset, config, out, publish=True)

    console.rule("each candidate source alone vs the pipeline, same split")
    split = config.split(dataset.to_interactions())
    embeddings = np.load(bundle / "model" / "item_embeddings.npy", allow_pickle=False)
    rows: dict[str, dict[str, float]] = {}
    # the sequential source is left out here: it alone takes minutes to train on 2 cores
    for name in ("popularity", "als", "itemknn", "cooccurrence", "text"):
        source_config = config.model.source_config(name, time_unit="seconds")
        generator = source(name).build(source_config, item_embeddings=embeddings)
        rows[name] = evaluate_task(generator, split.test, ks=list(config.ks)).metrics
    rows["pipeline"] = meta["metrics"]["test"]
    console.print(_metrics_table(rows, f"test split ({config.protocol}), full ranking, history excluded"))

    console.rule("sample recommendations (what the service answers)")
    recommender = Recommender.load(bundle)
    titles = dict(zip(dataset.item_ids, dataset.items.get_column("title").to_list(), strict=True))
    frame = dataset.interactions
    for user in np.random.default_rng(0).choice(dataset.user_ids.to_list(), size=3, replace=False):
        history = frame.filter(frame["user_id"] == user).get_column("item_id").to_list()
        console.print(
            f"[bold]user {user}[/bold], last watched: " + "; ".join(titles[i] for i in history[-3:])
        )
        for rec in recommender.recommend(history, n=5):
            console.print(f"   {rec.score:7.3f}  {rec.title}  [dim]({', '.join(rec.sources)})[/dim]")
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s; serve it with `make serve`")
