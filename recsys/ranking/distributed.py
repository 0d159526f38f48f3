"""One worker's part in a distributed LightGBM fit of the ranker (Ray Train's LightGBM trainer,
``recsys.pipeline.ray_train``); outside one, :class:`Worker` changes nothing.

* **Whole groups**: a worker trains on its share of the user groups, dealt round robin, never on
  part of a group (LambdaRank's gradients are computed within a group).
* **The same bins**: LightGBM finds each feature's bin boundaries on one worker's share; every worker
  is given all rows, so it builds the bins from the rows the local fit bins from, before the
  network is up, and uses them as its training set's reference. The histograms summed over the
  workers are then the local fit's, up to the order of the sums.
* **Other trees where** ``min_data_in_leaf`` **binds**: LightGBM's data-parallel learner does not
  count a leaf's rows; it carries the count its split estimated from the hessians, where the serial
  learner counts them, and checks ``min_data_in_leaf`` against it. With LambdaRank's uneven hessians
  the estimates are far off (3,749 rows counted, 1,285 estimated), so two workers split leaves the
  local fit keeps whole. At ``min_data_in_leaf = 1`` the trees were the local ones in most fits
  measured, not all (``docs/studies/ray_ranker_gap.md``).
* **A port per training**: a listener released by one LightGBM training cannot be bound again at
  once (``Binding port ... failed``), so each training shifts the ports the trainer gave by the
  trainings before it; every worker trains the same sequence.

>>> Worker(rank=1, world=2).share(np.array([True, False, True, True])).tolist()
[False, False, True, False]
>>> Worker().params(), Worker().share(np.array([True, False])).tolist()
({}, [True, False])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Worker:
    """``rank`` of ``world`` workers, with LightGBM's ``network`` parameters (``machines``,
    ``local_listen_port``, ``num_machines``); the defaults are a fit on one machine."""

    network: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world: int = 1
    trainings: int = 0  # LightGBM trainings so far: the port shift of the next one

    def share(self, eligible: np.ndarray) -> np.ndarray:
        """This worker's share of the ``eligible`` groups (a mask): every ``world``-th of them."""
        if int(eligible.sum()) < self.world:
            raise ValueError(
                f"{int(eligible.sum())} training groups cannot be shared by {self.world} workers"
            )
        position = np.cumsum(eligible) - 1  # each eligible group's place among them
        mine: np.ndarray = eligible & (position % self.world == self.rank)
        return mine

    def params(self) -> dict[str, Any]:
        """The network parameters of the next training (none on one machine)."""
        if not self.network:
            return {}
        shift, self.trainings = self.trainings, self.trainings + 1
        network = {"tree_learner": "data", "pre_partition": True, **self.network}
        if "machines" in network and "local_listen_port" in network:
            hosts = [machine.rsplit(":", 1) for machine in str(network["machines"]).split(",")]
            network["machines"] = ",".join(f"{host}:{int(port) + shift}" for host, port in hosts)
            network["local_listen_port"] = int(network["local_listen_port"]) + shift
        return network

    def bins(
        self,
        features: np.ndarray,
        rows: np.ndarray,
        feature_names: list[str],
        *,
        min_data_in_leaf: int,
        seed: int,
    ) -> Any:
        """The reference Dataset of ``rows`` that fixes the bins (module docstring); ``None`` on one
        machine, where the training set finds them itself. ``seed`` is the fit's: above LightGBM's
        bin sample (200,000 rows) it picks the rows the boundaries are found on."""
        if not self.network:
            return None
        import lightgbm as lgb

        params = {"min_data_in_leaf": min_data_in_leaf, "seed": seed, "verbosity": -1}
        return lgb.Dataset(features[rows], feature_name=feature_names, params=params).construct()
