"""YAML loading that remembers where every value came from.

Validation errors must name the file, line and column of the offending value. PyYAML's composed node tree has
those marks; we build plain Python data from it and keep a map from each value's path (a tuple of keys and list
indexes, as pydantic reports ``loc``) to its 1-based (line, column).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import InputError

Path_ = tuple[str | int, ...]


@dataclass
class YamlDocument:
    data: Any
    file: str
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path_) -> tuple[int | None, int | None]:
        """The line and column of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (None, None))

    def error(self, path: Path_, message: str, hint: str | None = None) -> InputError:
        line, column = self.position(path)
        where = format_path(path)
        text = f"{where}: {message}" if where else message
        return InputError(text, file=self.file, line=line, column=column, hint=hint)


def format_path(path: Path_) -> str:
    """``("steps", 1, "offer")`` -> ``steps[1].offer``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")


class _Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 scalars; every value is built by ``_construct`` below, so no Python objects
    can be created.

    YAML 1.1 (PyYAML's default) reads ``on``/``off``/``yes``/``no`` as booleans and ``10:00`` as the number
    600: a schedule's ``on: order_paid`` or ``time: 10:00`` would silently mean something else. Like YAML 1.2,
    only ``true``/``false`` are booleans here and numbers are plain decimal (or 0x/0o) numbers.
    """


#: deeper YAML than any campaign or config needs; PyYAML composes recursively and would hit Python's limit
MAX_DEPTH = 100
#: values a file may expand to: aliases (*name) repeated inside aliases grow exponentially ("billion laughs")
MAX_VALUES = 20_000


class _BoundedLoader(_Loader):
    """Refuses, while composing, nesting deeper than ``MAX_DEPTH``."""

    def __init__(self, stream, file: str):
        super().__init__(stream)
        self.file = file
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise InputError(
                    f"nested too deeply: more than {MAX_DEPTH} levels",
                    file=self.file,
                    line=mark.line + 1,
                    column=mark.column + 1,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


MAX_NUMBER_DIGITS = 100
_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct(loader: _Loader, node: yaml.Node, path: Path_, positions: dict, file: str) -> Any:
    # a mapping entry is located at its key (set by the caller), which is where a reader looks for it
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if len(positions) > MAX_VALUES:  # every value built has a position: this counts the expanded file
        raise InputError(
            f"the file expands to more than {MAX_VALUES:,} values: YAML aliases (*name) repeated inside aliases",
            file=file,
            line=node.start_mark.line + 1,
            column=node.start_mark.column + 1,
            hint="reuse a block with an alias a few times at most, or write the values out",
        )
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
        line, column = positions[path]
        raise InputError(f"YAML tag {node.tag!r} is not allowed", file=file, line=line, column=column)
    if isinstance(node, yaml.MappingNode):
        explicit = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<); merged entries come first
        merged = len(node.value) - explicit
        result: dict[Any, Any] = {}
        for index, (key_node, value_node) in enumerate(node.value):
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise InputError("a mapping key must be a plain value", file=file, line=line)
            key = key_node.value  # the key as written: `on:` is the word on, not true
            if key in result and index >= merged and _first_explicit(node, key, merged) < index:
                raise InputError(
                    f"duplicate key {key!r}",
                    file=file,
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                    hint="each key may appear once in a mapping",
                )
            positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _construct(loader, value_node, (*path, key), positions, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, (*path, i), positions, file) for i, item in enumerate(node.value)]
    if node.tag in (_INT, _FLOAT) and len(node.value) > MAX_NUMBER_DIGITS:  # int() of 4,300+ digits raises
        raise InputError(
            f"a number of {len(node.value):,} characters",
            file=file,
            line=node.start_mark.line + 1,
            column=node.start_mark.column + 1,
            hint="numbers in campaign and config files are at most a few digits long; quote it if it is text",
        )
    return loader.construct_object(node, deep=True)


def _first_explicit(node: yaml.MappingNode, key: str, merged: int) -> int:
    """Index of the first explicit (not merged) entry for ``key``: an explicit key may override a merged one,
    but not another explicit one."""
    return next(i for i, (k, _) in enumerate(node.value) if i >= merged and k.value == key)


def parse_yaml(text: str, file: str) -> YamlDocument:
    loader = _BoundedLoader(text, file)
    try:
        node = loader.get_single_node()
        positions: dict[Path_, tuple[int, int]] = {}
        data = None if node is None else _construct(loader, node, (), positions, file)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text, file) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    positions.setdefault((), (1, 1))  # an empty document is still located: at its first line
    return YamlDocument(data=data, file=file, positions=positions)


_OPENERS = {"while parsing a flow sequence": "[", "while parsing a flow mapping": "{"}


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, file: str) -> InputError:
    """A syntax error located where a reader can fix it.

    The parser notices an unclosed bracket or quote only lines later, where the next construct does not fit;
    the error is reported where the bracket or quote opened, with where the parser gave up.
    """
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    at = f"line {mark.line + 1}" if mark else "the end"
    opener = _OPENERS.get(exc.context or "")
    if opener and exc.context_mark and mark and exc.context_mark.line != mark.line:
        mark = exc.context_mark
        problem = f"the {opener!r} opened here is not closed ({problem} at {at})"
    elif exc.context == "while scanning a quoted scalar" and exc.context_mark:
        mark = exc.context_mark
        problem = f"the quote opened here is never closed ({problem})"
    elif (quoted := _runaway_quote(text, mark)) is not None:
        end = quoted.end_mark.line + 1
        problem = (
            f"the quoted value that starts here runs on to line {end}: is a closing quote missing? ({problem} at {at})"
        )
        mark = quoted.start_mark
    elif exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
        problem += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    return InputError(
        f"invalid YAML: {problem}",
        file=file,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
    )


