"""The HTML page around the charts: one self-contained file (styles inline, charts as inline SVG, no script).

Every text from the document goes through Jinja2's autoescaping; a chart's SVG is the only markup inserted as is,
and matplotlib escapes the text it writes into it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment
from markupsafe import Markup

from orchestrator.charts.figures import FONT_FAMILIES


@dataclass(frozen=True)
class Figure:
    """A headline figure: a label (English and Chinese), its value, an optional note below it."""

    label: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class Section:
    """A part of the page: a chart (inline SVG) or, when there is nothing to draw, a sentence saying so."""

    title: str
    chart: str | None = None
    empty: str = "No data."
    caption: str = ""
    table: list[list[str]] = field(default_factory=list)  # first row is the header


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{{ title }}</title>
<style>
  body { font-family: {{ fonts }}; color: #1d2733; margin: 0; background: #f5f7f9; }
  main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; }
  h1 { font-size: 1.6rem; margin: 0 0 4px; }
  .subtitle { color: #5a6b7b; margin: 0 0 16px; }
  .verdict { background: #fff; border-left: 4px solid #1f6fb4; padding: 10px 14px; margin: 0 0 20px;
             font-size: 1.05rem; }
  .figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px;
             margin: 0 0 24px; }
  .figure { background: #fff; border-radius: 6px; padding: 10px 12px; }
  .figure .label { color: #5a6b7b; font-size: 0.85rem; }
  .figure .value { font-size: 1.35rem; font-weight: 600; margin-top: 2px; }
  .figure .note { color: #5a6b7b; font-size: 0.8rem; }
  section { background: #fff; border-radius: 6px; padding: 14px 16px; margin: 0 0 18px; }
  h2 { font-size: 1.1rem; margin: 0 0 8px; }
  .chart svg { width: 100%; height: auto; display: block; }
  .empty { color: #5a6b7b; font-style: italic; }
  .caption { color: #5a6b7b; font-size: 0.85rem; margin: 6px 0 0; }
  table { border-collapse: collapse; font-size: 0.85rem; margin-top: 8px; }
  th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #e3e7eb; }
  th:first-child, td:first-child { text-align: left; }
  footer { color: #8595a5; font-size: 0.8rem; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
{% if subtitle %}<p class="subtitle">{{ subtitle }}</p>{% endif %}
{% if verdict %}<p class="verdict">{{ verdict }}</p>{% endif %}
{% if figures %}
<div class="figures">
{% for f in figures %}  <div class="figure"><div class="label">{{ f.label }}</div><div class="value">{{ f.value }}</div>
    {%- if f.note %}<div class="note">{{ f.note }}</div>{% endif %}</div>
{% endfor %}</div>
{% endif %}
{% for s in sections %}
<section class="{{ 'chart-section' if s.chart else 'empty-section' }}">
<h2>{{ s.title }}</h2>
{% if s.chart %}<div class="chart">{{ s.chart | safe }}</div>{% else %}<p class="empty">{{ s.empty }}</p>{% endif %}
{% if s.caption %}<p class="caption">{{ s.caption }}</p>{% endif %}
{% if s.table %}<table>
<tr>{% for cell in s.table[0] %}<th>{{ cell }}</th>{% endfor %}</tr>
{% for row in s.table[1:] %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}
</section>
{% endfor %}
<footer>{{ footer }}</footer>
</main>
</body>
</html>
"""

_environment = Environment(autoescape=True, keep_trailing_newline=True)
_page = _environment.from_string(_TEMPLATE)


def render_page(
    title: str,
    sections: list[Section],
    *,
    subtitle: str = "",
    verdict: str = "",
    figures: list[Figure] | None = None,
    footer: str = "",
) -> str:
    fonts = ", ".join(name if name == "sans-serif" else f"'{name}'" for name in FONT_FAMILIES)
    return _page.render(
        title=title,
        subtitle=subtitle,
        verdict=verdict,
        figures=figures or [],
        sections=sections,
        footer=footer,
        fonts=Markup(fonts),
    )


def write_page(html: str, path: str | Path) -> Path:
    """Write a page to ``path`` all or nothing (a temporary file beside it, then a rename), so a reader never sees
    half a page and a failed write leaves an older page as it was. The folder must exist (OSError otherwise)."""
    target = Path(path)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
