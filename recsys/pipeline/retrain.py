"""``recsys retrain``: the nightly job. One unattended run folds in the inbox, gates, publishes.

Under the run lock (``work_dir/retrain.lock``):

1. **ingest** the inbox into ``data_dir`` (``recsys.pipeline.ingest``): valid files appended and
   moved to ``processed/``, invalid ones to ``quarantine/`` with a report;
2. nothing new since the last decided run: exit 0, "nothing to do";
3. **embed** through the embedding cache (only new or changed texts are encoded), fine-tune the
   projection head (the transformer layers only when ``layers_due``), **fit** the two-stage model
   once, on the events before the gate window, and write the **bundle** (``retrain_stages``);
4. **gate** it against the current production bundle on that window (``recsys.pipeline.gate``);
5. **publish** (``recsys.pipeline.publish``): its snapshot's ``events_through`` lets the online store
   prune exactly the service events the data holds; then **retain** ``keep_versions`` bundles.

Exit codes (``RunSummary.exit_code``): 0 published or nothing to do, 2 bad input (quarantined files
with ``on_bad_file = "fail"``, reported once the valid files are done), 3 the gate kept production,
1 failure. A SIGKILL anywhere leaves production as it was: the bundle is written whole before the
publish, and the publish moves the pointer last. Kill points for tests: ``die_at(stage)``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from recsys.data.dataset import Dataset
from recsys.data.splits import EvalTask
from recsys.pipeline import registry
from recsys.pipeline.datadir import Manifest, load_data
from recsys.pipeline.gate import GateDecision, decide, gate_task, score_bundle
from recsys.pipeline.lock import RunLock, die_at
from recsys.pipeline.retrain_config import RetrainConfig, RetrainState
from recsys.pipeline.retrain_stages import Log, Stages, build_bundle, peak_rss_mb
from recsys.pipeline.train import data_fingerprint

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_KEPT = 0, 1, 2, 3


@dataclass
class RunSummary:
    """What one run did; written as ``work_dir/runs/<started>.json``."""

    started_at: str
    outcome: str = "failed"  # published | nothing to do | kept production | failed
    exit_code: int = EXIT_FAILED
    ingest: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # the accumulated data: fingerprint, counts
    items_embedded: int | None = None
    gate: dict[str, Any] | None = None
    published: str | None = None
    removed_versions: list[str] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    bundle: str | None = None
    error: str | None = None
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_retrain(config: RetrainConfig, *, log: Log, today: date | None = None) -> RunSummary:
    """One nightly run (the module docstring); the summary is also written to ``work_dir/runs/``.

    Raises ``LockHeld`` when another run holds the lock; any other failure is in the summary
    (``exit_code`` 1, ``error``) after a ``failed`` event is logged.
    """
    started = time.perf_counter()
    summary = RunSummary(started_at=datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
    stages = Stages(log)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(config.work_dir / "retrain.lock"):
        try:
            _run(config, summary, stages, today=today or datetime.now(UTC).date())
        except Exception as exc:
            summary.outcome, summary.exit_code, summary.error = (
                "failed",
                EXIT_FAILED,
                f"{type(exc).__name__}: {exc}",
            )
            stages.event("failed", error=summary.error)
        summary.stages = stages.timings
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.peak_rss_mb = peak_rss_mb()
        _write_summary(config.work_dir, summary)
        stages.event(
            "finished", outcome=summary.outcome, exit_code=summary.exit_code, published=summary.published
        )
    return summary


def _run(config: RetrainConfig, summary: RunSummary, stages: Stages, *, today: date) -> None:
    state = RetrainState.read(config.work_dir)
    with stages.stage("ingest"):
        result = _ingest(config)
    die_at("ingest")  # the inbox is folded in, nothing decided on it yet
    summary.ingest = result.to_json()
    stages.event(
        "ingested",
        files=len(result.files_ingested),
        quarantined=list(result.files_quarantined),
        rows=result.rows_added,
        items_changed=result.items_changed,
    )
    bad_input = bool(result.files_quarantined) and config.on_bad_file == "fail"
    dataset = _load(config.data_dir)
    fingerprint = data_fingerprint(dataset.items, dataset.interactions) if dataset is not None else None
    if dataset is not None:
        summary.data = {"fingerprint": fingerprint, **dataset.summary()}
    if dataset is None or fingerprint == state.decided_fingerprint:
        summary.outcome, summary.items_embedded = "nothing to do", 0
        summary.exit_code = EXIT_BAD_INPUT if bad_input else EXIT_OK
        stages.event(
            "nothing_to_do", reason="no data yet" if dataset is None else "no new data since the last run"
        )
        return
    task = gate_task(dataset, gate_days=config.gate_days)
    bundle, built, state = build_bundle(
        config, dataset, task, state=state, stages=stages, events_through=result.events_through, today=today
    )
    summary.bundle, summary.items_embedded = str(bundle), built["items_embedded"]
    with stages.stage("gate"):
        decision = _gate(config, dataset, task, bundle)
    summary.gate = decision.to_json()
    stages.event("gate", publish=decision.publish, reason=decision.reason, interval=summary.gate["interval"])
    if decision.publish:
        with stages.stage("publish"):
            summary.published = _publish(config, bundle)
        with stages.stage("retain"):
            summary.removed_versions = retain_versions(config.keep_versions)
            _tidy_bundles(config.work_dir / "bundles", keep=config.keep_versions)
    replace(state, decided_fingerprint=fingerprint).write(config.work_dir)
    summary.outcome = "published" if decision.publish else "kept production"
    summary.exit_code = EXIT_BAD_INPUT if bad_input else EXIT_OK if decision.publish else EXIT_KEPT


def _load(data_dir: Path) -> Dataset | None:
    """The accumulated data, or ``None`` before the first items file arrived."""
    return load_data(data_dir) if Manifest.read(data_dir).items is not None else None


def _ingest(config: RetrainConfig) -> Any:
    """Fold the inbox and the service's event log into ``data_dir``."""
    from feature_store.online import open_store
    from recsys.pipeline.ingest import ingest

    store = open_store(config.store or registry.default_online_store_url())
    try:
        return ingest(inbox_dir=config.inbox_dir, data_dir=config.data_dir, store=store)
    finally:
        store.close()


