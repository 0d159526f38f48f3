"""Test data for the report: one small evaluation, computed once per test process, and a reader of the
numbers a page shows."""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from evaluate_helpers import write_small_dataset

MODELS = ["popularity", "itemknn", "cooccurrence"]  # cheap: the evaluation takes a second
KS = [5, 10]
PIPELINE = "pipeline"


@functools.cache
def _evaluation() -> str:
    from recsys.data.loading import load_dataset
    from recsys.experiments.evaluate import EvaluationOptions, evaluate

    folder = Path(tempfile.mkdtemp(prefix="report-data-"))
    dataset = load_dataset(*write_small_dataset(folder))
    report = json.loads(evaluate(dataset, EvaluationOptions(models=MODELS, ks=KS)).to_json())
    report["pipeline_diagnostics"] = {PIPELINE: _tiny_pipeline_diagnostics(dataset)}
    return json.dumps(report)


def _tiny_pipeline_diagnostics(dataset: Any) -> dict[str, Any]:
    """The diagnostics ``recsys evaluate --models pipeline`` reports, of a tiny two-stage pipeline fitted
    on the same data in about a second (the packaged configuration takes 10-40 s here: it loads the
    text encoder and trains the sequential source at full size)."""
    from candidate_contract import TINY_SEQUENTIAL

    from recsys.candidates.als import ALSConfig
    from recsys.data.splits import leave_last_out
    from recsys.evaluation.protocol import tune_and_test
    from recsys.experiments.models import MODELS as TABLE
    from recsys.pipeline.two_stage import CandidatesConfig, TwoStage, TwoStageConfig
    from recsys.ranking.ranker import RankerConfig

    config = TwoStageConfig(
        candidates=CandidatesConfig(
            sources=("als", "itemknn", "cooccurrence", "sequential", "popularity"),
            per_source=10,
            total=20,
            als=ALSConfig(factors=4, iterations=5, num_threads=1),
            sequential=TINY_SEQUENTIAL,
        ),
        ranker=RankerConfig(search=((7, 0.1),), max_rounds=20, min_data_in_leaf=5, bags=1, num_threads=1),
        text_features=False,
    )
    # the registry hands every sequential source item vectors; this one (use_text=False) ignores them
    vectors = np.random.default_rng(0).normal(size=(dataset.n_items, 8)).astype(np.float32)
    result = tune_and_test(
        lambda c: TwoStage(c, items=dataset.items, item_embeddings=vectors),
        [config],
        leave_last_out(dataset.to_interactions()),
        ks=[5],
        diagnose=TABLE[PIPELINE].diagnose,
    )
    return result.diagnostics  # type: ignore[no-any-return]


def evaluation() -> dict[str, Any]:
    """The parsed ``recsys evaluate --json`` of :data:`MODELS` on the small dataset (a fresh copy), with
    the ``pipeline_diagnostics`` of a tiny pipeline (:data:`PIPELINE`, not among the models)."""
    return copy.deepcopy(json.loads(_evaluation()))


class _Numbers(HTMLParser):
    """Every element carrying ``data-number``: its data attributes and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {key[5:]: value or "" for key, value in attrs if key.startswith("data-")}
        if "number" in data:
            self._open = {"attributes": data, "text": ""}

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None:
            self.found.append(self._open)
            self._open = None


def shown_numbers(page: str) -> list[dict[str, Any]]:
    """The numbers of ``page`` as ``report.json`` lists them: ``{"id", "value", "text", **tags}``."""
    parser = _Numbers()
    parser.feed(page)
    return [as_listed(found["attributes"], found["text"]) for found in parser.found]


def as_listed(attributes: dict[str, str], text: str) -> dict[str, Any]:
    """One element's ``data-*`` attributes and text in the shape of a ``report.json`` number."""
    tags = {key: value for key, value in attributes.items() if key not in ("number", "value")}
    value = attributes["value"]
    return {"id": attributes["number"], "value": float(value) if value else None, "text": text, **tags}
