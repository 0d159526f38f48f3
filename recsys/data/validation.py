"""Validate customer tables against the data contract and normalise them to contract dtypes.

Validation reports **every** problem at once: each :class:`Problem` names the file, the column, what
is wrong, how many rows are affected and up to five example row numbers. Row numbers are 1-based
data rows, not counting a CSV header: row 1 is the first record of the file.

All checks are Polars expressions evaluated in one pass per table, so validating a few million rows
takes seconds.

Long by design: the whole contract is checked here, so one module says what valid data is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from recsys.data import schema as S

MAX_EXAMPLES = 5
_ROW = "__recsys_row"  # 1-based row number carried through validation, dropped before returning
_RAW = "__recsys_raw_"  # prefix of the as-read copy of a coerced column, for error examples
_TS_IS_DATETIME = "__recsys_ts_is_datetime"
_ID_PROBLEM = "__recsys_id_problem_"  # + id column: which part of the id rule a row breaks (0: none)
_ID_MESSAGES = ("null or empty value", *(f"id {message}" for _, message in S.ID_RULES), f"id {S.ID_TOO_LONG}")
RESERVED = (S.USER_IDX, S.ITEM_IDX)  # added by ``Dataset.from_tables``; a customer column would clash

# Naive timestamps are read as UTC. Offsets are applied: "...+01:00" and "...Z" both become UTC.
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M%z")
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one column of one file.

    >>> str(Problem("items.csv", "item_id", "duplicate id", rows=(3, 9), count=2))
    "items.csv: column 'item_id': duplicate id (2 rows; rows 3, 9)"
    """

    source: str
    column: str | None  # None for table-wide problems (no rows, unreadable)
    message: str
    rows: tuple[int, ...] = ()  # up to MAX_EXAMPLES 1-based data row numbers
    count: int = 0  # rows affected; 0 for schema problems

    def __str__(self) -> str:
        where = f"{self.source}: column {self.column!r}" if self.column else self.source
        text = f"{where}: {self.message}"
        if self.count:
            noun = "row" if self.count == 1 else "rows"
            text += f" ({self.count} {noun}; {self.rows_text()})"
        return text

    def rows_text(self) -> str:
        """``"rows 3, 9"`` or ``"rows 1, 2, 3, 4, 5, ..."`` when there are more than shown."""
        if not self.rows:
            return ""
        more = ", ..." if self.count > len(self.rows) else ""
        noun = "row" if len(self.rows) == 1 and not more else "rows"
        return f"{noun} {', '.join(map(str, self.rows))}{more}"


