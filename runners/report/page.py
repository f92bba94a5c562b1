"""A self-contained HTML page: inline PNG figures, tables, one stylesheet, no scripts.

Nothing on the page is fetched: figures are ``data:`` URIs, the style is inline, so the
file opens offline, from a mail attachment or inside the MLflow UI's artifact view.
Every text that comes from a run (names, params) is escaped here.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
p.meta { color: #555; margin-top: 0; }
p.note { color: #666; font-style: italic; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; }
nav a { margin-right: 1em; }
"""

# PNG resolution: sharp on a laptop screen, ~30-60 KB per figure.
DPI = 100


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)  # HTML fragments, in order
    anchor: str = ""

    def add(self, fragment: str) -> Section:
        self.parts.append(fragment)
        return self


def text(value) -> str:
    return html.escape(str(value), quote=True)


def note(message: str) -> str:
    return f'<p class="note">{text(message)}</p>'


def figure(fig, alt: str) -> str:
    """``fig`` as an inline PNG ``<img>`` (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # No "Software" metadata: the PNG stays free of the matplotlib web address.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{text(alt)}" src="data:image/png;base64,{data}">'


def number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(columns: Sequence[str], rows: Iterable[Sequence], *, html_columns=()) -> str:
    """A table; cells are escaped except in ``html_columns`` (already-built links)."""
    head = "".join(f"<th>{text(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column, value in zip(columns, row, strict=True):
            if column in html_columns:
                cells.append(f"<td>{value}</td>")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                cells.append(f'<td class="num">{text(number(value))}</td>')
            else:
                cells.append(f"<td>{text(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def link(href: str, label: str) -> str:
    return f'<a href="{text(href)}">{text(label)}</a>'


def render(title: str, meta: str, sections: Sequence[Section]) -> str:
    """The whole page: a title, a line of context, a table of contents, the sections."""
    nav = " ".join(f'<a href="#{text(s.anchor)}">{text(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{text(s.anchor)}"><h2>{text(s.title)}</h2>\n'
        + "\n".join(s.parts)
        + "</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{text(title)}</title>'
        f"<style>{STYLE}</style></head>\n"
        f'<body><h1>{text(title)}</h1><p class="meta">{text(meta)}</p>'
        f"<nav>{nav}</nav>\n{body}\n</body></html>\n"
    )
