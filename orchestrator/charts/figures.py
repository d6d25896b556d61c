"""matplotlib, set up once for charts embedded in HTML pages as inline SVG.

Why matplotlib's SVG back end: the page needs no JavaScript and nothing from the network, a chart is a few
kilobytes of SVG, and every mark is an element a test can count. Text stays text (``svg.fonttype: none``) so the
viewer's browser draws it with a CJK-capable font from the page's font list, rather than matplotlib embedding
glyph outlines from whatever font the generating machine happens to have (which would turn 浙江 into boxes on a
machine without a CJK font, and make every label a path nobody can select or search).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
from markupsafe import escape

matplotlib.use("Agg")  # no display: the figures are only ever written as SVG

from matplotlib import pyplot as plt
from matplotlib.figure import Figure

#: The page's fonts, most preferred first; also written into the SVG so the browser picks the same ones.
FONT_FAMILIES: tuple[str, ...] = (
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "PingFang SC",
    "Microsoft YaHei",
    "WenQuanYi Micro Hei",
    "DejaVu Sans",
    "sans-serif",
)

TREATMENT = "#1f6fb4"
CONTROL = "#b8860b"
NEUTRAL = "#6b7b8c"
POSITIVE = "#2e8540"
NEGATIVE = "#b0323a"

STYLE: dict[str, object] = {
    "svg.fonttype": "none",
    # labels are user input (campaign, step, variant names): a "$" must stay a dollar sign, never start maths
    "text.parse_math": False,
    "svg.hashsalt": "orchestrator",  # stable element ids: the same document gives the same page
    "font.family": "sans-serif",
    "font.sans-serif": list(FONT_FAMILIES),
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.grid": True,
    "grid.color": "#e3e7eb",
    "axes.axisbelow": True,
}

# no RDF block: a date would make every page differ, and the rest names URLs the page has no use for
NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
_XML_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_FIXED_SIZE = re.compile(r'(<svg[^>]*?) width="[^"]*" height="[^"]*"')


@contextmanager
def figure(width: float = 7.0, height: float = 3.2) -> Iterator[Figure]:
    """A figure in the page's style (inches at 100 dpi), closed afterwards whatever happens."""
    with matplotlib.rc_context(STYLE), _missing_glyphs_ignored():
        fig = plt.figure(figsize=(width, height), dpi=100)
        try:
            yield fig
        finally:
            plt.close(fig)


@contextmanager
def _missing_glyphs_ignored() -> Iterator[None]:
    """matplotlib measures text (for layout) with the first listed font it finds on this machine, and warns of
    every glyph that font lacks: all of Chinese, where no CJK font is installed. The viewer's browser draws the
    text, so the only cost is a label's space measured a little off; the warnings would only be noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        yield


def to_svg(fig: Figure, title: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prologue, scaling with the page (viewBox kept, fixed size
    dropped), labelled for screen readers by ``title`` (escaped)."""
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE), _missing_glyphs_ignored():
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata=NO_METADATA)
    svg = _XML_PROLOGUE.sub("", buffer.getvalue(), count=1)
    svg = _FIXED_SIZE.sub(r"\1", svg, count=1)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{escape(title)}" ', 1)
