"""YAML with positions: the config document as plain values, and where each one stands.

A ``yaml.SafeLoader`` that builds dicts, lists and scalars, records the 1-based line and
column of every mapping key and value under its key path (``("rules", 0, "name")``), and
expands ``${VAR}`` in scalars through ``config.env``. Problems found on the way (duplicate
keys, self-referring aliases, bad ``${…}``) are collected, never raised, so that
``syncd validate`` reports all of them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from syncd.config.env import interpolate
from syncd.config.values import EnvText

Path = tuple[str | int, ...]

# Bounds that keep a hostile or broken file from exhausting memory: YAML aliases can expand
# exponentially ("billion laughs"), and nothing legitimate comes near these.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Pos:
    """1-based line and column of a key (if the value sits in a mapping) and of its value."""

    key: tuple[int, int] | None
    value: tuple[int, int]


@dataclass(slots=True)
class RawProblem:
    path: Path
    message: str
    at_key: bool = False
    where: tuple[int, int] | None = None  # for a node the path does not lead to


@dataclass(slots=True)
class Document:
    data: Any
    positions: dict[Path, Pos] = field(default_factory=dict)
    problems: list[RawProblem] = field(default_factory=list)
    # Paths whose value was built from the environment (never echo them), and paths whose
    # interpolation failed (their own validation errors would only repeat the problem).
    from_env: set[Path] = field(default_factory=set)
    broken: set[Path] = field(default_factory=set)


class TooLargeError(Exception):
    pass


def mark(at: yaml.Mark) -> tuple[int, int]:
    return at.line + 1, at.column + 1


class PositionLoader(yaml.SafeLoader):
    """A SafeLoader that builds plain values and records where every key and value stands.

    Mapping keys are taken as written (their text), since every key of the config is a name;
    so ``123:`` or ``on:`` stay strings instead of turning into an int or a boolean.
    Duplicate keys, which PyYAML would silently resolve to the last one, are problems.
    """

    def __init__(self, text: str, environ: Mapping[str, str]) -> None:
        super().__init__(text)
        self.environ = environ
        self.doc = Document(data=None)
        self._nodes = 0
        self._stack: set[int] = set()

    def load_document(self) -> Document:
        node = self.get_single_node()
        if node is not None:
            self.doc.positions[()] = Pos(None, mark(node.start_mark))
            self.doc.data = self._build(node, ())
        return self.doc

    def _build(self, node: yaml.Node, path: Path) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES or len(path) > MAX_DEPTH:
            raise TooLargeError
        if id(node) in self._stack:
            self.doc.broken.add(path)
            self.doc.problems.append(RawProblem(path, "an alias refers to itself"))
            return None
        if isinstance(node, yaml.MappingNode):
            self._stack.add(id(node))
            try:
                return self._build_mapping(node, path)
            finally:
                self._stack.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self._stack.add(id(node))
            try:
                items = []
                for i, child in enumerate(node.value):
                    self.doc.positions[(*path, i)] = Pos(None, mark(child.start_mark))
                    items.append(self._build(child, (*path, i)))
                return items
            finally:
                self._stack.discard(id(node))
        value = self.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            text, used_env, problems = interpolate(value, self.environ)
            for problem in problems:
                self._env_problem(path, problem)
            if used_env:
                self.doc.from_env.add(path)
                # Unquoted, the value is read like the same text written in the file: a
                # number or boolean key takes ``retries: ${RETRIES}``. Quoted, a string.
                plain = isinstance(node, yaml.ScalarNode) and node.style is None
                return EnvText(text) if plain else text
            return text
        return value

    def _build_mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        self.flatten_mapping(node)  # resolves "<<: *anchor" merges, as SafeLoader does
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.doc.positions[(*path, "?")] = Pos(
                    mark(key_node.start_mark), mark(value_node.start_mark)
                )
                self.doc.problems.append(
                    RawProblem((*path, "?"), "a key must be a plain name", at_key=True)
                )
                continue
            key = str(key_node.value)
            key_path = (*path, key)
            if key in result:
                first = self.doc.positions[key_path].key
                line = first[0] if first else "?"
                self.doc.problems.append(
                    RawProblem(
                        key_path,
                        f"duplicate key {key!r} (first at line {line})",
                        where=mark(key_node.start_mark),
                    )
                )
                continue
            self.doc.positions[key_path] = Pos(
                mark(key_node.start_mark), mark(value_node.start_mark)
            )
            result[key] = self._build(value_node, key_path)
        return result

    def _env_problem(self, path: Path, message: str) -> None:
        self.doc.broken.add(path)
        self.doc.problems.append(RawProblem(path, message))
