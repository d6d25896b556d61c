"""Condition trees: parse the YAML form into typed nodes, with errors that point at the line.

Grammar (everywhere a condition is allowed: ``segment``, ``when``, offer guards, named segments)::

    all: [cond, …]      every one holds          any: [cond, …]   at least one holds
    not: [cond, …]      none of them holds       segment: NAME    a named segment from config
    tag: NAME           tags_any: [..]           tags_all: [..]
    FACT: VALUE         equality                 FACT: {OP: VALUE, …, PARAM: VALUE}  all ops must hold

OP is one of eq, ne, gt, gte, lt, lte, in, not_in, between. A mapping with several keys means all of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from orchestrator.campaign.catalog import FactSpec
from orchestrator.durations import parse_duration
from orchestrator.errors import InputError, InputErrors
from orchestrator.yamlfile import YamlDocument, suggest

#: conditions nest at most this deep (all/any/not and named segments): SQLite's parser overflows at about 35
MAX_CONDITION_DEPTH = 16
#: a number a condition may compare with: SQLite binds at most 64-bit integers, and no shop counts higher
MAX_MAGNITUDE = 10**12
#: commas (ASCII, full-width, the Chinese enumeration comma) that make one text value look like a list
LIST_SEPARATORS = re.compile(r"\s*[,，、]\s*")
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
OPERATORS = (*COMPARISONS, "in", "not_in", "between")
COMBINATORS = ("all", "any", "not")
TAG_KEYS = ("tag", "tags_any", "tags_all")


@dataclass(frozen=True)
class All:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Any_:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """None of the items holds."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Tags:
    mode: str  # "any" or "all"
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Compare:
    fact: str
    ops: tuple[tuple[str, Any], ...]  # ((op, value), …), all must hold
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class Predicate:
    """A condition made in code, never written in a campaign file: the scheduler narrows a tick's audience with
    one (the members whose anniversary or event the tick is for). ``build()`` returns its SQL, a boolean
    expression over ``customers``; ``label`` names it in the funnel."""

    label: str
    build: Callable[[], Any]


Node = All | Any_ | Not | Tags | Compare | Predicate


