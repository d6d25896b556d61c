"""Advice on e-mail HTML, found at compile time (``orchestrator validate`` prints it; nothing fails for it).

Checked, with the template file and line of each finding:

* widths over ``MAX_WIDTH`` (650) px, in ``width="…"`` attributes or in CSS (``width`` / ``min-width`` in
  ``style`` attributes and ``<style>`` blocks): wider layouts scroll sideways in most mail clients;
* ``<img>`` without ``alt``: many clients block images, and the alt text is what the reader sees then;
* ``<link rel="stylesheet">`` and ``@import`` in ``<style>``: removed before inlining (``email_inline.
  without_stylesheets``: no template makes the server fetch anything), and mail clients ignore them anyway.

The source is the template as written, Jinja syntax and all; values that are Jinja expressions are not judged.
"""

from __future__ import annotations

import re

from lxml import etree, html

MAX_WIDTH = 650
_CSS_WIDTH = re.compile(r"(?<![-\w])(min-width|width)\s*:\s*(\d+(?:\.\d+)?)px", re.IGNORECASE)
_STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.IGNORECASE | re.DOTALL)
_MEDIA = re.compile(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", re.IGNORECASE)
_PX = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(px)?\s*$", re.IGNORECASE)
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_IMPORT = re.compile(r"@import\b[^;]*;?", re.IGNORECASE)
NO_FETCH = "the server never fetches stylesheets and mail clients ignore them; put the CSS in <style>"


def lint(source: str, where: str) -> list[str]:
    """Findings as ``"<where>:<line>: <advice>"``."""
    source = _JINJA_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), source)  # keep the line numbers
    found: list[tuple[int, str]] = []
    for match in _STYLE_BLOCK.finditer(source):
        css = _MEDIA.sub(lambda m: "\n" * m.group(0).count("\n"), match.group(1))  # media queries narrow, not widen
        first_line = source.count("\n", 0, match.start(1)) + 1
        for rule in _IMPORT.finditer(match.group(1)):
            line = first_line + match.group(1).count("\n", 0, rule.start())
            found.append((line, f"{rule.group(0).strip()[:80]!r} removed: {NO_FETCH}"))
        for width in _CSS_WIDTH.finditer(css):
            if float(width.group(2)) > MAX_WIDTH:
                line = first_line + css.count("\n", 0, width.start())
                found.append((line, _too_wide(f"{width.group(1)}: {width.group(2)}px in <style>")))
    if "<" in source:
        found += _elements(source)
    return [f"{where}:{line}: {advice}" for line, advice in sorted(found)]


def _elements(source: str) -> list[tuple[int, str]]:
    try:
        root = html.fragment_fromstring(source, create_parent="div") if "<html" not in source.lower() else None
        root = root if root is not None else html.document_fromstring(source)
    except (etree.ParserError, ValueError):
        return []
    found: list[tuple[int, str]] = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        line = element.sourceline or 1
        tag = element.tag.lower()
        width = element.get("width")
        if width and (px := _PX.match(width)) and float(px.group(1)) > MAX_WIDTH:
            found.append((line, _too_wide(f'<{tag} width="{width}">')))
        for css in _CSS_WIDTH.finditer(element.get("style") or ""):
            if float(css.group(2)) > MAX_WIDTH:
                found.append((line, _too_wide(f"<{tag} style=…{css.group(0)}…>")))
        if tag == "img" and element.get("alt") is None:
            found.append((line, f"<img src={element.get('src', '')!r}> has no alt text (shown when images are off)"))
        if tag == "link" and "stylesheet" in (element.get("rel") or "").lower():
            href = element.get("href", "")
            found.append((line, f"stylesheet link {href!r} removed: {NO_FETCH}"))
    return found


def _too_wide(what: str) -> str:
    return f"{what} is wider than {MAX_WIDTH}px: keep e-mail layouts 600-{MAX_WIDTH}px wide"
