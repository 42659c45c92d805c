"""The report renderer: one structure, Markdown and HTML."""

import pandas as pd
import pytest

from r2vcal._render import CSS, Doc, inline_html


def _doc() -> Doc:
    df = pd.DataFrame({"router": ["a<b", "c"], "brier": [0.12345, 0.5]})
    return (
        Doc("T & t")
        .warning("**a** is worse")
        .para("see `x` and [b](b.md)")
        .bullets(["one", "two"])
        .bullets([])
        .heading("Tables")
        .table(df, caption="Brier", floatfmt=".2f", index=False)
        .image("f.png", "frontier")
        .html_block("<hr>", markdown="---")
        .html_block("<p>html only</p>")
    )


def test_markdown_holds_every_block_in_order():
    md = _doc().to_markdown()
    assert md.startswith("# T & t\n\n> **Warning:** **a** is worse\n\n")
    assert "- one\n- two" in md
    assert "## Tables" in md and "*Brier*" in md and "| a<b" in md and "0.12" in md
    assert "![frontier](f.png)" in md and "---" in md and "html only" not in md
    assert md.index("## Tables") < md.index("![frontier]") and md.endswith("\n")


def test_html_is_escaped_standalone_and_styled():
    page = _doc().to_html()
    assert page.startswith("<!doctype html>") and CSS in page
    assert "<title>T &amp; t</title>" in page and "a&lt;b" in page
    assert "<b>a</b> is worse" in page and "<code>x</code>" in page
    assert '<a href="b.md">b</a>' in page and "<li>two</li>" in page
    assert "0.12" in page and "<img src='f.png' alt='frontier'>" in page
    assert "<p>html only</p>" in page and page.rstrip().endswith("</body></html>")


def test_write_creates_both_files(tmp_path):
    md, page = _doc().write(tmp_path / "out", stem="r")
    assert md == tmp_path / "out" / "r.md" and page.name == "r.html"
    assert md.read_text() == _doc().to_markdown()
    assert page.read_text() == _doc().to_html()


def test_heading_level_is_checked():
    with pytest.raises(ValueError, match=r"'level' parameter of Doc\.heading"):
        Doc("t").heading("x", level=1)


def test_inline_html_escapes_before_converting():
    assert inline_html("<i>**b**</i>") == "&lt;i&gt;<b>b</b>&lt;/i&gt;"


def test_table_highlights_flagged_rows_in_both_renderings():
    df = pd.DataFrame({"arm": ["cvar", "entropy", "random"], "share": [0.8, 0.5, 0.9]})
    doc = Doc("t").table(df, index=False, highlight=df["arm"] == "entropy")
    md, page = doc.to_markdown(), doc.to_html()
    assert "| **entropy** |" in md and "**cvar**" not in md
    assert page.count("<tr class='hl'>") == 1
    row = page.split("<tr class='hl'>")[1].split("</tr>")[0]
    assert "entropy" in row and "0.500" in row
    by_index = Doc("t").table(df.set_index("share"), highlight=[True, False, False])
    assert "| **0.800** |" in by_index.to_markdown()
    with pytest.raises(ValueError, match=r"'highlight' parameter of Doc\.table.*\(3\)"):
        Doc("t").table(df, highlight=[True])


def test_image_with_root_is_left_out_when_the_file_is_missing(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    doc = Doc("t").image("a.png", "a", root=tmp_path).image("b.png", "b", root=tmp_path)
    md = doc.to_markdown()
    assert "![a](a.png)" in md and "b.png" not in md and "b.png" not in doc.to_html()