class ConditionParser:
    """Parses condition data from one YAML document against a fact catalog and the named segments."""

    def __init__(
        self,
        doc: YamlDocument,
        facts: Mapping[str, FactSpec],
        named_segments: Mapping[str, Any] | None = None,
        named_segments_doc: YamlDocument | None = None,
    ):
        self.doc = doc
        self.facts = facts
        self.named = named_segments or {}
        self.named_doc = named_segments_doc
        self._expanding: list[str] = []
        self._problems: list[InputError] = []
        self._depth = 0

    def parse(self, data: Any, path: tuple) -> Node:
        """The condition tree, or ``InputErrors`` listing every problem in it (not only the first)."""
        self._problems = []
        node = self._parse(data, path, self.doc)
        if self._problems:
            raise InputErrors(self.doc.file, self._problems)
        return node

    def _collect(self, parse, *args) -> Node | None:
        """Parse one branch; a problem in it is recorded and its siblings are still checked."""
        try:
            return parse(*args)
        except InputError as exc:
            self._problems.extend(exc.problems if isinstance(exc, InputErrors) else [exc])
            return None

    def _error(self, doc: YamlDocument, path: tuple, message: str, hint: str | None = None):
        return doc.error(path, message, hint)

    def _parse(self, data: Any, path: tuple, doc: YamlDocument) -> Node:
        if isinstance(data, list):
            return All(tuple(self._collect(self._parse, item, (*path, i), doc) for i, item in enumerate(data)))
        if not isinstance(data, dict) or not data:
            raise self._error(
                doc,
                path,
                "a condition must be a non-empty mapping such as {recency_days: {gte: 90}}",
                hint="combine conditions with all: / any: / not: lists",
            )
        nodes = [self._collect(self._parse_key, key, value, (*path, key), doc) for key, value in data.items()]
        return nodes[0] if len(nodes) == 1 else All(tuple(nodes))

    def _parse_list(self, value: Any, path: tuple, doc: YamlDocument, key: str) -> tuple[Node, ...]:
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self._error(doc, path, f"{key}: expects a non-empty list of conditions")
        self._depth += 1
        try:
            if self._depth > MAX_CONDITION_DEPTH:
                raise self._error(
                    doc,
                    path,
                    f"nested too deeply: conditions nest at most {MAX_CONDITION_DEPTH} levels of all/any/not",
                    hint="a database cannot compile deeper trees: flatten them (all: [a, b, c], not all inside all)",
                )
            return tuple(self._collect(self._parse, item, (*path, i), doc) for i, item in enumerate(value))
        finally:
            self._depth -= 1

    def _parse_key(self, key: str, value: Any, path: tuple, doc: YamlDocument) -> Node:
        if key == "all":
            return All(self._parse_list(value, path, doc, key))
        if key == "any":
            return Any_(self._parse_list(value, path, doc, key))
        if key == "not":
            return Not(self._parse_list(value, path, doc, key))
        if key in TAG_KEYS:
            return self._parse_tags(key, value, path, doc)
        if key == "segment":
            return self._expand_segment(value, path, doc)
        if key in self.facts:
            return self._parse_fact(self.facts[key], value, path, doc)
        raise self._error(
            doc,
            path,
            f"unknown fact or keyword {key!r}",
            hint=suggest(key, [*self.facts, *COMBINATORS, *TAG_KEYS, "segment"])
            or "see 'orchestrator schema' for the facts a condition may use",
        )

    def _parse_tags(self, key: str, value: Any, path: tuple, doc: YamlDocument) -> Tags:
        if key == "tag":
            if not isinstance(value, str) or not value.strip():
                raise self._error(doc, path, "tag: expects one tag name", hint="use tags_any: [a, b] for several")
            self._one_value("tag", value, path, doc, "tags_any: [{}]")
            return Tags("any", (value.strip(),))
        if isinstance(value, str) and LIST_SEPARATORS.search(value):
            raise self._error(
                doc, path, f"{key}: expects a list of tag names", hint=_list_hint(f"{key}: [{{}}]", value)
            )
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self._error(doc, path, f"{key}: expects a non-empty list of tag names")
        for i, tag in enumerate(value):
            self._one_value(key, tag, (*path, i), doc, f"{key}: [{{}}]")
        return Tags("any" if key == "tags_any" else "all", tuple(v.strip() for v in value))

    def _one_value(self, what: str, value: Any, path: tuple, doc: YamlDocument, meant: str) -> None:
        """A text value that reads as a list (``浙江, 上海``) is almost certainly one: say how to write it."""
        if isinstance(value, str) and LIST_SEPARATORS.search(value.strip()):
            raise self._error(
                doc, path, f"{what}: {value!r} is one value with a comma in it", hint=_list_hint(meant, value)
            )

    def _expand_segment(self, value: Any, path: tuple, doc: YamlDocument) -> Node:
        if not isinstance(value, str):
            raise self._error(doc, path, "segment: expects the name of a segment defined in the config")
        if value not in self.named:
            hint = suggest(value, self.named) or (
                f"defined segments: {', '.join(sorted(self.named))}" if self.named else "the config defines none"
            )
            raise self._error(doc, path, f"unknown segment {value!r}", hint=hint)
        if value in self._expanding:
            cycle = " -> ".join([*self._expanding, value])
            raise self._error(doc, path, f"segment {value!r} refers to itself ({cycle})")
        self._expanding.append(value)
        start = len(self._problems)
        try:
            target_doc = self.named_doc or doc
            target_path = ("segments", value) if self.named_doc else path
            node = self._collect(self._parse, self.named[value], target_path, target_doc)
        finally:
            self._expanding.pop()
        for exc in self._problems[start:]:
            if exc.file != doc.file and not self._expanding:  # say which campaign line uses the segment
                line, column = doc.position(path)
                exc.message += f" (segment used at {doc.file}:{line}:{column})"
        return node

    def _parse_fact(self, spec: FactSpec, value: Any, path: tuple, doc: YamlDocument) -> Compare:
        if not isinstance(value, dict):
            if spec.kind == "string":
                self._one_value(spec.name, value, path, doc, f"{spec.name}: {{{{in: [{{}}]}}}}")
            return Compare(spec.name, (("eq", self._value(spec, value, path, doc)),))
        ops: list[tuple[str, Any]] = []
        params: list[tuple[str, Any]] = []
        for key, raw in value.items():
            sub = (*path, key)
            if key in OPERATORS:
                ops.append((key, self._operand(spec, key, raw, sub, doc)))
            elif spec.param(key):
                params.append((key, self._param(spec, key, raw, sub, doc)))
            else:
                allowed = [*OPERATORS, *(p.name for p in spec.params)]
                raise self._error(
                    doc,
                    sub,
                    f"{spec.name} has no operator or parameter {key!r}",
                    hint=suggest(key, allowed) or f"use one of: {', '.join(allowed)}",
                )
        for p in spec.params:
            if p.required and p.name not in dict(params):
                raise self._error(doc, path, f"{spec.name} needs the parameter {p.name!r}", hint=p.doc or None)
        if not ops:
            if spec.kind != "bool":
                raise self._error(doc, path, f"{spec.name}: give a comparison, e.g. {{gte: 1}}")
            ops.append(("eq", True))
        return Compare(spec.name, tuple(ops), tuple(params))

    def _param(self, spec: FactSpec, key: str, raw: Any, path: tuple, doc: YamlDocument) -> Any:
        param = spec.param(key)
        if param.kind == "duration":
            try:
                return parse_duration(raw)
            except ValueError as exc:
                raise self._error(doc, path, str(exc)) from None
        if not isinstance(raw, str | int) or isinstance(raw, bool) or not str(raw).strip():
            raise self._error(doc, path, f"{spec.name}.{key}: expects a name")
        value = str(raw).strip()
        if LIST_SEPARATORS.search(value) and not (param.choices and value in param.choices):
            raise self._error(
                doc,
                path,
                f"{spec.name}.{key}: {value!r} is one value with a comma in it",
                hint=f"one {key} per condition: combine several with any: [...]",
            )
        if param.choices and value not in param.choices:
            raise self._error(
                doc,
                path,
                f"{spec.name}.{key}: {value!r} is not one of {', '.join(param.choices)}",
                hint=suggest(value, param.choices),
            )
        return value

    def _operand(self, spec: FactSpec, op: str, raw: Any, path: tuple, doc: YamlDocument) -> Any:
        if op in ("in", "not_in"):
            if isinstance(raw, str) and LIST_SEPARATORS.search(raw):
                raise self._error(
                    doc,
                    path,
                    f"{spec.name}: {op}: expects a list, got the text {raw!r}",
                    hint=_list_hint(f"{op}: [{{}}]", raw),
                )
            if not isinstance(raw, list) or not raw:
                raise self._error(doc, path, f"{op}: expects a non-empty list of values")
            if spec.kind == "string":
                for i, v in enumerate(raw):
                    self._one_value(spec.name, v, (*path, i), doc, f"{op}: [{{}}]")
            return tuple(self._value(spec, v, (*path, i), doc) for i, v in enumerate(raw))
        if op == "between":
            if not isinstance(raw, list) or len(raw) != 2:
                raise self._error(doc, path, "between: expects a list of two values [low, high] (both included)")
            low, high = (self._value(spec, v, (*path, i), doc) for i, v in enumerate(raw))
            if low > high:
                raise self._error(doc, path, f"between: the low value {low} is above the high value {high}")
            return (low, high)
        if spec.kind in ("string", "bool") and op in ("gt", "gte", "lt", "lte"):
            raise self._error(doc, path, f"{spec.name} is a {spec.kind}: {op} does not apply", hint="use eq, ne, in")
        if spec.kind == "string":
            self._one_value(spec.name, raw, path, doc, f"{spec.name}: {{{{in: [{{}}]}}}}")
        return self._value(spec, raw, path, doc)

    def _value(self, spec: FactSpec, raw: Any, path: tuple, doc: YamlDocument) -> Any:
        try:
            return coerce_value(spec, raw)
        except ValueError as exc:
            raise self._error(doc, path, f"{spec.name}: {exc}") from None


