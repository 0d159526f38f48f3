"""``recsys serve``: run the BentoML service on the current (or a pinned) model bundle."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli.app import app

# BentoML's rule for a tag's version (its name is always the registry's model name here)
_VERSION = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$", re.IGNORECASE)


def pinned_tag(model: str, *, name: str) -> str:
    """``--model`` as a full tag: ``VERSION`` or ``NAME:VERSION``; anything else is a ``ValueError``.

    >>> pinned_tag("v1", name="recsys-bundle"), pinned_tag("recsys-bundle:v1", name="recsys-bundle")
    ('recsys-bundle:v1', 'recsys-bundle:v1')
    >>> pinned_tag("a:b:c", name="recsys-bundle")
    Traceback (most recent call last):
    ...
    ValueError: --model 'a:b:c': expected recsys-bundle:VERSION or VERSION (letters, digits, '-', '_', '.')
    """
    given_name, _, version = model.rpartition(":")
    if given_name in ("", name) and _VERSION.match(version) and len(version) <= 63:
        return f"{name}:{version}"
    raise ValueError(
        f"--model {model!r}: expected {name}:VERSION or VERSION (letters, digits, '-', '_', '.')"
    )


@app.command()
def serve(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 3000,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes the service on every interface.")
    ] = "127.0.0.1",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Pin a version (recsys-bundle:VERSION or VERSION) instead of following the current one.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
    threads: Annotated[
        int,
        typer.Option(
            "--threads", min=1, help="Batch, explain and similar-items requests scored at once per worker."
        ),
    ] = 2,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Online store URL (sqlite:///path.db or redis://host:port/db); "
            "default $RECSYS_ONLINE_STORE_URL or sqlite in $BENTOML_HOME/recsys/online.db.",
        ),
    ] = None,
    poll_seconds: Annotated[
        float,
        typer.Option(
            "--poll-seconds", min=0.0, help="How often to check for a new current version (0: never)."
        ),
    ] = 1.0,
    compile_ranker: Annotated[
        bool,
        typer.Option(
            "--compile-ranker/--no-compile-ranker",
            help="Compile each loaded bundle's ranker with lleaves (pip install 'recsys[fast]') before "
            "serving it: several times cheaper ranking, for seconds to a minute more per load.",
        ),
    ] = False,
) -> None:
    """Serve recommendations over HTTP from the BentoML model store ($BENTOML_HOME).

    The service follows `recsys models` (a newly published or rolled-back version is swapped in
    without a restart) unless --model pins a version. It listens on 127.0.0.1 only unless --host says
    otherwise. POST /admin/reload needs $RECSYS_ADMIN_TOKEN; POST /events needs $RECSYS_EVENTS_TOKEN
    when that is set.
    """
    from bentoml.exceptions import BentoMLException

    from recsys.pipeline import registry
    from serving import runtime

    try:
        tag = None if model is None else pinned_tag(model, name=registry.MODEL_NAME)
        version = registry.get(tag) if tag else registry.current()
    except (ValueError, registry.RegistryError, BentoMLException) as err:
        typer.echo(f"Cannot serve: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"Serving {version.tag} from {registry.bentoml_home()} on http://{host}:{port} "
        f"({'pinned' if tag else 'following the current version'})",
        err=True,
    )
    env = dict(os.environ)
    env[runtime.ENV_WORKERS] = str(workers)
    env[runtime.ENV_POLL_SECONDS] = str(poll_seconds)
    env[runtime.ENV_THREADS] = str(threads)
    env[runtime.ENV_COMPILE_RANKER] = "1" if compile_ranker else "0"
    # One request is small: BLAS/OpenMP thread pools per request only fight the other requests.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    if tag:
        env[runtime.ENV_MODEL_TAG] = tag
    else:
        env.pop(runtime.ENV_MODEL_TAG, None)
    if store:
        env[runtime.ENV_STORE_URL] = store
    # BentoML's own server (arbiter + workers) replaces this process, so signals reach it directly.
    # Its workers check that they still have this parent once they set their parent-death signal.
    env[runtime.ENV_SERVER_PID] = str(os.getpid())
    root = str(Path(__file__).resolve().parents[2])
    argv = [
        sys.executable, "-m", "bentoml", "serve", "serving.service:Recsys",
        "--host", host, "--port", str(port), "--working-dir", root,
    ]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
