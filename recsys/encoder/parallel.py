"""Data-parallel fine-tuning: the hook both methods (head and layers) take to train on several workers.

Each worker of a ``torch.distributed`` process group (Ray Train's ``TorchTrainer`` sets one up,
``recsys.pipeline.ray_train``) trains on its own equal share of the training pairs and, after every
backward pass, replaces its gradients by their mean over the workers, which is what
``DistributedDataParallel`` does. Every worker starts from the same seeded weights, so every worker
holds the same weights after each step, scores the same held-out pairs the same way and takes the
same early-stopping decision: the workers stay in lockstep without further messages. With one
worker it is the local run, step for step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DataParallel:
    """This worker's place in the group: ``rank`` of ``world`` workers.

    >>> DataParallel(rank=1, world=2).shard(np.arange(7)).tolist()  # equal shares: the odd row is left out
    [1, 3, 5]
    """

    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"DataParallel: rank must be in [0, world={self.world}), got {self.rank}")

    def shard(self, pairs: np.ndarray) -> np.ndarray:
        """This worker's rows of ``pairs`` (already shuffled): every ``world``-th, all shares equal,
        so that every worker takes the same number of steps per epoch."""
        usable = len(pairs) // self.world * self.world
        if usable < self.world:
            raise ValueError(f"{len(pairs)} training pairs cannot be shared by {self.world} workers")
        return pairs[:usable][self.rank :: self.world]

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Each gradient replaced by its mean over the workers (in place)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                parameter.grad /= self.world

    def agree(self, value: int) -> int:
        """The smallest ``value`` over the workers (a re-planned step count that all of them keep)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())
