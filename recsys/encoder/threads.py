"""Torch's intra-op thread count for one block: the encoder's batches and the projection head's training."""

from __future__ import annotations

import torch


class intra_op_threads:
    """Set torch's intra-op threads for a block and restore them afterwards (0: leave them)."""

    def __init__(self, n: int) -> None:
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n:
            torch.set_num_threads(self.old)
