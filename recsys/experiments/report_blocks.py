"""The report's building blocks and their two renderings: one self-contained HTML page and Markdown.

A report is a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`Table`, :class:`Chart`).
Every number it shows is a :class:`Number`: its value, the text shown, and tags naming it (section,
model, metric, statistic, ...). :func:`number_all` gives each one an id, in page order; the HTML puts
the id, the value and the tags on the number's element as ``data-*`` attributes, and ``report.json``
lists the same numbers (:func:`numbers_of`), so a test can check that the page shows what the JSON
holds. Charts are PNG bytes, embedded in the page as ``data:`` URLs (no file beside it, no network)
and linked from the Markdown as files under ``plots/``.

Every string that comes from data is escaped (:func:`html.escape` for the page, pipes for Markdown).

>>> row = (text("als"), one(0.12345, ".4f", model="als", metric="ndcg@10"))
>>> blocks = number_all([Table(columns=("model", "ndcg@10"), rows=(row,))])
>>> numbers_of(blocks)
[{'id': 'n1', 'value': 0.12345, 'text': '0.1235', 'model': 'als', 'metric': 'ndcg@10'}]
>>> print(markdown(blocks))
| model | ndcg@10 |
|---|---:|
| als | 0.1235 |
<BLANKLINE>
>>> shown = page(blocks, title="t").split("<tbody>")[1].split("</tbody>")[0]
>>> print(shown.replace("><", ">\\n<"))
<tr>
<td class="label" title="als">als</td>
<td class="num">
<span class="n" data-number="n1" data-value="0.12345" data-model="als" data-metric="ndcg@10">0.1235</span>
</td>
</tr>
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

CHART_FOLDER = "plots"


@dataclass(frozen=True)
class Number:
    """One figure shown: ``text`` is ``value`` formatted; ``tags`` say what it is (data attributes)."""

    value: float | None
    text: str
    tags: tuple[tuple[str, str], ...] = ()
    id: str = ""


def number(value: float | None, fmt: str, **tags: Any) -> Number:
    """``value`` shown with ``fmt`` (a format spec, e.g. ``".4f"``); ``None`` or NaN shows as ``-``.
    Tags whose value is ``None`` or empty are left out."""
    finite = value is not None and math.isfinite(value)
    shown = format(value, fmt) if finite else "-"
    kept = tuple((key, str(v)) for key, v in tags.items() if v is not None and v != "")
    return Number(value if finite else None, shown, kept)


@dataclass(frozen=True)
class Cell:
    """A table cell: text and numbers in a row; ``hit`` marks a recommended item that was held out;
    the parts from ``aside`` on (an interval) show on a small second line of the page."""

    parts: tuple[Number | str, ...]
    hit: bool = False
    aside: int | None = None


def text(value: object) -> Cell:
    """A cell of text alone."""
    return Cell((str(value),))


def one(value: float | None, fmt: str, **tags: Any) -> Cell:
    """A cell holding one :func:`number`."""
    return Cell((number(value, fmt, **tags),))


@dataclass(frozen=True)
class Table:
    """Rows of cells; the first ``labels`` columns are labels (left-aligned), the others numbers."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str = ""
    labels: int = 1


@dataclass(frozen=True)
class Chart:
    """A PNG chart; ``name`` is its file name under ``plots/`` (without ``.png``) and its id."""

    name: str
    title: str
    png: bytes = field(repr=False)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2
    anchor: str = ""


@dataclass(frozen=True)
class Paragraph:
    text: str
    note: bool = False  # a small grey line (definitions, how a figure was computed)


Block = Heading | Paragraph | Table | Chart


def number_all(blocks: Sequence[Block]) -> list[Block]:
    """The blocks with every :class:`Number` given an id, ``n1``, ``n2``, ... in page order."""
    count = 0

    def numbered(part: Number | str) -> Number | str:
        nonlocal count
        if isinstance(part, str):
            return part
        count += 1
        return replace(part, id=f"n{count}")

    out: list[Block] = []
    for block in blocks:
        if isinstance(block, Table):
            rows = tuple(
                tuple(replace(cell, parts=tuple(numbered(p) for p in cell.parts)) for cell in row)
                for row in block.rows
            )
            block = replace(block, rows=rows)
        out.append(block)
    return out


def numbers_of(blocks: Sequence[Block]) -> list[dict[str, Any]]:
    """Every number shown, in page order: ``{"id", "value", "text", **tags}``."""
    return [{"id": n.id, "value": n.value, "text": n.text, **dict(n.tags)} for n in _numbers(blocks)]


def _numbers(blocks: Sequence[Block]) -> Iterator[Number]:
    for block in blocks:
        if isinstance(block, Table):
            for row in block.rows:
                for cell in row:
                    yield from (part for part in cell.parts if isinstance(part, Number))


