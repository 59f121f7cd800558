"""The document model renders the same content to HTML and Markdown, self-contained."""

from __future__ import annotations

import base64
import math
import re

import numpy as np

from husai.report.render import (
    Code,
    Figure,
    Note,
    Para,
    Section,
    Table,
    fmt,
    render_html,
    render_markdown,
)

PNG = b"\x89PNG\r\n\x1a\nfake"


def _doc():
    sec = Section("1. Title <x>", "one").add(
        Para("a & b"),
        Note("nothing here"),
        Table(
            ["name", "value"], [["p|q", 0.12345], ["n", float("nan")], ["i", np.int64(7)]], "cap"
        ),
        Figure("fig1", PNG, "a figure"),
        Code("key: value", "cfg"),
    )
    return [sec]


def test_fmt():
    assert fmt(0.12345) == "0.123"
    assert fmt(np.int64(7)) == "7"
    assert fmt(float("nan")) == "n/a" and fmt(None) == "n/a"
    assert fmt(0.0003) == "0.0003"
    assert fmt(math.pi, 2) == "3.14"


def test_html_is_escaped_and_embeds_figures():
    html = render_html("T", [], _doc())
    assert "1. Title &lt;x&gt;" in html and "a &amp; b" in html
    src = re.findall(r'src="([^"]+)"', html)
    assert src == ["data:image/png;base64," + base64.b64encode(PNG).decode()]
    assert not re.search(r"(src|href)=\"https?:", html)
    assert "<script" not in html
    assert "0.123" in html and "n/a" in html and ">7<" in html


def test_markdown_has_same_text_and_relative_figures():
    md = render_markdown("T", [], _doc(), "report_files")
    assert "## 1. Title <x>" in md
    assert "| p\\|q | 0.123 |" in md
    assert "![a figure](report_files/fig1.png)" in md
    assert "> **Note:** nothing here" in md
    assert "```\nkey: value\n```" in md
