"""Validated tables encoded to dense integer ids, and the array views that models fit on.

``Dataset`` keeps the contract tables (Polars) with integer codes added. ``Interactions`` is the
NumPy view every model and split works with: events sorted by (user, time). ``Histories`` is a
batch of item sequences, the single input of every candidate generator at recommend time, so the
same code answers offline evaluation, known users and anonymous sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data import schema as S


@dataclass(frozen=True, eq=False)
class Histories:
    """A batch of item sequences in CSR layout, oldest item first.

    >>> h = Histories.from_lists([[3, 1], [], [2]])
    >>> h.indptr.tolist(), h.items.tolist(), len(h)
    ([0, 2, 2, 3], [3, 1, 2], 3)
    >>> h.last(2).tolist()
    [[3, 1], [-1, -1], [-1, 2]]
    """

    indptr: np.ndarray  # (batch + 1,) int64
    items: np.ndarray  # (total,) int32 item indices
    timestamps: np.ndarray | None = None  # (total,) int64, aligned with items

    @classmethod
    def from_lists(cls, sequences: list[list[int]] | list[np.ndarray]) -> Histories:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        indptr = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = (
            np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences])
            if len(sequences) and indptr[-1]
            else np.zeros(0, dtype=np.int32)
        )
        return cls(indptr=indptr, items=items)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def sequence(self, row: int) -> np.ndarray:
        return self.items[self.indptr[row] : self.indptr[row + 1]]

    def rows(self, start: int, stop: int) -> Histories:
        """Histories ``start:stop`` as their own batch (views, no copy of the items).

        >>> Histories.from_lists([[3, 1], [], [2]]).rows(1, 3).items.tolist()
        [2]
        """
        lo, hi = self.indptr[start], self.indptr[stop]
        return Histories(
            indptr=self.indptr[start : stop + 1] - lo,
            items=self.items[lo:hi],
            timestamps=None if self.timestamps is None else self.timestamps[lo:hi],
        )

    def to_csr(self, n_items: int) -> sp.csr_matrix:
        """Binary (batch, n_items) matrix of the items in each history."""
        data = np.ones(len(self.items), dtype=np.float32)
        # copy: sum_duplicates sorts indices in place and would otherwise rewrite self.items
        m = sp.csr_matrix((data, self.items, self.indptr), shape=(len(self), n_items), copy=True)
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def last(self, n: int) -> np.ndarray:
        """(batch, n) most recent items, right-aligned, padded on the left with -1."""
        out = np.full((len(self), n), -1, dtype=np.int32)
        lengths = self.lengths()
        take = np.minimum(lengths, n)
        # position j of row r holds items[indptr[r+1] - n + j] when that lies inside the row
        cols = np.arange(n)
        src = self.indptr[1:, None] - n + cols[None, :]
        valid = cols[None, :] >= (n - take)[:, None]
        out[valid] = self.items[src[valid]]
        return out


@dataclass(frozen=True, eq=False)
class Interactions:
    """Encoded events sorted by (user, timestamp); what every model and split works with."""

    n_users: int
    n_items: int
    users: np.ndarray  # (n,) int32
    items: np.ndarray  # (n,) int32
    timestamps: np.ndarray  # (n,) int64
    weights: np.ndarray  # (n,) float32

    def __post_init__(self) -> None:
        n = len(self.users)
        if not (len(self.items) == len(self.timestamps) == len(self.weights) == n):
            raise ValueError("users, items, timestamps and weights must have the same length")
        if n and np.any(np.diff(self.users) < 0):
            raise ValueError("interactions must be sorted by user")

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_arrays(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        *,
        n_users: int,
        n_items: int,
        timestamps: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> Interactions:
        """Sort arbitrary arrays by (user, timestamp), stable, and wrap them."""
        users = np.asarray(users, dtype=np.int32)
        ts = np.arange(len(users), dtype=np.int64) if timestamps is None else np.asarray(timestamps, np.int64)
        w = np.ones(len(users), np.float32) if weights is None else np.asarray(weights, np.float32)
        order = np.lexsort((ts, users))
        return cls(n_users, n_items, users[order], np.asarray(items, np.int32)[order], ts[order], w[order])

    def select(self, mask: np.ndarray) -> Interactions:
        """The events where ``mask`` is true (order is preserved, so still sorted)."""
        return Interactions(
            self.n_users,
            self.n_items,
            self.users[mask],
            self.items[mask],
            self.timestamps[mask],
            self.weights[mask],
        )

    @cached_property
    def indptr(self) -> np.ndarray:
        """(n_users + 1,) offsets of each user's events."""
        counts = np.bincount(self.users, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """(n_users, n_items) float32 matrix of summed weights."""
        return self._cells(self.weights)

    def event_matrix(self, *, use_weights: bool) -> sp.csr_matrix:
        """(n_users, n_items) float32 matrix that ALS and item-kNN are fitted on, built anew.

        Each cell counts the user's events on the item or, with ``use_weights``, sums their weights
        (as ``matrix``). A cell whose weights sum to 0 is left out, as if never seen: a zero weight
        says the events carry no preference, and a stored 0 would turn into no confidence at all in
        ALS and into 0 / 0 in a cosine. With every weight 1 both matrices are the same, bit for bit.

        >>> data = Interactions.from_arrays(
        ...     [0, 0, 1], [1, 1, 0], n_users=2, n_items=2, weights=np.array([2.0, 0.5, 0.0])
        ... )
        >>> data.event_matrix(use_weights=False).toarray().tolist()
        [[0.0, 2.0], [1.0, 0.0]]
        >>> data.event_matrix(use_weights=True).toarray().tolist()
        [[0.0, 2.5], [0.0, 0.0]]
        """
        if not use_weights:
            return self._cells(np.ones(len(self), np.float32))
        m = self._cells(self.weights)
        m.eliminate_zeros()
        return m

    def _cells(self, values: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix(
            (values, (self.users, self.items)), shape=(self.n_users, self.n_items), dtype=np.float32
        )
        m.sum_duplicates()
        return m

    def histories(self, users: np.ndarray) -> Histories:
        """The time-ordered item sequences of ``users``."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        indptr = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # gather all ranges at once: position p of the output reads starts[row] + (p - indptr[row])
        row = np.repeat(np.arange(len(users)), lengths)
        src = starts[row] + (np.arange(indptr[-1]) - indptr[row])
        return Histories(indptr=indptr, items=self.items[src], timestamps=self.timestamps[src])

    def item_counts(self) -> np.ndarray:
        """(n_items,) number of events per item."""
        return np.bincount(self.items, minlength=self.n_items)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Validated contract tables with dense codes: item ``i`` is row ``i`` of ``items``."""

    items: pl.DataFrame
    interactions: pl.DataFrame  # contract columns + USER_IDX, ITEM_IDX, sorted by (user, timestamp)
    user_ids: pl.Series  # user index -> external id

    @classmethod
    def from_tables(cls, items: pl.DataFrame, interactions: pl.DataFrame) -> Dataset:
        """Encode validated tables. Users are numbered in order of first appearance."""
        item_codes = items.select(pl.col(S.ITEM_ID), pl.int_range(pl.len(), dtype=pl.Int32).alias(S.ITEM_IDX))
        user_ids = interactions.get_column(S.USER_ID).unique(maintain_order=True)
        user_codes = pl.DataFrame({S.USER_ID: user_ids, S.USER_IDX: np.arange(len(user_ids), dtype=np.int32)})
        encoded = (
            interactions.with_row_index("_row")
            .join(item_codes, on=S.ITEM_ID, how="inner")
            .join(user_codes, on=S.USER_ID, how="inner")
            .sort([S.USER_IDX, S.TIMESTAMP, "_row"])
            .drop("_row")
        )
        return cls(items=items, interactions=encoded, user_ids=user_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return self.items.height

    @cached_property
    def item_ids(self) -> np.ndarray:
        return self.items.get_column(S.ITEM_ID).to_numpy()

    def to_interactions(self) -> Interactions:
        frame = self.interactions
        weights = frame.get_column(S.WEIGHT).fill_null(1.0).to_numpy() if S.WEIGHT in frame.columns else None
        return Interactions.from_arrays(
            frame.get_column(S.USER_IDX).to_numpy(),
            frame.get_column(S.ITEM_IDX).to_numpy(),
            n_users=self.n_users,
            n_items=self.n_items,
            timestamps=frame.get_column(S.TIMESTAMP).to_numpy(),
            weights=weights,
        )

    def summary(self) -> dict[str, int]:
        return {"users": self.n_users, "items": self.n_items, "interactions": self.interactions.height}