class DataValidationError(ValueError):
    """The tables break the data contract. ``problems`` lists everything found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} data problem(s) (row numbers are 1-based data rows):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class _Check:
    """Rows where ``mask`` is true are bad; ``values`` (optional) gives examples for the message."""

    column: str
    message: str
    mask: pl.Expr
    values: pl.Expr | None = None


# --- column coercion -------------------------------------------------------------------------------


def _strip_to_null(expr: pl.Expr) -> pl.Expr:
    """Strip whitespace; blank strings become null (a blank id is a missing id)."""
    stripped = expr.str.strip_chars()
    return pl.when(stripped.str.len_chars() > 0).then(stripped)


def _as_string(name: str, dtype: pl.DataType, *, strip: bool) -> pl.Expr | None:
    """Strings pass; integers (JSONL/Parquet numeric ids) become their decimal text."""
    col = pl.col(name)
    textual = dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)
    if not (textual or dtype.is_integer() or dtype == pl.Null):
        return None
    out = col.cast(pl.String)
    return _strip_to_null(out) if strip else out


def _as_float(name: str, dtype: pl.DataType) -> pl.Expr | None:
    col = pl.col(name)
    if dtype.is_numeric() or dtype == pl.Null:
        return col.cast(pl.Float64)
    if dtype == pl.String:
        return _strip_to_null(col).cast(pl.Float64, strict=False)
    return None


def _parse_datetime_string(expr: pl.Expr) -> pl.Expr:
    """ISO-8601-like text to naive UTC datetimes (null where no format matches)."""
    text = expr.str.replace(r"[Zz]$", "+00:00").str.replace("T", " ", literal=True)
    aware = [
        text.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC").dt.replace_time_zone(None)
        for f in _AWARE_FORMATS
    ]
    naive = [text.str.to_datetime(f, strict=False, time_unit="us") for f in _NAIVE_FORMATS]
    return pl.coalesce([*aware, *naive])


def _timestamp(name: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr] | None:
    """(Int64 timestamp, is-date-time flag) or None for a type that cannot be a timestamp.

    Text is handled by :func:`_parse_text_timestamps` after collecting.

    Date-times become Unix seconds; integers are kept as given (Unix seconds or an order index);
    floats are floored to whole seconds.
    """
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        utc = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None) if dtype.time_zone else col
        return utc.dt.epoch("s"), pl.lit(value=True)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.epoch("s"), pl.lit(value=True)
    if dtype.is_integer():
        return col.cast(pl.Int64, strict=False), pl.lit(value=False)
    if dtype.is_float():
        finite = pl.when(col.is_finite()).then(col)
        return finite.floor().cast(pl.Int64, strict=False), pl.lit(value=False)
    if dtype == pl.Null:
        return col.cast(pl.Int64), pl.lit(value=False)
    return None


def _parse_text_timestamps(data: pl.DataFrame, name: str) -> pl.DataFrame:
    """Parse a text timestamp column of a collected frame in place, adding the is-date-time flag.

    Integers are tried on every row (cheap); decimals and the date-time formats only on the rows
    that are not integers, because date-time parsing costs ~50x more and CSV timestamps are
    usually all Unix seconds.
    """
    text = data.select(_strip_to_null(pl.col(name))).to_series()
    value = text.str.to_integer(strict=False)
    is_datetime = pl.repeat(value=False, n=data.height, eager=True)
    todo = (text.is_not_null() & value.is_null()).arg_true()
    if len(todo):
        rest = pl.DataFrame({"t": text.gather(todo)})
        number = pl.col("t").cast(pl.Float64, strict=False)
        number = pl.when(number.is_finite()).then(number).floor().cast(pl.Int64, strict=False)
        parsed = _parse_datetime_string(pl.col("t")).dt.epoch("s")
        rest = rest.select(number.alias("number"), parsed.alias("parsed"))
        numbers, dates = rest.get_column("number"), rest.get_column("parsed")
        value = value.scatter(todo, numbers.fill_null(dates))
        is_datetime = is_datetime.scatter(todo, numbers.is_null() & dates.is_not_null())
    return data.with_columns(value.alias(name), is_datetime.alias(_TS_IS_DATETIME))


# --- the table checks ------------------------------------------------------------------------------


def _present(raw: str, dtype: pl.DataType) -> pl.Expr:
    """The cell holds something: not null and, for text, not blank."""
    if dtype == pl.String:
        return _strip_to_null(pl.col(raw)).is_not_null()
    return pl.col(raw).is_not_null()


def _id_checks(name: str) -> list[_Check]:
    """The id rule of ``schema`` on the id column ``name``, one check per way to break it.

    Ids are kept as written: a padded id is refused, never stripped, so ``"A1 "`` and ``"A1"`` cannot
    silently become one. Whitespace alone is a missing id. Each row is counted once, under the first
    part of the rule it breaks (``_classify_ids`` says which).
    """
    code, col = pl.col(_ID_PROBLEM + name), pl.col(name)
    examples = [None, *[col] * len(S.ID_RULES), col.str.slice(0, 40) + "..."]  # a long id is cut
    pairs = zip(_ID_MESSAGES, examples, strict=True)
    return [_Check(name, message, code == k, example) for k, (message, example) in enumerate(pairs, 1)]


def _classify_ids(data: pl.DataFrame, name: str) -> pl.DataFrame:
    """Add ``_ID_PROBLEM + name``: 0 where ``name`` is a valid id, else ``k`` for ``_ID_MESSAGES[k - 1]``.

    One anchored regex (``schema.ID_PATTERN``) and a length test pass the valid ids; only the rows
    that fail are matched against each part of the rule, so clean data costs one pass.
    """
    ids = data.get_column(name)
    valid = (ids.str.contains(S.ID_PATTERN) & (ids.str.len_chars() <= S.ID_MAX_LENGTH)).fill_null(value=False)
    code = pl.zeros(data.height, dtype=pl.UInt8, eager=True)
    failed = (~valid).arg_true()
    if len(failed):
        col = pl.col(name)
        parts = [_strip_to_null(col).is_null(), *(col.str.contains(p) for p, _ in S.ID_RULES)]
        parts.append(col.str.len_chars() > S.ID_MAX_LENGTH)
        first = pl.coalesce([pl.when(part).then(pl.lit(k, pl.UInt8)) for k, part in enumerate(parts, 1)])
        failing = pl.DataFrame({name: ids.gather(failed)})
        code = code.scatter(failed, failing.select(first.fill_null(0)).to_series())
    return data.with_columns(code.alias(_ID_PROBLEM + name))


def _valid_id(name: str) -> pl.Expr:
    """Rows whose ``name`` passes the id rule: only those are compared with other ids, so a bad id
    is reported once, as bad, and not again as unknown or duplicate."""
    return pl.col(_ID_PROBLEM + name) == 0


def _check_table(
    frame: pl.LazyFrame,
    *,
    source: str,
    required: dict[str, pl.DataType],
    optional: dict[str, pl.DataType],
    non_empty: Iterable[str],
    problems: list[Problem],
) -> tuple[pl.DataFrame, list[_Check], set[str]]:
    """Coerce contract columns; return the collected frame, its row checks and the usable columns.

    Schema problems (missing column, wrong type, reserved name, no rows) are appended to
    ``problems`` directly; row checks still run on the columns that are usable, so one run reports
    everything.
    """
    schema = frame.collect_schema()
    for name in RESERVED:
        if name in schema:
            problems.append(Problem(source, name, "is a reserved column name; rename or drop it"))
    for name in required:
        if name not in schema:
            found = ", ".join(schema.names()) or "none"
            problems.append(Problem(source, name, f"required column is missing (columns found: {found})"))

    exprs: list[pl.Expr] = []
    checks: list[_Check] = []
    usable: set[str] = set()
    text_timestamps = False
    id_columns: list[str] = []
    for name, target in {**required, **optional}.items():
        if name not in schema:
            continue
        dtype = schema[name]
        raw = _RAW + name
        present = _present(raw, dtype)
        example = pl.col(raw).cast(pl.String)
        if name == S.TIMESTAMP:
            result = _timestamp(name, dtype)
            if dtype == pl.String:
                exprs.append(pl.col(name).alias(raw))
                text_timestamps = True
            elif result is None:
                problems.append(_wrong_type(source, name, dtype, "a date-time, Unix seconds or an integer"))
                continue
            else:
                value, is_datetime = result
                exprs += [pl.col(name).alias(raw), value.alias(name), is_datetime.alias(_TS_IS_DATETIME)]
            checks.append(_Check(name, "timestamp is missing", ~present))
            message = "unparsable timestamp (use ISO 8601, Unix seconds or an integer order index)"
            checks.append(_Check(name, message, present & pl.col(name).is_null(), example))
        elif target == pl.Float64:
            number = _as_float(name, dtype)
            if number is None:
                problems.append(_wrong_type(source, name, dtype, "a number"))
                continue
            exprs += [pl.col(name).alias(raw), number.alias(name)]
            checks.append(_Check(name, "not a number", present & pl.col(name).is_null(), example))
            checks.append(_Check(name, "not a finite number", ~pl.col(name).is_finite(), example))
            checks.append(_Check(name, "negative value", pl.col(name) < 0, example))
        else:
            is_id = name in S.ID_COLUMNS
            strip = not is_id and (name in non_empty or name in (S.EVENT, S.CATEGORY))
            text = _as_string(name, dtype, strip=strip)
            if text is None:
                problems.append(_wrong_type(source, name, dtype, "a string (or integer id)"))
                continue
            exprs.append(text.alias(name))
            if is_id:
                checks += _id_checks(name)
                id_columns.append(name)
            elif name in non_empty:
                checks.append(_Check(name, "null or empty value", pl.col(name).is_null()))
        usable.add(name)

    data = frame.with_row_index(_ROW, offset=1).with_columns(exprs).collect()
    if text_timestamps:
        data = _parse_text_timestamps(data, S.TIMESTAMP)
    for name in id_columns:
        data = _classify_ids(data, name)
    if data.height == 0:
        problems.append(Problem(source, None, "table has no rows"))
    return data, checks, usable


def _wrong_type(source: str, name: str, dtype: pl.DataType, expected: str) -> Problem:
    return Problem(source, name, f"wrong type {dtype}, expected {expected}")


def _run_checks(
    data: pl.DataFrame, checks: Sequence[_Check], *, source: str, order: Sequence[str]
) -> list[Problem]:
    """Evaluate every check in a single pass over ``data``; problems come in column ``order``."""
    if not checks:
        return []
    aggs: list[pl.Expr] = []
    for i, check in enumerate(checks):
        mask = check.mask.fill_null(value=False)
        aggs.append(mask.sum().alias(f"n{i}"))
        aggs.append(pl.col(_ROW).filter(mask).head(MAX_EXAMPLES).implode().alias(f"r{i}"))
        if check.values is not None:
            examples = check.values.filter(mask).unique(maintain_order=True).head(3).implode()
            aggs.append(examples.alias(f"v{i}"))
    result = data.select(aggs).row(0, named=True)
    problems = []
    for i, check in enumerate(checks):
        count = int(result[f"n{i}"])
        if not count:
            continue
        message = check.message
        values = result.get(f"v{i}")
        if values:
            message += " (e.g. " + ", ".join(repr(v) for v in values) + ")"
        problems.append(Problem(source, check.column, message, tuple(result[f"r{i}"]), count))
    position = {name: i for i, name in enumerate(order)}
    return sorted(problems, key=lambda p: position.get(p.column or "", -1))


def _finish(data: pl.DataFrame, contract: Iterable[str]) -> pl.DataFrame:
    """Contract columns first, in schema order, then the customer's extra columns as given."""
    contract = [c for c in contract if c in data.columns]
    internal = [c for c in data.columns if c.startswith((_RAW, _ID_PROBLEM)) or c in (_ROW, _TS_IS_DATETIME)]
    extra = [c for c in data.columns if c not in contract and c not in internal]
    return data.select(*contract, *extra)


