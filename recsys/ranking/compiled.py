"""The ranker's bag as one machine-code function: LightGBM's trees compiled by lleaves, at load time.

Scoring ~200 candidates with the bag of five LightGBM boosters is the largest single cost of a
``/recommend`` once retrieval is cheap (0.6-2.2 ms of CPU, docs/studies/serving_cost.md): LightGBM
walks every tree node by node through its generic interpreter. lleaves (LLVM, through llvmlite)
turns the trees into straight-line compiled code with the same arithmetic, about 20x faster here.

What is compiled, and where:

- The bag's boosters are merged into **one** LightGBM text model holding all their trees
  (``merged_model_text``): its raw score is the sum of the boosters' scores, so the bag's mean is
  that sum over the number of boosters. The merge is text, the compile input is that text.
- The compile runs **in the serving process, from the bundle's LightGBM text models**, and its
  machine code never leaves that process's memory. A bundle therefore still holds only data: a
  compiled ``.so`` or object file stored in a bundle would run code taken from an artifact at load,
  which the bundle format refuses (artifacts load without executing code), so none is written or
  read. The price is the compile time at each load (seconds to a minute on 2 cores, growing with
  the number of trees), paid in the loader's thread while the previous model keeps serving.
- A bag with a prior (``RankerConfig.try_prior``) adds a function of a feature to each booster's
  score outside the trees; it is not compiled (``compile_bag`` returns None and says why), and
  neither is anything when lleaves is not installed: LightGBM scores as before.

``CompiledBag.predict`` equals ``LambdaRanker.predict`` to float64 rounding (the trees are summed in
one pass instead of booster by booster); ``tests/test_ranker_compiled.py`` holds the two equal and
in the same order.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_TREE = re.compile(r"(?m)^Tree=\d+$")


def merged_model_text(model_texts: list[str]) -> str:
    """One LightGBM text model with every tree of ``model_texts`` (the first one's header and
    parameters), renumbered in order; LightGBM rewrites it so ``tree_sizes`` is right.

    Its raw score is the sum of the models' raw scores. The models must share their features.
    """
    import lightgbm as lgb

    if not model_texts:
        raise ValueError("merged_model_text needs at least one model")
    first = model_texts[0]
    features = {_line("feature_names", text) for text in model_texts}
    if len(features) != 1:
        raise ValueError("the bag's models have different feature_names; they cannot be merged")
    head = re.sub(r"(?m)^tree_sizes=.*\n", "", first[: first.index("\nTree=0\n") + 1])
    trees: list[str] = []
    for k, text in enumerate(model_texts):
        start = text.find("\nTree=0\n")
        if start < 0:
            raise ValueError(f"model {k} of the bag has no trees")
        trees += _TREE.split(text[start + 1 : text.index("end of trees")])[1:]
    body = "".join(f"Tree={i}{tree}" for i, tree in enumerate(trees))
    merged = lgb.Booster(model_str=head + body + first[first.index("end of trees") :])
    if merged.num_trees() != len(trees):
        raise ValueError(f"merged model holds {merged.num_trees()} trees, expected {len(trees)}")
    return str(merged.model_to_string())


def _line(key: str, text: str) -> str:
    found = re.search(rf"(?m)^{key}=.*$", text)
    if found is None:
        raise ValueError(f"not a LightGBM text model: no {key} line")
    return found.group()


class CompiledBag:
    """The mean of a bag of boosters, as one lleaves-compiled function of the feature rows.

    Parameters
    ----------
    model_texts
        Each booster's LightGBM text model (``Booster.model_to_string()``).
    """

    def __init__(self, model_texts: list[str]) -> None:
        import lleaves

        self.n_boosters = len(model_texts)
        with tempfile.TemporaryDirectory(prefix="recsys-ranker-") as tmp:
            path = Path(tmp) / "bag.txt"  # lleaves reads a file; the compiled code stays in memory
            path.write_text(merged_model_text(model_texts))
            self._model: Any = lleaves.Model(model_file=str(path))
            self._model.compile(cache=None)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n,) float32: the bag's mean score of each feature row (NaN: missing, as in LightGBM)."""
        rows = np.ascontiguousarray(features, dtype=np.float64)
        total = np.asarray(self._model.predict(rows, n_jobs=1), dtype=np.float64)
        return (total / self.n_boosters).astype(np.float32)


def compile_bag(boosters: list[Any], priors: list[str | None]) -> CompiledBag | None:
    """``CompiledBag`` of LightGBM ``boosters``, or None (logged) when it cannot stand in for them:
    a booster with a prior, or lleaves not installed."""
    if any(prior is not None for prior in priors):
        logger.warning("ranker not compiled: its bag boosts from a prior, which lives outside the trees")
        return None
    try:
        import lleaves  # noqa: F401
    except ImportError:
        logger.warning("ranker not compiled: lleaves is not installed (pip install 'recsys[fast]')")
        return None
    return CompiledBag([booster.model_to_string() for booster in boosters])
