"""Bounds on what one template render may cost: time, output size, and the size of any value it builds.

Templates are written by marketers and run once per customer, so a slip (``{{ 'a' * 10**9 }}``, two nested
``range(100000)`` loops, ``9 ** 9 ** 9``) must fail in milliseconds with the template's line, not take gigabytes
or minutes. Three kinds of guard, all raising ``TemplateLimitError`` inside the template (so the error carries
the template line):

* before an operation that can build a huge value in one step: ``*`` repetition, ``**``, ``%`` / ``format``
  widths, ``+`` of long strings, the padding and replacing string methods and filters (checked from their
  operands, before Python allocates anything);
* on every loop iteration (``{% for %}`` iterables are wrapped at parse time, see ``bound_loops``) and on every
  sandboxed call: the render's time budget;
* on the output as it is produced: ``MAX_TEXT`` characters; and on text a template builds out of sight of the
  output, in ``{% set %}`` blocks, macros, ``caller()`` and ``{% filter %}`` blocks: Jinja collects that text in a
  list and joins it, so the code generator (``BoundedCodeGenerator``) makes those lists ``BoundedBuffer``s, which
  refuse to grow past ``MAX_TEXT``, the environment's ``concat`` is ``joined``, and a ``~`` chain is measured
  before it is joined (``sized_parts``).
"""

from __future__ import annotations

import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from markupsafe import soft_str

MAX_TEXT = 1_000_000  # characters (or items) of a rendered message and of any string or list a template builds
MAX_POWER_BITS = 100_000  # an integer power's result (30,000 digits: far beyond any price or count)
RENDER_SECONDS = 2.0  # for one template render; a real message takes a millisecond
LIMITS_HINT = (
    f"a template may build at most {MAX_TEXT:,} characters and must render within {RENDER_SECONDS:g} s; "
    "loop over the customer's data, not over large ranges"
)
LOOP_FILTER = "_bounded_loop"  # the filter every {% for %} iterable is wrapped in

_BLOCK = 64  # output chunks read between two size checks (each chunk is itself bounded by the checks below)
_local = threading.local()
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_DIGITS = re.compile(r"\d+")


class TemplateLimitError(Exception):
    """A template went over one of the limits above."""


def start_render() -> None:
    """Start one render's clock (per thread: renders in other threads have their own)."""
    _local.deadline = time.monotonic() + RENDER_SECONDS


def check_time() -> None:
    if time.monotonic() > getattr(_local, "deadline", float("inf")):
        raise TemplateLimitError(f"the template took longer than {RENDER_SECONDS:g} s to render")


def joined(chunks: Iterable[str]) -> str:
    """The render's output chunks joined, refused once past ``MAX_TEXT`` characters. Read a block of chunks at a
    time (``islice`` and ``map`` run in C): a check per chunk cost a fifth of a message's render time."""
    it = iter(chunks)
    parts: list[str] = []
    size = 0
    while block := list(islice(it, _BLOCK)):
        size += sum(map(len, block))
        if size > MAX_TEXT:
            raise TemplateLimitError(f"the template's output is longer than {MAX_TEXT:,} characters")
        parts += block
    return "".join(parts)