def _check_items(items: pl.LazyFrame, source: str, problems: list[Problem]) -> tuple[pl.DataFrame, set[str]]:
    """The items table coerced, its problems appended to ``problems``; and its usable columns."""
    data, checks, usable = _check_table(
        items,
        source=source,
        required=S.ITEM_REQUIRED,
        optional=S.ITEM_OPTIONAL,
        non_empty=(S.ITEM_ID, S.TITLE),
        problems=problems,
    )
    if S.ITEM_ID in usable:
        # every repeat after the first occurrence is a problem row
        repeat = _valid_id(S.ITEM_ID) & ~pl.col(S.ITEM_ID).is_first_distinct()
        checks.append(_Check(S.ITEM_ID, "duplicate id", repeat, pl.col(S.ITEM_ID)))
    problems += _run_checks(data, checks, source=source, order=data.columns)
    return data, usable


def validate_items(items: pl.LazyFrame, *, source: str) -> pl.DataFrame:
    """``validate_tables`` for an items table alone (a catalogue update): normalised, or raise.

    >>> validate_items(pl.LazyFrame({"item_id": [7], "title": ["Pen"]}), source="new.csv").row(0)
    ('7', 'Pen')
    """
    problems: list[Problem] = []
    data, _ = _check_items(items, source, problems)
    if problems:
        raise DataValidationError(problems)
    return _finish(data, [*S.ITEM_REQUIRED, *S.ITEM_OPTIONAL])


