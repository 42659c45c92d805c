"""One report, two renderings: Markdown and a standalone HTML page.

A :class:`Doc` is a list of blocks (headings, paragraphs, bullet lists,
warnings, tables from DataFrames, images, raw HTML) built by chained calls and
rendered to both formats from the same structure, so the two files never drift
apart::

    doc = Doc("Closed-loop evaluation")
    doc.para("Escalated steps are re-executed by the teacher.")
    doc.bullets(["teacher-only success 0.98", "SLM-only 0.65"])
    doc.heading("Arms").table(results, floatfmt=".3f", index=False)
    doc.image("frontier.png", "frontier")
    doc.write(out)  # out/report.md and out/report.html

Inline text may use ``**bold**``, ```code``` and ``[text](href)``: kept as is
in Markdown, converted (after escaping) in HTML. This is a package-internal
module (used by :mod:`r2vcal.report` and the pipelines), not public API.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["CSS", "Doc", "inline_html"]

CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;"
    "max-width:62em;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
    "h1,h2,h3{line-height:1.2}h2{margin-top:1.6em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
    "tr:nth-child(even) td{background:#fafafa}"
    "img{max-width:100%;display:block;margin:.8em 0}"
    "code{background:#f4f4f4;padding:0 .2em}"
    ".warning{background:#fee;border:1px solid #c00;padding:6px 10px;margin:.6em 0}"
    ".caption{font-style:italic;margin-bottom:.2em}"
    "tr.hl td{background:#e3f2e3;font-weight:600}"
)

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def inline_html(text: str) -> str:
    """Escape ``text`` for HTML and convert its inline Markdown.

    Parameters
    ----------
    text : str
        Plain text with optional ``**bold**``, ```code``` and
        ``[text](href)``.

    Returns
    -------
    str
        HTML-safe text with ``<b>``, ``<code>`` and ``<a>`` elements.

    Examples
    --------
    >>> inline_html("**a** < `b` [c](d.md)")
    '<b>a</b> &lt; <code>b</code> <a href="d.md">c</a>'
    """
    out = html.escape(text, quote=True)
    out = _CODE.sub(r"<code>\1</code>", out)
    out = _BOLD.sub(r"<b>\1</b>", out)
    return _LINK.sub(r'<a href="\2">\1</a>', out)


@dataclass(frozen=True)
class _Block:
    """One block: its Markdown lines and its HTML fragment."""

    markdown: str
    html: str


class Doc:
    """A report built block by block and rendered to Markdown and HTML.

    Every builder method appends one block and returns the document, so calls
    chain. Rendering is deterministic: the same calls give the same files.

    Parameters
    ----------
    title : str
        The report's title: the Markdown ``#`` heading, the HTML ``<title>``
        and ``<h1>``.
    css : str, default=CSS
        Style sheet of the HTML page (the module's small default keeps tables
        and images readable at a glance).

    Examples
    --------
    >>> import pandas as pd
    >>> doc = Doc("Demo").para("Two **routers**.").bullets(["a", "b"])
    >>> _ = doc.table(pd.DataFrame({"x": [0.5]}), index=False)
    >>> print(doc.to_markdown())
    # Demo
    <BLANKLINE>
    Two **routers**.
    <BLANKLINE>
    - a
    - b
    <BLANKLINE>
    |     x |
    |------:|
    | 0.500 |
    <BLANKLINE>
    """

    def __init__(self, title: str, *, css: str = CSS) -> None:
        self.title = title
        self.css = css
        self._blocks: list[_Block] = []

    def _add(self, markdown: str, html_: str) -> Doc:
        self._blocks.append(_Block(markdown, html_))
        return self

    def heading(self, text: str, level: int = 2) -> Doc:
        """Append a section heading (``level`` 2 to 6; the title is level 1)."""
        if not isinstance(level, int) or not 2 <= level <= 6:
            raise ValueError(
                f"The 'level' parameter of Doc.heading must be an int in [2, 6]. "
                f"Got {level!r} instead."
            )
        return self._add(
            f"{'#' * level} {text}", f"<h{level}>{inline_html(text)}</h{level}>"
        )

    def para(self, text: str) -> Doc:
        """Append a paragraph of inline-Markdown text."""
        return self._add(text, f"<p>{inline_html(text)}</p>")

    def bullets(self, items: Iterable[str]) -> Doc:
        """Append a bullet list (nothing when ``items`` is empty)."""
        items = list(items)
        if not items:
            return self
        md = "\n".join(f"- {x}" for x in items)
        li = "".join(f"<li>{inline_html(x)}</li>" for x in items)
        return self._add(md, f"<ul>{li}</ul>")

    def warning(self, text: str) -> Doc:
        """Append a highlighted warning (a Markdown quote, an HTML box)."""
        return self._add(
            f"> **Warning:** {text}",
            f"<div class='warning'><b>Warning:</b> {inline_html(text)}</div>",
        )

    def table(
        self,
        df: pd.DataFrame,
        caption: str | None = None,
        floatfmt: str = ".3f",
        *,
        index: bool = True,
        highlight: Sequence[bool] | None = None,
    ) -> Doc:
        """Append a table of ``df``.

        Parameters
        ----------
        df : DataFrame
            The table; string cells are written as they are.
        caption : str, default=None
            A line above the table.
        floatfmt : str, default=".3f"
            Format spec of float cells, in both renderings.
        index : bool, default=True
            Whether to write the index as the first column.
        highlight : sequence of bool, default=None
            One flag per row; flagged rows are marked: their first cell in
            bold in Markdown, the whole row (class ``hl``) in HTML.
        """
        mask = _row_mask(highlight, len(df))
        md = _bold_first_cells(df, mask, index, floatfmt).to_markdown(
            index=index, floatfmt=floatfmt
        )
        page = df.to_html(
            index=index,
            border=0,
            float_format=lambda v: format(v, floatfmt),
            na_rep="",
        )
        if mask is not None:
            head, body = page.split("<tbody>", 1)
            first, *rows = body.split("<tr>")
            tags = ["<tr class='hl'>" if m else "<tr>" for m in mask]
            body = first + "".join(tag + row for tag, row in zip(tags, rows))
            page = f"{head}<tbody>{body}"
        if caption is not None:
            md = f"*{caption}*\n\n{md}"
            page = f"<p class='caption'>{inline_html(caption)}</p>\n{page}"
        return self._add(md, page)

    def image(self, src: str, alt: str, *, root: str | Path | None = None) -> Doc:
        """Append an image, ``src`` relative to the report folder.

        Parameters
        ----------
        src : str
            The image's path, relative to the report folder.
        alt : str
            Its alternative text.
        root : str or Path, default=None
            The report folder; when given, the image is left out unless
            ``root / src`` is a file (a plot a run may not have drawn).
        """
        if root is not None and not (Path(root) / src).is_file():
            return self
        return self._add(
            f"![{alt}]({src})",
            f"<img src='{html.escape(src)}' alt='{html.escape(alt)}'>",
        )

    def html_block(self, raw: str, markdown: str | None = None) -> Doc:
        """Append raw HTML to the page (not escaped).

        Parameters
        ----------
        raw : str
            HTML fragment, written as it is.
        markdown : str, default=None
            What the Markdown file shows in its place (nothing by default).
        """
        return self._add(markdown or "", raw)

    def to_markdown(self) -> str:
        """The document as Markdown text (ends with a newline)."""
        parts = [f"# {self.title}"]
        parts += [b.markdown for b in self._blocks if b.markdown]
        return "\n\n".join(parts) + "\n"

    def to_html(self) -> str:
        """The document as a standalone HTML page."""
        title = html.escape(self.title)
        head = (
            "<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<title>{title}</title>\n<style>{self.css}</style></head>\n<body>"
        )
        body = [f"<h1>{title}</h1>", *(b.html for b in self._blocks if b.html)]
        return "\n".join([head, *body, "</body></html>"]) + "\n"

    def write(self, folder: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<folder>/<stem>.md`` and ``<folder>/<stem>.html``.

        Parameters
        ----------
        folder : str or Path
            Output folder (created when missing).
        stem : str, default="report"
            File name without suffix.

        Returns
        -------
        (Path, Path)
            The Markdown and the HTML file.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        md, page = out / f"{stem}.md", out / f"{stem}.html"
        md.write_text(self.to_markdown(), encoding="utf-8")
        page.write_text(self.to_html(), encoding="utf-8")
        return md, page


def _row_mask(highlight: Sequence[bool] | None, n_rows: int) -> list[bool] | None:
    if highlight is None:
        return None
    mask = [bool(v) for v in highlight]
    if len(mask) != n_rows:
        raise ValueError(
            f"The 'highlight' parameter of Doc.table must hold one flag per row "
            f"({n_rows}). Got {len(mask)} flags instead."
        )
    return mask


def _bold_first_cells(
    df: pd.DataFrame, mask: list[bool] | None, index: bool, floatfmt: str
) -> pd.DataFrame:
    """``df`` with the first cell of the flagged rows in Markdown bold."""
    if not mask or not any(mask) or (not index and df.shape[1] == 0):
        return df

    def bold(v: object) -> str:
        return f"**{format(v, floatfmt) if isinstance(v, float) else v}**"

    out = df.copy()
    if index:
        out.index = [bold(v) if m else v for v, m in zip(out.index, mask)]
    else:
        col = out.columns[0]
        out[col] = [bold(v) if m else v for v, m in zip(out[col], mask)]
    return out
