"""Which ``customer.*`` names a compiled template reads, found in its Jinja2 syntax tree.

The audience statement computes a member's facts in SQL; some are costly (the RFM scores are window functions
over the whole population). A campaign whose templates never print ``customer.rfm_segment`` need not compute it,
so the pipeline asks the templates which names they read and selects only those facts.

The answer is either a set of names or ``None`` for "cannot tell", and ``None`` is the safe default: the caller then
computes every fact. It is ``None`` whenever ``customer`` is used other than as ``customer.name`` or
``customer["name"]`` with a constant name (printed whole, passed to a filter or macro, assigned, iterated,
``customer.get(...)``), and whenever an included, extended or imported template cannot be read and analysed the
same way (a name computed at render time, a missing file).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import Environment, nodes
from jinja2.meta import find_referenced_templates

CUSTOMER = "customer"
# mapping methods: `customer.get("x")` reads a name we cannot see statically
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values", "__getitem__", "__contains__"})


def customer_names(env: Environment, tree: nodes.Template) -> frozenset[str] | None:
    """The ``customer.*`` names ``tree`` reads, with the templates it includes, extends or imports; None if
    unknown."""
    return _names(env, tree, seen=set())


def _names(env: Environment, tree: nodes.Template, seen: set[str]) -> frozenset[str] | None:
    found = _own_names(tree)
    if found is None:
        return None
    for name in find_referenced_templates(tree):
        if name is None:  # a template name computed at render time
            return None
        if name in seen:
            continue
        seen.add(name)
        try:
            source, filename, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
            included = env.parse(source, name, filename)
        except Exception:  # unreadable here (missing, refused): unknown, never a failure
            return None
        more = _names(env, included, seen)
        if more is None:
            return None
        found |= more
    return frozenset(found)


def _own_names(tree: nodes.Template) -> set[str] | None:
    """Names read as ``customer.x`` / ``customer['x']`` in this tree alone; None if ``customer`` escapes."""
    read: set[str] = set()
    reached: set[int] = set()  # ids of the Name nodes seen under an accepted Getattr / Getitem
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == CUSTOMER):
            continue
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            name = node.arg.value
        else:
            return None  # customer[some_variable]
        if name in _MAPPING_METHODS:
            return None
        read.add(name)
        reached.add(id(target))
    for name_node in tree.find_all(nodes.Name):
        if name_node.name == CUSTOMER and id(name_node) not in reached:
            return None  # customer used whole, assigned or shadowed: cannot tell what is read
    return read


def union(parts: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    """The names read by several templates together; None if any of them is unknown."""
    total: set[str] = set()
    for part in parts:
        if part is None:
            return None
        total |= part
    return frozenset(total)


def names_in(value: Any) -> frozenset[str] | None:
    """The names read by every template in a channel's compiled templates: a template (anything with a
    ``customer_names`` attribute), or mappings and lists of them (a webhook's payload); plain text and numbers
    read nothing. Anything else is an object we cannot see into: unknown."""
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return frozenset()
    if hasattr(value, "customer_names"):
        return value.customer_names
    if isinstance(value, Mapping):
        return union(names_in(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return union(names_in(v) for v in value)
    return None