class BoundedBuffer(list):
    """The list a ``{% set %}`` block, macro, ``caller()`` or ``{% filter %}`` block collects its text in,
    refused once its text passes ``MAX_TEXT`` characters (before the join that would need that much memory)."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def append(self, item: Any) -> None:
        self.size += len(item) if isinstance(item, str) else 0
        if self.size > MAX_TEXT:
            raise TemplateLimitError(f"text built in this block or macro is longer than {MAX_TEXT:,} characters")
        super().append(item)

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)


def sized_parts(parts: tuple[Any, ...]) -> list[str]:
    """The operands of a ``~`` chain as text (``Markup`` stays ``Markup``), refused if together too long."""
    texts = [soft_str(part) for part in parts]
    size = sum(map(len, texts))
    if size > MAX_TEXT:
        raise _too_long("joining these values with ~", size)
    return texts


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every text buffer bounded and every ``~`` measured before it joins."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.bounded_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"{join}(environment.sized_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


def _too_long(what: str, size: int) -> TemplateLimitError:
    return TemplateLimitError(
        f"{what} would be {size:,} characters or items long (too long: the limit is {MAX_TEXT:,})"
    )


def _sized(value: Any) -> bool:
    return isinstance(value, (str, bytes, list, tuple))


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


# --- operators ------------------------------------------------------------------------------------------------


def binop(operator: str, left: Any, right: Any) -> Any:
    """``left <operator> right`` for the intercepted operators, refused when the result would be huge."""
    if operator == "**":
        return power(left, right)
    if operator == "*":
        return repeat(left, right)
    if operator == "%":
        if isinstance(left, str):
            check_percent_format(left, right)
        return left % right
    if _sized(left) and _sized(right) and len(left) + len(right) > MAX_TEXT:
        raise _too_long("joining these values", len(left) + len(right))
    return left + right


def power(base: Any, exponent: Any) -> Any:
    b, e = _count(base), _count(exponent)
    if b is not None and e is not None and e > 0 and abs(b) > 1 and abs(b).bit_length() * e > MAX_POWER_BITS:
        raise TemplateLimitError(f"the power {b} ** {e} is too large to compute (the limit is {MAX_POWER_BITS:,} bits)")
    return base**exponent


def repeat(left: Any, right: Any) -> Any:
    sequence, times = (left, _count(right)) if _sized(left) else (right, _count(left))
    if times is not None and _sized(sequence):
        size = len(sequence) * times
        if isinstance(sequence, (list, tuple)):  # a list of long strings is as long as its strings
            size = max(size, sum(len(item) for item in sequence if isinstance(item, str)) * times)
        if size > MAX_TEXT:
            raise _too_long("repeating this value", size)
    return left * right


def check_percent_format(template: str, args: Any) -> None:
    """``'%0999999999d' % 1``: a width or precision beyond ``MAX_TEXT``, written or passed as ``*``."""
    values = args if isinstance(args, tuple) else (args,)
    for match in _PERCENT_SPEC.finditer(template):
        for number in match.groups():
            if number == "*":
                if any((_count(v) or 0) > MAX_TEXT for v in values):
                    raise TemplateLimitError(f"a format width over {MAX_TEXT:,} in {template[:40]!r}")
            elif number is not None and int(number) > MAX_TEXT:
                raise TemplateLimitError(f"the format width {number} in {template[:40]!r} is too long")


def check_brace_format(template: str, args: tuple, kwargs: dict) -> None:
    """``'{:>999999999}'.format(x)``: widths in the format specs, literal or nested (``{:{w}}``)."""
    for _, _, spec, _ in string.Formatter().parse(template):
        if not spec:
            continue
        if any(int(n) > MAX_TEXT for n in _DIGITS.findall(spec)):
            raise TemplateLimitError(f"a format width in {template[:40]!r} is too long")
        if "{" in spec and any((_count(v) or 0) > MAX_TEXT for v in (*args, *kwargs.values())):
            raise TemplateLimitError(f"a format width over {MAX_TEXT:,} in {template[:40]!r}")


# --- calls ----------------------------------------------------------------------------------------------------

_WIDTH_METHODS = {"ljust", "rjust", "center", "zfill"}


def check_call(function: Any, args: tuple, kwargs: dict) -> None:
    """Before a method call from a template: the string methods whose result can dwarf their input."""
    owner = getattr(function, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(function, "__name__", "")
    if name in _WIDTH_METHODS and args and (_count(args[0]) or 0) > MAX_TEXT:
        raise _too_long(f"str.{name}({args[0]})", args[0])
    elif name == "replace" and len(args) >= 2:
        check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
    elif name == "expandtabs":
        size = (_count(args[0] if args else kwargs.get("tabsize", 8)) or 0) * owner.count("\t") + len(owner)
        if size > MAX_TEXT:
            raise _too_long("str.expandtabs", size)
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        items = args[0]
        size = sum(len(item) for item in items if isinstance(item, str)) + len(owner) * max(len(items) - 1, 0)
        if size > MAX_TEXT:
            raise _too_long("str.join", size)


def check_result(value: Any) -> Any:
    if _sized(value) and len(value) > MAX_TEXT:
        raise _too_long("a value built by this template", len(value))
    return value


def check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)) or len(new) <= len(old):
        return
    hits = text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    size = len(text) + hits * (len(new) - len(old))
    if size > MAX_TEXT:
        raise _too_long("this replace", size)


# --- filters --------------------------------------------------------------------------------------------------


def bounded_filters(filters: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Replacements for the built-in filters that can amplify their input, plus the loop guard."""
    center, indent, fmt, replace = filters["center"], filters["indent"], filters["format"], filters["replace"]
    batch, slice_, join = filters["batch"], filters["slice"], filters["join"]

    def checked_center(value: Any, width: int = 80) -> str:
        if (_count(width) or 0) > MAX_TEXT:
            raise _too_long(f"center({width})", width)
        return center(value, width)

    def checked_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> str:
        lines = str(value).count("\n") + 1
        size = len(str(value)) + (len(width) if isinstance(width, str) else (_count(width) or 0)) * lines
        if size > MAX_TEXT:
            raise _too_long("indent", size)
        return indent(value, width, *args, **kwargs)

    def checked_format(value: Any, *args: Any, **kwargs: Any) -> str:
        check_percent_format(str(value), kwargs or args)
        return fmt(value, *args, **kwargs)

    def checked_replace(eval_ctx: Any, value: Any, old: Any, new: Any, count: Any = None) -> str:
        check_replace(str(value), str(old), str(new), -1 if count is None else count)
        return check_result(replace(eval_ctx, value, old, new, count))

    def checked_batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        if (_count(linecount) or 0) > MAX_TEXT:
            raise _too_long(f"batch({linecount})", linecount)
        return batch(value, linecount, fill_with)

    def checked_slice(value: Any, slices: int, fill_with: Any = None) -> Any:
        if (_count(slices) or 0) > MAX_TEXT:
            raise _too_long(f"slice({slices})", slices)
        return slice_(value, slices, fill_with)

    def checked_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        return check_result(join(eval_ctx, value, d, attribute))

    for original, wrapper in ((replace, checked_replace), (join, checked_join)):
        wrapper.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]  # the eval context
    return {
        "center": checked_center,
        "indent": checked_indent,
        "format": checked_format,
        "replace": checked_replace,
        "batch": checked_batch,
        "slice": checked_slice,
        "join": checked_join,
        LOOP_FILTER: bounded_loop,
    }


def bounded_loop(iterable: Any) -> Iterator[Any]:
    """A ``{% for %}`` iterable that checks the render's clock on every iteration."""
    for item in iterable:
        check_time()
        yield item


def bound_loops(tree: nodes.Template) -> nodes.Template:
    """Wrap every loop's iterable in ``LOOP_FILTER`` (after parsing, before code generation: the template's own
    code then checks its clock on every iteration)."""
    for loop in list(tree.find_all(nodes.For)):
        loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno)
    return tree
