"""CSS inlining for e-mail templates, done once per template version rather than once per recipient.

Mail clients (Gmail, Outlook) ignore or strip ``<style>`` blocks, so the rules must be copied into each element's
``style`` attribute (premailer does that). Premailer is slow (milliseconds per message), and a campaign renders
one template for thousands of customers, so it runs on the *template source*, and the inlined source is compiled
and rendered per customer. Steps:

1. ``flatten``: ``{% extends "…" %}`` and ``{% include "…" %}`` with literal names are resolved into one source, so
   that a layout's ``<style>`` reaches the child's blocks (inheritance that cannot be resolved statically is left
   alone: ``warnings`` says so and the template is used as written);
2. ``protect``: every Jinja construct (``{{ … }}``, ``{% … %}``, ``{# … #}``, ``{% raw %}…{% endraw %}``) is
   replaced by an inert lowercase token, which premailer and lxml leave alone even inside attributes (premailer
   would otherwise URL-encode ``{{ customer.id }}`` in an ``href`` into ``{{%20customer.id%20}}``);
3. premailer inlines, then the tokens are put back; the Jinja tags must come back complete and in their original
   order (lxml may move text it considers misplaced), else the template is used un-inlined with a warning;
4. the same protected source gives the plain-text alternative (``email_text.html_to_text``), so the text part is
   a template too and no HTML is parsed per recipient.

Results are cached by the SHA-256 of the flattened source: a changed template or layout is a new version.
``cache_info()`` reports hits and misses (premailer runs once per miss).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator_plugins.email.lint import NO_FETCH
from orchestrator_plugins.email.text import html_to_text

_JINJA = re.compile(
    r"\{%[-+]?\s*raw\s*[-+]?%\}.*?\{%[-+]?\s*endraw\s*[-+]?%\}"  # raw blocks are kept whole
    r"|\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}",
    re.DOTALL,
)
_TAG = re.compile(r"\{%([-+]?)\s*(extends|include|block|endblock)\b(.*?)[-+]?%\}", re.DOTALL)
_LITERAL = re.compile(r"""\s*(["'])([^"']+)\1\s*$""")
_STYLE = re.compile(r"<style[\s>]|<link[^>]+stylesheet", re.IGNORECASE)
_SUPER = re.compile(r"\{\{-?\s*super\(\)\s*-?\}\}")
MAX_DEPTH = 10
_STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style\s*>)", re.IGNORECASE | re.DOTALL)
_IMPORT = re.compile(r"@import\b[^;]*;?", re.IGNORECASE)
_STYLESHEET_LINK = re.compile(r"<link\b[^>]*\bstylesheet\b[^>]*>", re.IGNORECASE)


class NotFlat(Exception):
    """The template's inheritance cannot be resolved statically (a variable parent, a missing file…)."""


# --- 1. flattening --------------------------------------------------------------------------------------------


@dataclass
class _Block:
    name: str
    open: str  # the original ``{% block name %}`` tag
    close: str
    body: list[str | _Block]


def _parse(source: str) -> tuple[list[str | _Block], str | None]:
    """The source as text and blocks; the literal parent name if it extends one; its literal includes inline."""
    root: list[str | _Block] = []
    stack: list[list[str | _Block]] = [root]
    blocks: list[_Block] = []
    parent: str | None = None
    pos = 0
    for match in _TAG.finditer(source):
        stack[-1].append(source[pos : match.start()])
        pos = match.end()
        kind, arg = match.group(2), match.group(3)
        if kind == "block":
            block = _Block(arg.split()[0] if arg.split() else "", match.group(0), "", [])
            stack[-1].append(block)
            blocks.append(block)
            stack.append(block.body)
        elif kind == "endblock":
            if len(stack) == 1:
                raise NotFlat("an endblock without its block")
            stack.pop()
            blocks.pop().close = match.group(0)
        elif kind == "extends":
            literal = _LITERAL.match(arg)
            if literal is None or len(stack) > 1 or parent is not None:
                raise NotFlat(f"{{% extends{arg}%}} does not name one template literally")
            parent = literal.group(2)
        else:  # include: kept as a marker, resolved by the caller
            stack[-1].append(_Include(match.group(0), arg))
    stack[-1].append(source[pos:])
    if len(stack) != 1:
        raise NotFlat("a block without its endblock")
    return root, parent


class _Include(str):
    """An ``{% include %}`` tag in the parsed source (a str subclass, so unresolved it prints as written)."""

    def __new__(cls, tag: str, arg: str) -> _Include:
        obj = super().__new__(cls, tag)
        obj.arg = arg  # type: ignore[attr-defined]
        return obj


def _blocks(nodes: list[str | _Block], into: dict[str, _Block]) -> dict[str, _Block]:
    for node in nodes:
        if isinstance(node, _Block):
            into.setdefault(node.name, node)
            _blocks(node.body, into)
    return into


def flatten(source: str, get_source: Callable[[str], str], depth: int = 0) -> str:
    """One source with literal extends and includes resolved; ``get_source(name)`` reads a template by name."""
    if depth > MAX_DEPTH:
        raise NotFlat("templates extend or include each other too deeply")
    nodes, parent = _parse(source)
    if parent is None:
        return _emit(nodes, {}, get_source, depth)
    # a child: only its blocks count (Jinja prints nothing else of it); other tags outside blocks would be lost
    outside = "".join(n for n in nodes if isinstance(n, str) and not isinstance(n, _Include))
    stray = [m.group(0) for m in _JINJA.finditer(outside) if not m.group(0).startswith(("{#", "{%-#"))]
    stray = [tag for tag in stray if not re.match(r"\{%[-+]?\s*extends\b", tag)]
    if stray or _JINJA.sub("", outside).strip():
        raise NotFlat(f"content outside blocks in a child template ({(stray or ['text'])[0][:40]})")
    overrides = _blocks(nodes, {})
    parent_source = flatten(get_source(parent), get_source, depth + 1)
    parent_nodes, _ = _parse(parent_source)
    return _emit(parent_nodes, overrides, get_source, depth)


def _emit(nodes: list[str | _Block], overrides: dict[str, _Block], get_source: Callable[[str], str], depth: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, _Block):
            own = _emit(node.body, overrides, get_source, depth)
            child = overrides.get(node.name)
            if child is None:
                out.append(f"{node.open}{own}{node.close}")
            else:
                body = _emit(child.body, overrides, get_source, depth)
                out.append(f"{node.open}{_SUPER.sub(lambda _, own=own: own, body)}{node.close}")
        elif isinstance(node, _Include):
            literal = _LITERAL.match(node.arg)  # type: ignore[attr-defined]
            if literal is None:  # `ignore missing`, `without context`, a variable: Jinja includes it at render time
                out.append(str(node))
            else:
                out.append(flatten(get_source(literal.group(2)), get_source, depth + 1))
        else:
            out.append(node)
    return "".join(out)


# --- 2. protecting the Jinja syntax ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Protected:
    text: str
    tags: tuple[str, ...]  # token i stands for tags[i]
    nonce: str

    def restore(self, text: str, *, drop_output: bool = False) -> str:
        """Tokens back to their Jinja text; ValueError unless every tag comes back once, in order.

        With ``drop_output`` (the text part, which leaves out ``<title>``, ``<style>`` and the like) expressions
        and comments may be missing; statements (``{% … %}``) must still all be there, in order.
        """
        seen: list[int] = []

        def back(match: re.Match[str]) -> str:
            seen.append(int(match.group(1)))
            return self.tags[int(match.group(1))]

        # lxml writes a token used as an attribute name (``<td {% if … %}…>``) as a valueless attribute
        restored = re.sub(rf"jx{self.nonce}(\d+)x(?:=\"\")?", back, text)
        expected = list(range(len(self.tags)))
        if drop_output:
            statements = {i for i, tag in enumerate(self.tags) if tag.startswith("{%")}
            expected = [i for i in expected if i in statements or i in seen]
        if seen != expected:
            raise ValueError("the Jinja tags were moved or dropped by the HTML parser")
        return restored


def protect(source: str) -> Protected:
    nonce = secrets.token_hex(4)
    while f"jx{nonce}" in source:  # pragma: no cover - 1 in 4 billion
        nonce = secrets.token_hex(4)
    tags: list[str] = []

    def token(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        return f"jx{nonce}{len(tags) - 1}x"

    return Protected(_JINJA.sub(token, source), tuple(tags), nonce)


# --- 3. inlining, cached --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inlined:
    """One template version prepared for sending: HTML with styles inlined, and a plain-text template."""

    html: str  # Jinja source; the flattened source (less stylesheets) when there was nothing to inline (or it failed)
    text: str | None  # Jinja source of the plain-text part; None: derive it per message
    inlined: bool
    warnings: tuple[str, ...] = ()  # without a location: the same source may come from several files


_cache: dict[str, Inlined] = {}
_stats = {"hits": 0, "misses": 0}
MAX_CACHE = 256  # template versions; a long-running scheduler sees edits, so old versions are dropped


def cache_info() -> dict[str, int]:
    return {**_stats, "size": len(_cache)}


def prepare(source: str) -> Inlined:
    """The inlined HTML and text sources of a flattened template source (cached by the source's hash)."""
    key = hashlib.sha256(source.encode()).hexdigest()
    found = _cache.get(key)
    if found is not None:
        _stats["hits"] += 1
        return found
    _stats["misses"] += 1
    result = _prepare(source)
    if len(_cache) >= MAX_CACHE:
        _cache.pop(next(iter(_cache)))
    _cache[key] = result
    return result


def without_stylesheets(source: str) -> str:
    """``source`` less ``@import`` rules in ``<style>`` blocks and ``<link rel="stylesheet">`` elements.

    cssutils (premailer's CSS parser) fetches every ``@import`` URL whatever premailer's ``allow_network`` says,
    and premailer reads linked stylesheets: a template must never make the server fetch anything (a host that
    never answers would hang validate), and mail clients ignore both anyway. ``email_lint`` reports each one.
    This is for the output and the advice; what guarantees no fetch is cssutils' fetcher (``_no_fetching``),
    since an ``@import`` can be spelt in ways a regex misses.
    Line breaks are kept, so that errors still point at the template's lines.
    """
    if "@import" not in source.lower() and "stylesheet" not in source.lower():
        return source
    blank = _blank_lines
    source = _STYLE_BLOCK.sub(lambda m: m.group(1) + _IMPORT.sub(blank, m.group(2)) + m.group(3), source)
    return _STYLESHEET_LINK.sub(blank, source)


def _blank_lines(match: re.Match[str]) -> str:
    return "\n" * match.group(0).count("\n")


def _prepare(source: str) -> Inlined:
    source = without_stylesheets(source)
    protected = protect(source)
    warnings: list[str] = []
    html, inlined = source, False
    if _STYLE.search(source):
        refused: list[str] = []
        try:
            html = protected.restore(run_premailer(protected.text, refused))
            inlined = True
        except ValueError as exc:
            warnings.append(f"CSS not inlined ({exc}); keep Jinja tags out of <style> and inside elements")
        warnings += [f"stylesheet {url[:80]!r} imported in <style> not fetched: {NO_FETCH}" for url in refused]
    try:
        text: str | None = protected.restore(html_to_text(protected.text), drop_output=True)
    except ValueError:
        text = None  # e.g. a tag inside <style>: derive the text per message instead
    return Inlined(html, text, inlined, tuple(warnings))


_refused = threading.local()  # the URLs cssutils asked for during this thread's premailer run


def _refuse_fetch(url: str) -> None:
    """cssutils' fetcher for ``@import``: fetches nothing (cssutils then keeps the rule without its sheet)."""
    found = getattr(_refused, "urls", None)
    if found is not None:
        found.append(url)
    return None


def _no_fetching() -> None:
    """Make cssutils unable to fetch. premailer's ``allow_network=False`` only covers ``<link>``: cssutils reads every
    ``@import`` it parses through its module-wide default fetcher (premailer gives it no fetcher of its own), and
    ``@import`` has spellings no regex strips reliably (CSS escapes such as ``@\\69mport``, a ``<style>`` never
    closed). Every parser cssutils makes without a fetcher uses this default, so replacing it covers them all."""
    import cssutils.util

    cssutils.util._defaultFetcher = _refuse_fetch  # type: ignore[attr-defined]  # cssutils' documented hook is per parser


def run_premailer(html: str, refused: list[str] | None = None) -> str:
    """Premailer with what e-mail needs: no network, no class removal, leftover ``@media`` rules kept. URLs that
    the CSS asked to fetch (and were refused) are appended to ``refused``."""
    import premailer  # only when a template is inlined: it pulls in cssutils, a quarter second per command

    _no_fetching()
    _refused.urls = refused
    try:
        return premailer.Premailer(
            html,
            allow_network=False,
            disable_validation=True,
            remove_classes=False,
            keep_style_tags=False,
            cssutils_logging_level=logging.CRITICAL,
        ).transform()
    finally:
        _refused.urls = None
