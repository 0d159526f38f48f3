"""A run record's figures in other tools: TensorBoard event files and an MLflow run.

Neither tool is a dependency of ``recsys``: each is imported only when asked for, and
:func:`missing_exporter` says, before a run starts, what to install (``pip install tensorboard``, the
``[tensorboard]`` extra, or ``pip install mlflow``), so no one waits an hour for a run whose export
then fails.

TensorBoard (:func:`export_tensorboard`) gets one sub-folder per run, named by its id, so several runs
written to one ``--tensorboard DIR`` appear as separate runs side by side: scalars ``MODEL/METRIC@K``
(test metrics) and ``timings/NAME`` (seconds), at step 0. MLflow (:func:`log_to_mlflow`) gets a run
named by the record's id in the active tracking URI (``MLFLOW_TRACKING_URI``, else MLflow's default),
with the options and config as params, the metrics and timings, tags for the data fingerprint and the
git commit, and the record plus the files it names (``--json``, ``--per-user``) as artifacts.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from recsys.experiments.runs import RunRecord

# The module to look for, and what to tell a user who lacks it.
EXPORTERS = {
    "tensorboard": (
        "tensorboard",
        "--tensorboard needs the tensorboard package (the [tensorboard] extra): pip install tensorboard",
    ),
    "mlflow": ("mlflow", "--mlflow needs MLflow, which recsys does not install: pip install mlflow"),
}
_MLFLOW_PARAM_CHARS = 500  # MLflow caps a param's value (6000 or 8000 by version); long lists are cut


def missing_exporter(name: str) -> str | None:
    """A one-line message when exporter ``name`` (``tensorboard`` or ``mlflow``) cannot be imported,
    else ``None``. It looks the module up without importing it (importing MLflow takes seconds)."""
    module, message = EXPORTERS[name]
    return message if importlib.util.find_spec(module) is None else None


def scalars(record: RunRecord) -> dict[str, float]:
    """The record's numbers by TensorBoard tag: ``MODEL/METRIC@K`` and ``timings/NAME``; undefined
    metrics are left out.

    >>> scalars(RunRecord(id="r", command="evaluate", created_at="",
    ...                   metrics={"als": {"ndcg@10": 0.5, "ild@10": None}}, timings={"total": 3.0}))
    {'als/ndcg@10': 0.5, 'timings/total': 3.0}
    """
    out = {
        f"{model}/{key}": float(value)
        for model, values in record.metrics.items()
        for key, value in values.items()
        if value is not None
    }
    return out | {f"timings/{name}": float(seconds) for name, seconds in record.timings.items()}


def export_tensorboard(record: RunRecord, directory: str | Path) -> Path:
    """Write :func:`scalars` (step 0) and the record as text to ``directory/<run id>``; returns that
    folder. Needs the tensorboard package (torch's ``SummaryWriter`` writes through it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch imports tensorboard inside: the package is what is missing
        raise ImportError(EXPORTERS["tensorboard"][1]) from exc
    folder = Path(directory) / record.id
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, global_step=0)
        # TensorBoard renders text as markdown: indent by four spaces to show the JSON as code
        writer.add_text("record", "\n".join("    " + line for line in record.to_json().splitlines()))
    finally:
        writer.close()
    return folder


def log_to_mlflow(record: RunRecord, *, record_path: Path | None = None) -> str:
    """Log ``record`` as a new MLflow run in the active tracking URI; returns MLflow's run id.

    The artifacts are the record (``record_path``, else the record serialised afresh) and every file it
    names that still exists; the bundle folder is named in a tag, not copied.
    """
    import mlflow

    with mlflow.start_run(run_name=record.id) as active:
        mlflow.set_tags(_mlflow_tags(record))
        mlflow.log_params(dict(_flat("", {"options": record.options, "config": record.config})))
        mlflow.log_metrics({_mlflow_key(tag): value for tag, value in scalars(record).items()})
        if record_path is not None and record_path.is_file():
            mlflow.log_artifact(str(record_path))
        else:
            mlflow.log_text(record.to_json(), f"{record.id}.json")
        for key in ("json", "per_user"):
            path = Path(record.outputs.get(key, ""))
            if record.outputs.get(key) and path.is_file():
                mlflow.log_artifact(str(path), artifact_path="outputs")
        return str(active.info.run_id)


def _mlflow_tags(record: RunRecord) -> dict[str, str]:
    tags = {"recsys.run_id": record.id, "recsys.command": record.command}
    if record.data.get("fingerprint"):
        tags["recsys.data_fingerprint"] = str(record.data["fingerprint"])
    if record.git:
        tags["mlflow.source.git.commit"] = str(record.git["commit"])  # MLflow's own tag for it
        tags["recsys.git_dirty"] = str(record.git["dirty"]).lower()
    for key in ("bundle", "bundle_tag"):
        if key in record.outputs:
            tags[f"recsys.{key}"] = record.outputs[key]
    return tags


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    """Nested dicts as dotted MLflow params: ``config.model.als.factors`` -> ``'64'``."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flat(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield _mlflow_key(prefix), str(value)[:_MLFLOW_PARAM_CHARS]


def _mlflow_key(name: str) -> str:
    """MLflow names allow letters, digits, ``_ - . / :`` and spaces: ``ndcg@10`` -> ``ndcg_at_10``.

    >>> _mlflow_key("als/ndcg@10")
    'als/ndcg_at_10'
    """
    return re.sub(r"[^\w\-./: ]", "_", name.replace("@", "_at_"))
