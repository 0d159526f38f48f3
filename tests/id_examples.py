"""Ids for the one-rule tests (test_id_rule.py in-process, test_serving.py over HTTP): a hypothesis
strategy that hits the edges of the rule, and what ``validate_tables`` says of one id."""

from __future__ import annotations

import polars as pl
from hypothesis import strategies as st

from recsys.data import schema as S
from recsys.data.validation import DataValidationError, validate_tables

# Characters where engines differ or ids go wrong: controls (the stores' separator among them),
# every kind of Unicode whitespace, look-alikes that are not whitespace (U+180E, U+200B, U+FEFF),
# and plain letters.
EDGES = (
    " \t\n\r\x0b\x0c\x1c\x1f\x00\x7f\x85\x9f\xa0\u1680\u180e\u2000\u200a\u200b"
    "\u2028\u2029\u202f\u205f\u3000\ufeffaZ9é"
)
id_values = st.one_of(
    st.text(alphabet=st.sampled_from(EDGES), max_size=4),
    st.text(max_size=8),
    st.builds(lambda c, n: c * n, st.sampled_from("xé"), st.integers(250, 260)),
    st.builds(
        lambda a, b, c: a + b + c, st.text(EDGES, max_size=2), st.text(max_size=6), st.text(EDGES, max_size=2)
    ),
)


def validate_accepts(value: str) -> bool:
    """Whether ``recsys validate`` takes ``value`` as an item id and as a user id."""
    items = pl.LazyFrame({S.ITEM_ID: [value], S.TITLE: ["t"]})
    events = pl.LazyFrame({S.USER_ID: [value], S.ITEM_ID: [value], S.TIMESTAMP: [1]})
    try:
        validate_tables(items, events, items_source="items", interactions_source="events")
    except DataValidationError as err:
        assert {p.column for p in err.problems} == {S.USER_ID, S.ITEM_ID}, err
        return False
    return True