def page(blocks: Sequence[Block], *, title: str, nav: Sequence[Heading] = ()) -> str:
    """One self-contained HTML page: inline CSS, charts as ``data:`` URLs, no script, no link out."""
    links = "".join(f'<a href="#{_e(h.anchor)}">{_e(h.text)}</a>' for h in nav)
    body = "\n".join(_html_block(block) for block in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request: a file:// page would log a 404
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1><nav>{links}</nav></header>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n"
    )


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{_e(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{_e(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f'<p class="note">{_e(block.text)}</p>' if block.note else f"<p>{_e(block.text)}</p>"
    if isinstance(block, Chart):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure class="chart"><img data-chart="{_e(block.name)}" alt="{_e(block.title)}" '
            f'src="data:image/png;base64,{data}"></figure>'  # the title is in the image
        )
    head = "".join(
        f'<th class="{"label" if j < block.labels else "num"}">{_e(c)}</th>'
        for j, c in enumerate(block.columns)
    )
    rows = "\n".join(
        "<tr>" + "".join(_html_cell(cell, label=j < block.labels) for j, cell in enumerate(row)) + "</tr>"
        for row in block.rows
    )
    caption = f"<caption>{_e(block.caption)}</caption>" if block.caption else ""
    table = f"<table>{caption}<thead><tr>{head}</tr></thead>\n<tbody>{rows}</tbody></table>"
    return f'<div class="table">{table}</div>'


def _html_cell(cell: Cell, *, label: bool) -> str:
    classes = " ".join(c for c, on in (("label", label), ("num", not label), ("hit", cell.hit)) if on)
    cut = len(cell.parts) if cell.aside is None else cell.aside
    inner = "".join(_html_part(part) for part in cell.parts[:cut])
    if cut < len(cell.parts):
        inner += '<span class="aside">' + "".join(_html_part(part) for part in cell.parts[cut:]) + "</span>"
    # a label may be cut short by the column's width: its whole text shows on hover
    hover = f' title="{_e(_plain(cell))}"' if label else ""
    return f'<td class="{classes}"{hover}>{inner}</td>'


def _html_part(part: Number | str) -> str:
    if isinstance(part, str):
        return _e(part)
    value = "" if part.value is None else repr(float(part.value))
    tags = "".join(f' data-{_e(key)}="{_e(v)}"' for key, v in part.tags)
    return f'<span class="n" data-number="{_e(part.id)}" data-value="{value}"{tags}>{_e(part.text)}</span>'


def markdown(blocks: Sequence[Block]) -> str:
    """The report as Markdown: tables as pipe tables, charts as links to ``plots/NAME.png``."""
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Paragraph):
            out.append(f"*{_md(block.text)}*\n" if block.note else f"{_md(block.text)}\n")
        elif isinstance(block, Chart):
            out.append(f"![{_md(block.title)}]({CHART_FOLDER}/{block.name}.png)\n")
        else:
            lines = [f"**{_md(block.caption)}**\n"] if block.caption else []
            lines.append("| " + " | ".join(_md(c) for c in block.columns) + " |")
            lines.append(
                "|" + "|".join("---" if j < block.labels else "---:" for j in range(len(block.columns))) + "|"
            )
            for row in block.rows:
                lines.append("| " + " | ".join(_md_cell(cell) for cell in row) + " |")
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _md_cell(cell: Cell) -> str:
    return f"**{_md(_plain(cell))}**" if cell.hit else _md(_plain(cell))


def _plain(cell: Cell) -> str:
    return "".join(part if isinstance(part, str) else part.text for part in cell.parts)


def _md(value: str) -> str:
    """Markdown-safe table text: a pipe would end the cell, a newline the row."""
    return value.replace("|", "\\|").replace("\n", " ")


def _e(value: str) -> str:
    return html.escape(value, quote=True)


STYLE = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --band: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { padding: 14px 28px 6px; border-bottom: 1px solid var(--line); position: sticky; top: 0;
         background: #fff; z-index: 1; }
h1 { font-size: 20px; margin: 0 0 6px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; font-size: 13px; }
main { padding: 4px 28px 40px; max-width: 1640px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-top: 6px; border-top: 1px solid var(--line);
     scroll-margin-top: 70px; }  /* a jump from the menu lands below the sticky header */
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0; max-width: 900px; }
p.note { color: var(--muted); font-size: 12.5px; }
.table { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; white-space: nowrap; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px; vertical-align: top; }
th { background: var(--band); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.label { max-width: 340px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
td.hit { background: #dafbe1; font-weight: 600; }
tbody tr:nth-child(even) { background: #fbfcfd; }
figure.chart { display: inline-block; vertical-align: top; margin: 10px 18px 14px 0; }
span.aside { display: block; color: var(--muted); font-size: 11px; }
figure.chart img { max-width: 100%; height: auto; border: 1px solid var(--line); }
"""