def _runaway_quote(text: str, mark: yaml.Mark | None) -> yaml.ScalarToken | None:
    """The quoted value spanning lines that ends just before a syntax error: a quote left open swallows the
    line break and closes on the next line's quote, and the parser fails right after it."""
    if mark is None:
        return None
    last = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if (token.start_mark.line, token.start_mark.column) >= (mark.line, mark.column):
                break
            last = token
    except yaml.YAMLError:
        pass
    if (
        isinstance(last, yaml.ScalarToken)
        and last.style in ('"', "'")
        and last.start_mark.line < last.end_mark.line
        and last.end_mark.line == mark.line
    ):
        return last
    return None


def load_yaml(path: str | Path) -> YamlDocument:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a YAML file", file=str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError("is not UTF-8 text", file=str(path), line=line, hint="save the file as UTF-8") from None
    return parse_yaml(text, str(path))


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """``did you mean 'segment'?`` for a near miss among ``candidates``."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def _yaml_path(doc: YamlDocument, prefix: tuple, loc: tuple) -> tuple:
    """pydantic's error location as a path in the YAML document.

    pydantic adds the names of union branches (``FrequencyCap``, ``list[FrequencyCap]``) and of validators to a
    location; they are not keys in the file. A part is kept when the document has it at that place, or when it
    is the last part (the key that is missing or unknown), unless that is such a name.
    """
    path = tuple(prefix)
    for i, part in enumerate(loc):
        if (
            isinstance(part, int)
            or (*path, part) in doc.positions
            or (i == len(loc) - 1 and not (isinstance(part, str) and (part[:1].isupper() or "[" in part)))
        ):
            path = (*path, part)
    return path


def _empty_block_above(doc: YamlDocument, loc: tuple) -> tuple | None:
    """For an unknown key: the key just above it, when that one is empty (no value) and the unknown key is one
    its block may hold: the classic mis-indented block (``schedule:`` then ``cron:`` at the same column)."""
    if not loc or not isinstance(loc[-1], str):
        return None
    parent: Any = doc.data
    for part in loc[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return None
    if not isinstance(parent, dict):
        return None
    keys = list(parent)
    index = keys.index(loc[-1]) if loc[-1] in keys else 0
    if index == 0 or parent[keys[index - 1]] is not None:
        return None
    return (*loc[:-1], keys[index - 1])


def validation_problems(
    doc: YamlDocument,
    exc: ValidationError,
    prefix: tuple = (),
    vocabulary: Iterable[str] = (),
    shapes: Mapping[str, str] | None = None,
) -> list[InputError]:
    """pydantic's errors about a document as ``InputError``s at their lines, one per place.

    Unknown keys get a "did you mean" from ``vocabulary``; ``shapes`` gives the message for a value of the wrong
    shape at a known key (instead of one message per failed branch of a union).
    """
    vocabulary, shapes = list(vocabulary), shapes or {}
    errors = [(_yaml_path(doc, prefix, err["loc"]), err) for err in exc.errors()]
    # of a union's failed branches, keep the one that got furthest (a deeper error explains a shallower one)
    errors = [(loc, err) for loc, err in errors if not any(o[: len(loc)] == loc and o != loc for o, _ in errors)]
    by_location: dict[tuple, list[dict]] = {}
    for loc, err in errors:
        by_location.setdefault(loc, []).append(err)
    dedented = {
        loc: _empty_block_above(doc, loc) for loc, errs in by_location.items() if errs[0]["type"] == "extra_forbidden"
    }
    empty_blocks = {block for block in dedented.values() if block is not None}
    problems = []
    for loc, errs in by_location.items():
        key = loc[-1] if loc else None
        err = errs[0]
        if loc in empty_blocks:
            continue  # explained by the key indented too little below it
        if dedented.get(loc) is not None:
            block = dedented[loc]
            line, _ = doc.position(block)
            error = doc.error(loc, "", hint=f"indent {key}: and the lines that belong with it under {block[-1]}:")
            text = f"{key!r} is not indented under '{block[-1]}:' (line {line}): as written, {block[-1]}: is empty"
            parent = format_path(loc[:-1])
            error.message = f"{parent}: {text}" if parent else text
            problems.append(error)
        elif err["type"] == "extra_forbidden":
            error = doc.error(loc, "", suggest(str(key), vocabulary))  # at the stray key itself
            parent = format_path(loc[:-1])
            error.message = f"{parent}: unknown key {key!r}" if parent else f"unknown key {key!r}"
            problems.append(error)
        elif err["type"] == "missing":
            problems.append(doc.error(loc[:-1], f"missing required key {key!r}"))
        elif key in shapes:
            problems.append(doc.error(loc, shapes[key]))
        elif len(errs) > 1:  # every branch of a union failed at the same place: one message, not one each
            expected = " or ".join(e["msg"].removeprefix("Input should be ") for e in errs)
            problems.append(doc.error(loc, f"wrong type: expected {expected}"))
        else:
            problems.append(doc.error(loc, err["msg"].removeprefix("Value error, ")))
    return problems