def coerce_value(spec: FactSpec, raw: Any) -> Any:
    """The YAML value as the fact's type; ValueError with a readable message otherwise."""
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        raise ValueError(f"expects true or false, got {raw!r}")
    if spec.kind == "string":
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise ValueError(f"expects a text value, got {raw!r}")
        value = str(raw)
        if spec.choices and value not in spec.choices:
            hint = suggest(value, spec.choices)
            raise ValueError(f"{value!r} is not one of {', '.join(spec.choices)}" + (f"; {hint}" if hint else ""))
        return value
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"expects a number, got {raw!r}")
    try:
        number = Decimal(str(raw))
    except InvalidOperation:
        raise ValueError(f"expects a number, got {raw!r}") from None
    if not number.is_finite():
        raise ValueError(f"expects a finite number, got {raw!r}")
    if abs(number) > MAX_MAGNITUDE:
        raise ValueError(f"{raw!r} is out of range: a number in a condition is at most {MAX_MAGNITUDE:,} either way")
    if spec.kind == "int":
        if number != number.to_integral_value():
            raise ValueError(f"expects a whole number, got {raw!r}")
        return int(number)
    if spec.kind == "ratio" and not (0 <= number <= 1):
        raise ValueError(f"expects a share between 0 and 1, got {raw!r}")
    return number


