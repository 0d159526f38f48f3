"""Runs the candidate-generator contract (``candidate_contract``) on every factory, and checks that
the factories cover every source of ``recsys.candidates.registry``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from candidate_contract import (
    A_ITEMS,
    B_ITEMS,
    COLD_ITEM,
    COMMUNITY_ITEMS,
    FACTORIES,
    N_ITEMS,
    Factory,
    check_output,
    community_data,
    probe_histories,
    seen_histories,
)

from recsys.candidates.base import BLOCK_ROWS, CandidateGenerator, NotFittedError
from recsys.candidates.registry import SOURCES, CandidatesConfig
from recsys.data.dataset import Histories

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. implicit's BLAS-threads warning


def test_every_registered_source_has_a_factory() -> None:
    assert sorted({f.source for f in FACTORIES}) == sorted(SOURCES)


def test_the_pipeline_config_has_one_field_per_registered_source() -> None:
    """``CandidatesConfig`` (the pipeline's) configures each source under its name, with its config type."""
    config = CandidatesConfig()
    assert config.sources == tuple(SOURCES)
    for name, source in SOURCES.items():
        assert type(getattr(config, name)) is source.config, name
    others = {f.name for f in fields(CandidatesConfig)} - set(SOURCES)
    assert others == {"sources", "per_source", "total"}
    with pytest.raises(ValueError, match="unknown candidate source 'nope'"):
        CandidatesConfig(sources=("als", "nope"))


def test_a_source_without_the_embeddings_it_needs_is_refused() -> None:
    for source in SOURCES.values():
        if source.embeddings:
            with pytest.raises(ValueError, match=f"{source.name!r} needs item embeddings"):
                source.build(source.config(), item_embeddings=None)
        with pytest.raises(TypeError, match=f"{source.name!r} takes {source.config.__name__}"):
            source.build(object(), item_embeddings=None)


@pytest.fixture(scope="module", params=FACTORIES, ids=lambda f: f.name)
def case(request: pytest.FixtureRequest) -> tuple[Factory, CandidateGenerator]:
    factory: Factory = request.param
    return factory, factory.build().fit(community_data())


def test_follows_the_protocol(case: tuple[Factory, CandidateGenerator]) -> None:
    factory, model = case
    assert isinstance(model, CandidateGenerator)
    assert isinstance(factory.build().fit(community_data()), type(model)), "fit must return self"


def test_output_contract(case: tuple[Factory, CandidateGenerator]) -> None:
    _, model = case
    histories = probe_histories()
    for n in (1, 5, N_ITEMS + 3):  # n beyond the catalogue pads with -1
        ids, scores = model.recommend(histories, n)
        check_output(ids, scores, histories, n)
    ids, _ = model.recommend(histories, N_ITEMS + 3)
    assert (ids[:, N_ITEMS:] == -1).all()


def test_exclude_seen_false_gives_the_history_back(case: tuple[Factory, CandidateGenerator]) -> None:
    """``exclude_seen=False`` ("buy again", replenishment) only skips the masking: a history's own
    items come back where they score high, and the other items keep their scores."""
    factory, model = case
    histories, n = seen_histories(model, personalised=factory.personalised), COMMUNITY_ITEMS
    ids, scores = model.recommend(histories, n, exclude_seen=False)
    check_output(ids, scores, histories, n, exclude_seen=False)
    unseen_ids, unseen_scores = model.recommend(histories, n, exclude_seen=True)
    check_output(unseen_ids, unseen_scores, histories, n)
    for row in range(len(histories)):
        seen = np.isin(ids[row], histories.sequence(row))
        assert seen.any(), f"row {row} {histories.sequence(row).tolist()} got none of its items: {ids[row]}"
        # what is left once the history is taken out is the head of the masked list
        kept = scores[row][~seen]
        np.testing.assert_allclose(kept, unseen_scores[row][: len(kept)], rtol=1e-5, atol=1e-6)
    probes = probe_histories()  # repeats, empty and cold histories: the output contract still holds
    check_output(*model.recommend(probes, 7, exclude_seen=False), probes, 7, exclude_seen=False)
    default, masked = model.recommend(probes, 7), model.recommend(probes, 7, exclude_seen=True)
    np.testing.assert_array_equal(default[0], masked[0])  # the default excludes the history


def test_a_history_gets_its_own_community(case: tuple[Factory, CandidateGenerator]) -> None:
    factory, model = case
    if not factory.personalised:
        pytest.skip("not personalised: the same ranking for every history")
    rng = np.random.default_rng(3)
    a_rows = [rng.choice(A_ITEMS, size=3, replace=False).tolist() for _ in range(10)]
    b_rows = [rng.choice(B_ITEMS, size=3, replace=False).tolist() for _ in range(10)]
    ids, _ = model.recommend(Histories.from_lists(a_rows + b_rows), 5)
    a_top, b_top = ids[:10], ids[10:]
    assert np.isin(a_top[a_top >= 0], A_ITEMS).all(), f"A histories got {a_top.tolist()}"
    assert np.isin(b_top[b_top >= 0], B_ITEMS).all(), f"B histories got {b_top.tolist()}"
    assert (a_top[:, :3] >= 0).all() and (b_top[:, :3] >= 0).all(), "too few recommendations"


def test_similar_items_stay_in_the_community(case: tuple[Factory, CandidateGenerator]) -> None:
    factory, model = case
    queries = np.array([0, 4, COMMUNITY_ITEMS, COMMUNITY_ITEMS + 5])
    ids, scores = model.similar_items(queries, 3)
    assert ids.shape == scores.shape == (4, 3)
    assert not (ids == queries[:, None]).any(), "an item is not its own neighbour"
    assert np.all(np.isneginf(scores[ids == -1]))
    if factory.personalised:
        valid = ids >= 0
        assert valid[:, 0].all()
        assert np.isin(ids[:2][valid[:2]], A_ITEMS).all() and np.isin(ids[2:][valid[2:]], B_ITEMS).all()


def test_a_batch_equals_row_by_row(case: tuple[Factory, CandidateGenerator]) -> None:
    _, model = case
    histories = probe_histories()
    ids, scores = model.recommend(histories, 6)
    for row in range(len(histories)):
        one_ids, one_scores = model.recommend(Histories.from_lists([histories.sequence(row)]), 6)
        np.testing.assert_array_equal(one_ids[0], ids[row], err_msg=f"row {row}")
        np.testing.assert_allclose(one_scores[0], scores[row], rtol=1e-5, atol=1e-6)


def test_blocks_do_not_change_answers(case: tuple[Factory, CandidateGenerator]) -> None:
    _, model = case
    base = probe_histories()
    reps = BLOCK_ROWS // len(base) + 2  # more rows than one scoring block
    many = Histories.from_lists([base.sequence(r) for r in range(len(base))] * reps)
    ids, scores = model.recommend(many, 4)
    one_ids, one_scores = model.recommend(base, 4)
    np.testing.assert_array_equal(ids, np.tile(one_ids, (reps, 1)))
    np.testing.assert_allclose(scores, np.tile(one_scores, (reps, 1)), rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(case: tuple[Factory, CandidateGenerator], tmp_path: Path) -> None:
    factory, model = case
    model.save(tmp_path / "model")
    loaded = factory.load(tmp_path / "model")
    histories = probe_histories()
    for a, b in zip(model.recommend(histories, 7), loaded.recommend(histories, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    queries = np.arange(N_ITEMS)
    for a, b in zip(model.similar_items(queries, 4), loaded.similar_items(queries, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("**/*.pkl")) and not list(tmp_path.glob("**/*.pickle"))


def test_the_pipeline_loads_what_answers_alike(
    case: tuple[Factory, CandidateGenerator], tmp_path: Path
) -> None:
    """What a loaded pipeline (and the service) answers with: the registry's loader, the sequential
    model's NumPy twin, equal to the fitted generator within float32 noise, history excluded or not."""
    factory, model = case
    model.save(tmp_path / "model")
    loaded = SOURCES[factory.source].load(tmp_path / "model")
    histories, queries = probe_histories(), np.arange(N_ITEMS)
    for (a_ids, a_scores), (b_ids, b_scores) in [
        (model.recommend(histories, 7), loaded.recommend(histories, 7)),
        (
            model.recommend(histories, 7, exclude_seen=False),
            loaded.recommend(histories, 7, exclude_seen=False),
        ),
        (model.similar_items(queries, 4), loaded.similar_items(queries, 4)),
    ]:
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5, atol=1e-5)


def test_deterministic(case: tuple[Factory, CandidateGenerator]) -> None:
    factory, model = case
    again = factory.build().fit(community_data())
    histories = probe_histories()
    for a, b in zip(model.recommend(histories, 8), again.recommend(histories, 8), strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_and_cold_histories(case: tuple[Factory, CandidateGenerator]) -> None:
    _, model = case
    histories = Histories.from_lists([[], [COLD_ITEM], []])
    ids, scores = model.recommend(histories, 5)
    check_output(ids, scores, histories, 5)
    empty = Histories.from_lists([])
    ids, scores = model.recommend(empty, 5)
    assert ids.shape == scores.shape == (0, 5)


def test_bad_requests_name_the_problem(case: tuple[Factory, CandidateGenerator]) -> None:
    factory, model = case
    with pytest.raises(ValueError, match="outside the catalogue"):
        model.recommend(Histories.from_lists([[0, N_ITEMS]]), 3)
    with pytest.raises(ValueError, match="outside the catalogue"):
        model.similar_items(np.array([-1]), 3)
    for bad_n in (0, -2):
        with pytest.raises(ValueError, match="n must be"):
            model.recommend(probe_histories(), bad_n)
    with pytest.raises(NotFittedError):
        factory.build().recommend(probe_histories(), 3)
    with pytest.raises(NotFittedError):
        factory.build().save(Path("/nonexistent/never-written"))


def test_load_refuses_another_format(case: tuple[Factory, CandidateGenerator], tmp_path: Path) -> None:
    factory, model = case
    model.save(tmp_path / "model")
    config = tmp_path / "model" / "config.json"
    config.write_text(config.read_text().replace('"recsys.', '"other.'))
    with pytest.raises(ValueError, match="format"):
        factory.load(tmp_path / "model")
