"""``recsys.encoder.pairs``: co-occurrence pairs, the held-out split and the InfoNCE loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from encoder_toys import tiny_head_config, tiny_layers_config, toy_interactions

from recsys.data.dataset import Interactions
from recsys.encoder.pairs import cooccurrence_pairs, info_nce, training_pairs


def test_info_nce_masks_duplicate_partners() -> None:
    """A batch where two anchors share a partner: the duplicate must not count as a negative."""
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), dim=-1)
    anchors, positives = e[[0, 1]], e[[2, 2]]
    loss = info_nce(anchors, positives, torch.tensor([0, 1]), torch.tensor([2, 2]), 0.1)
    # each row has only its own column left: the loss is exactly zero
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_pairs_come_from_windows_of_one_user() -> None:
    data = Interactions.from_arrays([0, 0, 0, 1], [1, 2, 3, 4], n_users=2, n_items=5)
    pairs, counts = cooccurrence_pairs(data, window=2)
    assert pairs.tolist() == [[1, 2], [1, 3], [2, 3]] and counts.tolist() == [1, 1, 1]


def test_both_methods_hold_out_the_same_pairs() -> None:
    """So their held-out recalls compare; the training pairs are all the others (or ``max_pairs``)."""
    data = toy_interactions()
    head_pairs, head_held_out = training_pairs(data, tiny_head_config())
    layers_pairs, layers_held_out = training_pairs(data, tiny_layers_config(max_pairs=20))
    np.testing.assert_array_equal(head_held_out, layers_held_out)
    assert len(head_held_out) == 30 and len(layers_pairs) == 20
    np.testing.assert_array_equal(layers_pairs, head_pairs[:20])
    everything = {tuple(p) for p in cooccurrence_pairs(data, window=3)[0].tolist()}
    assert {tuple(p) for p in [*head_pairs.tolist(), *head_held_out.tolist()]} == everything
    with pytest.raises(ValueError, match=r"need at least validation_pairs \+ head\.batch_size = 530"):
        training_pairs(data, tiny_head_config(validation_pairs=514))