def _list_hint(meant: str, text: str) -> str:
    """``did you mean in: [浙江, 上海]?`` for the comma-separated ``text``."""
    items = ", ".join(part for part in LIST_SEPARATORS.split(text.strip()) if part)
    return f"did you mean {meant.format(items)}?"


def durations_in(node: Node) -> list[timedelta]:
    """Every window used in a condition tree (for documentation and tests)."""
    if isinstance(node, All | Any_ | Not):
        return [d for item in node.items for d in durations_in(item)]
    if isinstance(node, Compare):
        return [v for _, v in node.params if isinstance(v, timedelta)]
    return []


_RANGE = {"minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE}
#: one text value: no comma of any kind (a comma list is written as a list)
_ONE_TEXT = {"type": "string", "pattern": r"^[^,，、]*$"}
_KIND_SCHEMA = {
    "int": {"type": "integer", **_RANGE},
    "number": {"type": "number", **_RANGE},
    "money": {"type": "number", **_RANGE},
    "ratio": {"type": "number", "minimum": 0, "maximum": 1},
    "string": _ONE_TEXT,
    "bool": {"type": "boolean"},
}
_DURATION_SCHEMA = {"type": "string", "pattern": r"^\s*\d+\s*[dwhms]\s*$"}


def _fact_schema(spec: FactSpec) -> dict[str, Any]:
    scalar = dict(_KIND_SCHEMA[spec.kind])
    if spec.choices:
        scalar["enum"] = list(spec.choices)
    ops: dict[str, Any] = {op: scalar for op in COMPARISONS}
    if spec.kind in ("string", "bool"):
        ops = {"eq": scalar, "ne": scalar}
    ops["in"] = ops["not_in"] = {"type": "array", "items": scalar, "minItems": 1}
    if spec.kind not in ("string", "bool"):
        ops["between"] = {"type": "array", "items": scalar, "minItems": 2, "maxItems": 2}
    for param in spec.params:
        if param.kind == "duration":
            ops[param.name] = _DURATION_SCHEMA
        else:
            ops[param.name] = {"type": "string", "enum": list(param.choices)} if param.choices else _ONE_TEXT
    required = [p.name for p in spec.params if p.required]
    mapping: dict[str, Any] = {"type": "object", "properties": ops, "additionalProperties": False}
    if required:
        mapping["required"] = required
    if spec.kind != "bool":  # a bool fact without an operator means "is true"; any other needs a comparison
        mapping["anyOf"] = [{"required": [op]} for op in OPERATORS if op in ops]
    return {"description": spec.doc, "anyOf": [scalar, mapping] if not required else [mapping]}


def condition_json_schema(facts: Mapping[str, FactSpec], name: str = "Condition") -> dict[str, Any]:
    """The JSON Schema of a condition, built from the fact catalog (so editors know every fact), as the
    definition ``name`` (its nested conditions refer to it)."""
    ref = {"$ref": f"#/$defs/{name}"}
    cond_list = {"anyOf": [{"type": "array", "items": ref, "minItems": 1}, ref]}
    properties: dict[str, Any] = {
        "all": cond_list,
        "any": cond_list,
        "not": cond_list,
        "segment": {"type": "string", "description": "a named segment from the config"},
        "tag": _ONE_TEXT,
        "tags_any": {"type": "array", "items": _ONE_TEXT, "minItems": 1},
        "tags_all": {"type": "array", "items": _ONE_TEXT, "minItems": 1},
    }
    properties.update({name: _fact_schema(spec) for name, spec in sorted(facts.items())})
    mapping = {"type": "object", "properties": properties, "additionalProperties": False, "minProperties": 1}
    return {"anyOf": [mapping, {"type": "array", "items": ref, "minItems": 1}]}