def validate_tables(
    items: pl.LazyFrame,
    interactions: pl.LazyFrame,
    *,
    items_source: str,
    interactions_source: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Check both tables against the data contract; return them normalised, or raise with every problem.

    Normalised means: ids and text as ``String`` (integer ids become their decimal text; ids are kept
    exactly as written, and one that breaks the id rule of ``schema.id_problem`` is a problem),
    ``price`` and ``weight`` as ``Float64`` (CSV text is parsed),
    ``timestamp`` as ``Int64`` (date-times and ISO-8601 strings become Unix seconds, naive ones read as
    UTC; integers are kept as given, so an order index stays an order index; fractional seconds are
    floored). Extra columns follow the contract columns unchanged. Duplicate (user, item, timestamp)
    events are allowed. Row numbers in problems are 1-based data rows (row 1 is the first record).

    Raises
    ------
    DataValidationError
        With one :class:`Problem` per (file, column, kind of problem), listing them all.

    Examples
    --------
    >>> items = pl.LazyFrame({"item_id": [1, 2], "title": ["Pen", "Ink"], "colour": ["red", "blue"]})
    >>> events = pl.LazyFrame(
    ...     {
    ...         "user_id": ["u1", "u1"],
    ...         "item_id": ["1", "2"],
    ...         "timestamp": ["2024-01-01", "2024-01-01T00:00:10Z"],
    ...     }
    ... )
    >>> it, ev = validate_tables(items, events, items_source="items.csv", interactions_source="events.csv")
    >>> it.columns, it.get_column("item_id").to_list()
    (['item_id', 'title', 'colour'], ['1', '2'])
    >>> ev.get_column("timestamp").to_list()
    [1704067200, 1704067210]
    >>> bad = pl.LazyFrame({"user_id": [" u1", " "], "item_id": ["1", "9"], "timestamp": ["1", "soon"]})
    >>> try:
    ...     validate_tables(items, bad, items_source="items.csv", interactions_source="events.csv")
    ... except DataValidationError as err:
    ...     for problem in err.problems:
    ...         print(problem)  # doctest: +ELLIPSIS
    events.csv: column 'user_id': null or empty value (1 row; row 2)
    events.csv: column 'user_id': id has leading or trailing whitespace ... (e.g. ' u1') (1 row; row 1)
    events.csv: column 'item_id': unknown item, not in items.csv (e.g. '9') (1 row; row 2)
    events.csv: column 'timestamp': unparsable timestamp ... (e.g. 'soon') (1 row; row 2)
    """
    problems: list[Problem] = []
    item_data, item_usable = _check_items(items, items_source, problems)
    event_data, event_checks, event_usable = _check_table(
        interactions,
        source=interactions_source,
        required=S.INTERACTION_REQUIRED,
        optional=S.INTERACTION_OPTIONAL,
        non_empty=(S.USER_ID, S.ITEM_ID),
        problems=problems,
    )
    if S.TIMESTAMP in event_usable:
        # An order index mixed with date-times sorts meaninglessly; flag the rarer kind.
        parsed = pl.col(S.TIMESTAMP).is_not_null()
        dates, numbers = parsed & pl.col(_TS_IS_DATETIME), parsed & ~pl.col(_TS_IS_DATETIME)
        rarer = pl.when(dates.sum() <= numbers.sum()).then(dates).otherwise(numbers)
        event_checks.append(
            _Check(
                S.TIMESTAMP,
                "mixes date-times with plain numbers; use one kind per column (rows of the rarer kind)",
                rarer & dates.any() & numbers.any(),
                pl.col(_RAW + S.TIMESTAMP).cast(pl.String),
            )
        )
    if S.ITEM_ID in event_usable and S.ITEM_ID in item_usable and item_data.height:
        known = item_data.get_column(S.ITEM_ID).drop_nulls().unique()
        unknown = _valid_id(S.ITEM_ID) & ~pl.col(S.ITEM_ID).is_in(known.implode())
        event_checks.append(
            _Check(S.ITEM_ID, f"unknown item, not in {items_source}", unknown, pl.col(S.ITEM_ID))
        )
    problems += _run_checks(event_data, event_checks, source=interactions_source, order=event_data.columns)

    if problems:
        raise DataValidationError(problems)
    return (
        _finish(item_data, [*S.ITEM_REQUIRED, *S.ITEM_OPTIONAL]),
        _finish(event_data, [*S.INTERACTION_REQUIRED, *S.INTERACTION_OPTIONAL]),
    )
