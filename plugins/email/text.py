"""The plain-text alternative of an HTML e-mail, for clients and spam filters that read text only.

Blocks (``p``, ``h1``…, ``table``) become paragraphs, ``div`` / ``tr`` / ``br`` line breaks, list items bullets,
table cells are separated by spaces, links keep their target as ``text (url)``, images their ``alt``; ``head``,
``style``, ``script`` and hidden elements (``display:none``, e.g. the preheader) are dropped. lxml parses (the
HTML parser of the standard library would do, but lxml is already here for premailer and is faster).
"""

from __future__ import annotations

import re

from lxml import etree, html

_BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "hr"}  # blank line
_LINE_TAGS = {"div", "tr", "br", "section", "header", "footer", "center"}  # line break
_SKIP_TAGS = {"head", "style", "script", "title"}
_HIDDEN = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def html_to_text(source: str) -> str:
    """Readable plain text of ``source`` (a document or a fragment)."""
    if not source.strip():
        return "\n"
    root = html.document_fromstring(source) if re.match(r"\s*<(!doctype|html)", source, re.I) else None
    if root is None:
        root = html.fragment_fromstring(source, create_parent="div")
    out: list[str] = []
    _walk(root, out)
    lines = [line.strip() for line in "".join(out).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _walk(element: etree._Element, out: list[str]) -> None:
    tag = element.tag if isinstance(element.tag, str) else ""  # comments and processing instructions: no tag
    skip = not tag or tag in _SKIP_TAGS or bool(_HIDDEN.search(element.get("style") or ""))
    if not skip:
        if tag in _BLOCK_TAGS:
            out.append("\n\n")
        elif tag in _LINE_TAGS:
            out.append("\n")
        elif tag == "li":
            out.append("\n- ")
        elif tag in ("td", "th"):
            out.append(" ")
        elif tag == "img" and (alt := element.get("alt")):
            out.append(alt)
        start = len(out)
        if element.text:
            out.append(_SPACE.sub(" ", element.text))
        for child in element:
            _walk(child, out)
        if tag in _BLOCK_TAGS:
            out.append("\n\n")
        elif tag in _LINE_TAGS:
            out.append("\n")
        elif tag == "a":
            href = element.get("href")
            label = "".join(out[start:]).strip()
            if href and not href.startswith("#") and href not in label:
                out.append(f" ({href})" if label else href)
    if element.tail:
        out.append(_SPACE.sub(" ", element.tail))
