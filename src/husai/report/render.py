"""A tiny document model (sections of paragraphs, tables, figures) and its two renderers.

Sections are built once and rendered twice: to a self-contained HTML page (figures
as base64 PNG ``data:`` URIs, inline CSS, no scripts, no external URL) and to
Markdown (same text and tables; figures written beside it as PNG files and linked
relatively). Keeping one model guarantees that both files say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Para:
    text: str


@dataclass
class Note:
    """A visible caveat: what a section cannot show and why, or a warning about the data."""

    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    name: str  # file stem, unique within the report
    png: bytes
    caption: str


@dataclass
class Code:
    text: str
    title: str = ""


Block = Para | Note | Bullets | Table | Figure | Code


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers as shown everywhere: fixed decimals, 'g' for tiny/huge, 'n/a' for NaN/None."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, numbers.Integral):
        return str(int(x))
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(xf):
        return "n/a"
    if xf != 0 and (abs(xf) < 0.01 or abs(xf) >= 1e5):
        return f"{xf:.{digits}g}"
    return f"{xf:.{digits}f}"


def fmt_param(x: Any) -> str:
    """A config value (k, coefficient, width): shortest exact form, e.g. 8, 0.0003."""
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if math.isnan(xf) else f"{xf:g}"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45;background:#fff}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:2px 7px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;font-style:italic}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
nav ol{columns:2}
"""


def render_html(title: str, intro: list[Block], sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(_html_block(b) for b in intro),
        f"<nav><ol>{toc}</ol></nav>",
    ]
    for s in sections:
        parts.append(_html_section(s, 2))
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_section(s: Section, level: int) -> str:
    out = [f'<section id="{s.anchor}"><h{level}>{html.escape(s.title)}</h{level}>']
    out += [_html_block(b) for b in s.blocks]
    out += [_html_section(sub, level + 1) for sub in s.subsections]
    out.append("</section>")
    return "\n".join(out)


def _html_block(b: Block) -> str:
    e = html.escape
    if isinstance(b, Para):
        return f"<p>{e(b.text)}</p>"
    if isinstance(b, Note):
        return f'<p class="note">{e(b.text)}</p>'
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
        head = "".join(f"<th>{e(str(c))}</th>" for c in b.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(_cell(v))}</td>" for v in row) + "</tr>" for row in b.rows
        )
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode()
        return (
            f'<figure><img alt="{e(b.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(b.caption)}</figcaption></figure>"
        )
    if isinstance(b, Code):
        title = f"<p><b>{e(b.title)}</b></p>" if b.title else ""
        return f"{title}<pre>{e(b.text)}</pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def _cell(v: Any) -> str:
    return v if isinstance(v, str) else fmt(v)


def render_markdown(
    title: str, intro: list[Block], sections: list[Section], figure_dir: str
) -> str:
    """Markdown; figures are linked as ``figure_dir/<name>.png`` (written by the caller)."""
    out = [f"# {title}", ""]
    out += [_md_block(b, figure_dir) for b in intro]
    for s in sections:
        out.append(_md_section(s, 2, figure_dir))
    return "\n".join(out).rstrip() + "\n"


def _md_section(s: Section, level: int, figure_dir: str) -> str:
    out = [f"{'#' * level} {s.title}", ""]
    out += [_md_block(b, figure_dir) for b in s.blocks]
    out += [_md_section(sub, level + 1, figure_dir) for sub in s.subsections]
    return "\n".join(out)


def _md_block(b: Block, figure_dir: str) -> str:
    if isinstance(b, Para):
        return b.text + "\n"
    if isinstance(b, Note):
        return f"> **Note:** {b.text}\n"
    if isinstance(b, Bullets):
        return "\n".join(f"- {i}" for i in b.items) + "\n"
    if isinstance(b, Table):
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = [f"*{b.caption}*", ""] if b.caption else []
        lines.append("| " + " | ".join(esc(c) for c in b.columns) + " |")
        lines.append("|" + "---|" * len(b.columns))
        lines += ["| " + " | ".join(esc(_cell(v)) for v in row) + " |" for row in b.rows]
        return "\n".join(lines) + "\n"
    if isinstance(b, Figure):
        return f"![{b.caption}]({figure_dir}/{b.name}.png)\n\n*{b.caption}*\n"
    if isinstance(b, Code):
        title = f"**{b.title}**\n\n" if b.title else ""
        return f"{title}```\n{b.text.rstrip()}\n```\n"
    raise TypeError(f"unknown block {type(b).__name__}")


def iter_figures(sections: list[Section]):
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Figure):
                yield b
        yield from iter_figures(s.subsections)
