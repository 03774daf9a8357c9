"""Self-contained HTML pages: plotly.js embedded once, every piece of model text escaped."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from probes.results import atomic_write_text

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #dde;padding:.25rem .5rem;text-align:left}
th{background:#f3f4f8}.note{color:#555;font-size:.9rem}.verdict{font-size:1.3rem;font-weight:600}
.removed{color:#1a7f37}.suppressed{color:#b35900}.inconclusive{color:#666}
"""


def esc(text: object) -> str:
    """HTML-escape any text that came from a model, a user file or a prompt."""
    return html.escape(str(text), quote=True)


@dataclass
class Page:
    """An HTML report built from sections of escaped text, tables and plotly figures."""

    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> Page:
        self.parts.append(f"<h2>{esc(text)}</h2>")
        return self

    def paragraph(self, text: str, cls: str = "") -> Page:
        self.parts.append(f'<p class="{esc(cls)}">{esc(text)}</p>')
        return self

    def table(self, frame: pd.DataFrame, max_rows: int = 200, float_format: str = "{:.4g}") -> Page:
        shown = frame.head(max_rows)
        self.parts.append(shown.to_html(escape=True, index=False, float_format=float_format.format, border=0))
        return self

    def figure(self, fig: go.Figure) -> Page:
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}))
        return self

    def render(self) -> str:
        from plotly.offline import get_plotlyjs

        body = "\n".join(self.parts)
        sub = f'<p class="note">{esc(self.subtitle)}</p>' if self.subtitle else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(self.title)}</title><style>{_STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
            f"<body><h1>{esc(self.title)}</h1>{sub}\n{body}\n</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.render())
