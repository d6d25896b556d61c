"""YAML loading that remembers where every value came from.

Validation errors must name the file, line and column of the offending value. PyYAML's composed node tree has
those marks; we build plain Python data from it and keep a map from each value's path (a tuple of keys and list
indexes, as pydantic reports ``loc``) to its 1-based (line, column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    """Safe loader; every value is built by ``_construct`` below, so no Python objects can be created."""


def _construct(loader: _Loader, node: yaml.Node, path: Path_, positions: dict, file: str) -> Any:
    # a mapping entry is located at its key (set by the caller), which is where a reader looks for it
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
        line, column = positions[path]
        raise InputError(f"YAML tag {node.tag!r} is not allowed", file=file, line=line, column=column)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                line = key_node.start_mark.line + 1
                raise InputError("a mapping key must be a plain value", file=file, line=line)
            key = str(key) if not isinstance(key, str) else key
            if key in result:
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
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, file: str) -> YamlDocument:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        positions: dict[Path_, tuple[int, int]] = {}
        data = None if node is None else _construct(loader, node, (), positions, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    return YamlDocument(data=data, file=file, positions=positions)


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
