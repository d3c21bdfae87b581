"""YAML loading that remembers the line of every key, so errors can point at it.

``yaml.safe_load`` throws positions away; composing the node tree ourselves keeps them, and
still builds every scalar with PyYAML's safe constructor.
"""

from __future__ import annotations

from typing import Any

import yaml

from pxetwist.config.errors import ConfigError, KeyPath

LineMap = dict[KeyPath, int]


def load_located(text: str, source: str) -> tuple[Any, LineMap]:
    """Parse YAML safely; return the plain value and a map from key path to 1-based line."""
    loader = yaml.SafeLoader(text)
    lines: LineMap = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, lines
        return _build(loader, node, (), lines, source), lines
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"not valid YAML: {error.problem}", source=source, line=line) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}", source=source) from None
    finally:
        loader.dispose()


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, lines: LineMap, source: str
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise ConfigError(
                    "keys must be plain scalars",
                    source=source,
                    line=key_node.start_mark.line + 1,
                    path=path,
                )
            key_text = str(key)
            child = (*path, key_text)
            if key_text in result:
                raise ConfigError(
                    "duplicate key", source=source, line=key_node.start_mark.line + 1, path=child
                )
            lines[child] = key_node.start_mark.line + 1
            result[key_text] = _build(loader, value_node, child, lines, source)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, index), lines, source)
            for index, item in enumerate(node.value)
        ]
    if (
        isinstance(node, yaml.ScalarNode)
        and node.tag in _SEXAGESIMAL_TAGS
        and ":" in node.value
        and not node.style
    ):
        # YAML 1.1 reads an unquoted 52:54:00:12:34:56 as a base-60 number; nobody writing a
        # PXE config means that, so keep the text and let the field's validator judge it.
        return node.value
    return loader.construct_object(node, deep=True)


_SEXAGESIMAL_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


def line_for(lines: LineMap, path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor that exists in the file."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]
