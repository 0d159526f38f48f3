"""``recsys embed``: turn a catalogue into item embeddings with the BERT item encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recsys.cli._errors import data_errors
from recsys.cli.app import app

DEFAULT_CACHE = Path("artifacts") / "cache" / "embeddings"


def read_items(path: Path) -> object:
    """Read an items table and check the columns the encoder needs; errors name the file."""
    import polars as pl

    from recsys.data import schema as S
    from recsys.data.io import DataFileError, read_table

    frame = read_table(path).collect()
    missing = [c for c in (S.ITEM_ID, S.TITLE) if c not in frame.columns]
    if missing:
        raise DataFileError(f"{path}: items table lacks column(s) {', '.join(missing)}")
    frame = frame.with_columns(pl.col(S.ITEM_ID).cast(pl.String))
    null_ids = frame.get_column(S.ITEM_ID).is_null()
    if null_ids.any():
        row = int(null_ids.arg_true()[0]) + 1
        raise DataFileError(f"{path}: column {S.ITEM_ID} is empty in row {row} (1-based)")
    duplicated = frame.get_column(S.ITEM_ID).is_duplicated()
    if duplicated.any():
        row = int(duplicated.arg_true()[0]) + 1
        value = frame.get_column(S.ITEM_ID)[row - 1]
        raise DataFileError(f"{path}: column {S.ITEM_ID} repeats {value!r} (row {row}, 1-based)")
    return frame


@app.command()
def embed(
    items: Annotated[Path, typer.Option("--items", help="Items table (Parquet, CSV or JSON lines).")],
    out: Annotated[
        Path, typer.Option("--out", help="Output Parquet: item_id + fixed-size float32 embedding.")
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Encoder: a local folder (e.g. from fine-tuning) or a cached hub name. "
            "Default: the packaged all-MiniLM-L6-v2 BERT.",
        ),
    ] = "",
    cache_dir: Annotated[
        Path, typer.Option("--cache-dir", help="Embedding cache: re-runs embed only new or changed items.")
    ] = DEFAULT_CACHE,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="Embed everything, read and write no embedding cache (the ONNX graph in "
            "CACHE_DIR/onnx is still reused).",
        ),
    ] = False,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="auto: ONNX Runtime when installed and the model exports (same vectors, faster), "
            "else torch; onnx: fail instead of falling back; torch: never export.",
        ),
    ] = "auto",
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Dynamic int8 quantization (CPU): ONNX Runtime per-channel int8, or torch's when "
            "falling back; see docs/RESULTS.md for its speed and quality.",
        ),
    ] = False,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Token limit per item (default: the encoder's, 128).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.", min=1)] = 64,
    threads: Annotated[
        int, typer.Option("--threads", help="Intra-op threads (0: the runtime's default).", min=0)
    ] = 0,
) -> None:
    """Embed every item's text (title, brand, category, description) and write them atomically."""
    import dataclasses
    import time

    from rich.console import Console

    from recsys.data import schema as S
    from recsys.encoder.embed import embed_items, with_runtime, write_embeddings
    from recsys.encoder.model import EncoderLoadError, load_encoder
    from recsys.encoder.ort import OnnxUnavailable

    console = Console(stderr=True)
    with data_errors():
        frame = read_items(items)
    started = time.perf_counter()
    try:
        encoder = load_encoder(model)
    except EncoderLoadError as exc:
        console.print(f"[bold red]Cannot load the encoder:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    overrides: dict[str, object] = {"batch_size": batch_size, "threads": threads, "runtime": runtime}
    if max_tokens is not None:
        overrides["max_tokens"] = max_tokens
    try:
        config = dataclasses.replace(encoder.config, **overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if config.max_tokens != encoder.config.max_tokens:
        encoder = load_encoder(model, config=config)  # max_tokens is part of the fingerprint
    else:
        encoder.config = config
    if int8:
        encoder = encoder.quantized()
    try:  # the runtime decides the fingerprint of int8 vectors, so choose it before embedding
        encoder = with_runtime(encoder, onnx_dir=cache_dir / "onnx")
    except OnnxUnavailable as exc:  # only with --runtime onnx; auto falls back to torch
        console.print(f"[bold red]Cannot use ONNX Runtime:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    vectors = embed_items(
        frame,  # type: ignore[arg-type]
        encoder=encoder,
        cache_dir=None if no_cache else cache_dir,
        progress=console.is_terminal,
    )
    write_embeddings(frame[S.ITEM_ID], vectors, out, fingerprint=encoder.fingerprint)  # type: ignore[index]
    seconds = time.perf_counter() - started
    precision = " int8" if encoder.config.quantize else ""
    console.print(
        f"[green]Wrote[/] {out}: {vectors.shape[0]:,} items x {vectors.shape[1]} dims in {seconds:.1f}s "
        f"(encoder {encoder.fingerprint[:12]}, {encoder.runtime}{precision}).",
        highlight=False,
    )