def _gate(config: RetrainConfig, dataset: Dataset, task: EvalTask, bundle: Path) -> GateDecision:
    """Score the candidate and production (its saved bundle) on the same gate users and histories."""
    from recsys.pipeline.recommender import Recommender

    if not len(task.users):
        has_production = _production() is not None
        reason = "no user of the gate window was seen before it: nothing to compare on"
        return GateDecision(not has_production, reason, 0, {}, None, None)
    floor = config.coverage_floor
    candidate = score_bundle(Recommender.load(bundle), task, dataset, coverage_floor=floor)
    production, note = None, ""
    production_path = _production()
    if production_path is not None:
        try:
            production = score_bundle(Recommender.load(production_path), task, dataset, coverage_floor=floor)
        except Exception as exc:  # e.g. written by a version whose features this code does not compute
            # (LightGBM refuses the rows): the service cannot answer with it either, so it is no bar
            note = f"production bundle {production_path.name} cannot be evaluated by this code ({exc}); "
    decision = decide(candidate, production, tolerance=config.tolerance)
    return replace(decision, reason=note + decision.reason)


def _production() -> Path | None:
    try:
        return registry.current().path
    except registry.RegistryError:
        return None


def _publish(config: RetrainConfig, bundle: Path) -> str:
    from recsys.pipeline.publish import publish_bundle

    die_at("before-pointer")  # the bundle is whole, production untouched
    return publish_bundle(bundle, store_url=config.store or None).tag


def retain_versions(keep: int) -> list[str]:
    """Delete all but the newest ``keep`` bundles from the model store, never the current one or the
    one a rollback returns to; returns the deleted tags."""
    import bentoml

    with registry.publishing():
        protected = {v.tag for v in registry.kept()}
        versions = registry.list_versions()
        old = [v.tag for v in versions[: max(len(versions) - keep, 0)] if v.tag not in protected]
        for tag in old:
            bentoml.models.delete(tag)
    return old


def _tidy_bundles(folder: Path, *, keep: int) -> None:
    """The job's own copies of its bundles (the model store holds the published ones): the newest few."""
    import shutil

    bundles = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in bundles[: max(len(bundles) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def _write_summary(work_dir: Path, summary: RunSummary) -> Path:
    from recsys.data.io import atomic_path

    path = work_dir / "runs" / f"{summary.started_at}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary.to_json(), indent=2, default=str))
    return path
