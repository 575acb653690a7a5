"""Load a config file: YAML with positions, ``${VAR}``, validation, file:line:column.

Three stages, every one of which keeps going after a problem so that ``syncd validate``
reports all of them at once:

1. ``config.yaml_positions`` turns the YAML into plain values and records where each one
   stands; ``config.env`` expands ``${VAR}`` on the way (``$${`` is a literal ``${``).
2. pydantic validates the data into the frozen values of ``config.schema`` (the one
   declaration of the file); every error's ``loc`` is walked back to the YAML node it
   came from.
3. ``config.checks`` runs the checks that span the document on the same data.

Problem keys are dotted paths with list indices: ``rules[0].tags.include[1]``,
``registries.dev.url``. Messages never carry secret values: passwords and tokens are not
echoed, and a value that came from the environment is shown as ``(value from the
environment)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from syncd.config.checks import DocumentChecks
from syncd.config.schema import (
    NOT_IN_FILE,
    AccountConfig,
    ClusterConfig,
    Config,
    DefaultsConfig,
    EtcdConfig,
    RegistryConfig,
    RuleConfig,
    ServerConfig,
    StateConfig,
    TagFilter,
)
from syncd.config.values import FROM_ENV, SHOW_END, SHOW_START, LoadContext, kind_of
from syncd.config.yaml_positions import (
    MAX_FILE_BYTES,
    Document,
    Path,
    PositionLoader,
    TooLargeError,
    mark,
)
from syncd.errors import ConfigError, ConfigProblem
from syncd.state_sqlite import default_state_path

_CONFIG = TypeAdapter(Config)


def _fields_at(loc: Path) -> list[str] | None:
    """The keys the mapping at ``loc`` may hold (for the keys a did-you-mean offers)."""
    kind: type | None = None
    match loc:
        case ():
            kind = Config
        case ("registries", _):
            kind = RegistryConfig
        case ("registries", _, "credentials", int()):
            kind = AccountConfig
        case ("defaults",):
            kind = DefaultsConfig
        case ("server",):
            kind = ServerConfig
        case ("state",):
            kind = StateConfig
        case ("cluster",):
            kind = ClusterConfig
        case ("cluster", "etcd"):
            kind = EtcdConfig
        case ("rules", int()):
            kind = RuleConfig
        case ("rules", int(), "tags"):
            kind = TagFilter
    if kind is None:
        return None
    hidden = NOT_IN_FILE.get(kind.__name__, frozenset())
    if kind is TagFilter:
        hidden = frozenset({"names"})  # the list form is how users write names
    return sorted(f.name for f in dataclasses.fields(kind) if f.name not in hidden)


def _unknown_key_message(loc: Path) -> str:
    key = str(loc[-1])
    allowed = _fields_at(loc[:-1]) or []
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown key {key!r}; allowed here: {', '.join(allowed)}"
    return f"unknown key {key!r}"


def _error_message(err: ErrorDetails) -> str:
    kind = err["type"]
    loc = err["loc"]
    got = kind_of(err.get("input"))
    ctx = err.get("ctx") or {}
    match kind:
        case "extra_forbidden" | "unexpected_keyword_argument":
            return _unknown_key_message(loc)
        case "missing" | "missing_argument":
            return f"required key {str(loc[-1])!r} is missing"
        case "string_type":
            hint = " (quote it)" if got in ("an integer", "a number", "a boolean") else ""
            return f"expected a string, got {got}{hint}"
        case "int_type" | "int_from_float":
            return f"expected an integer, got {got}"
        case "bool_type":
            return f"expected true or false, got {got}"
        case "float_type":
            return f"expected a number, got {got}"
        case "list_type":
            return f"expected a list, got {got}"
        case "tuple_type":
            return f"expected a list, got {got}"
        case "dict_type" | "model_type" | "model_attributes_type" | "dataclass_type":
            return f"expected a mapping of keys, got {got}"
        case "too_short" | "string_too_short":
            return "must not be empty"
        case "greater_than_equal":
            return f"must be at least {ctx.get('ge')}"
        case "greater_than":
            return f"must be more than {ctx.get('gt')}"
        case "value_error":
            return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


# --------------------------------------------------------------------------- the loader


class _Loader:
    """One load: the document, its problems, and its values."""

    def __init__(
        self, filename: str, base_dir: str, environ: Mapping[str, str], *, check_files: bool
    ) -> None:
        self.filename = filename
        self.check_files = check_files
        self.base_dir = base_dir
        self.environ = environ
        self.doc = Document(data=None)
        self.problems: list[ConfigProblem] = []

    # -- problems ------------------------------------------------------------------

    def _locate(self, loc: Path) -> tuple[Path, str]:
        """The data path ``loc`` leads to and its display key.

        Segments the data does not have are skipped: ``names`` of a list-form ``tags``, the
        index pydantic gives a single-string ``repositories``. A missing key at the end is
        shown (``registries.dev.url``) but located at its mapping.
        """
        node: Any = self.doc.data
        path: Path = ()
        shown = ""
        for i, seg in enumerate(loc):
            in_dict = isinstance(node, dict) and isinstance(seg, str) and seg in node
            in_list = isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)
            if in_dict or in_list:
                node = node[seg]
            else:
                if isinstance(node, dict) and isinstance(seg, str) and i == len(loc) - 1:
                    shown += f".{seg}" if shown else seg
                continue
            path = (*path, seg)
            shown += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if shown else seg)
        return path, shown

    def add(
        self,
        path: Path,
        message: str,
        *,
        at_key: bool = False,
        shown: str = "",
        where: tuple[int, int] | None = None,
    ) -> None:
        """Record a problem at data path ``path``: at its value, or its key with ``at_key``;
        a path the document lacks is placed at its nearest ancestor."""
        pos = self.doc.positions.get(path)
        probe = path
        while pos is None and probe:
            probe = probe[:-1]
            pos = self.doc.positions.get(probe)
        if where is not None:
            line, column = where
        elif pos is None:
            line, column = 1, 1
        else:
            line, column = pos.key if (at_key and pos.key) else pos.value
        if any(p[: len(path)] == path for p in self.doc.from_env):
            message = re.sub(f"{SHOW_START}[^{SHOW_END}]*{SHOW_END}", FROM_ENV, message)
            if FROM_ENV not in message and path in self.doc.from_env:
                message += f" {FROM_ENV}"
        message = message.replace(SHOW_START, "").replace(SHOW_END, "")
        key = shown or _display(path)
        self.problems.append(ConfigProblem(self.filename, line, column, key, message))

    # -- stages ----------------------------------------------------------------------

    def parse(self, text: str) -> bool:
        loader = PositionLoader(text, self.environ)
        try:
            self.doc = loader.load_document()
        except yaml.MarkedYAMLError as e:
            at = e.problem_mark or e.context_mark
            line, column = mark(at) if at else (1, 1)
            # Only the problem and context text: str(e) would quote the offending line of the
            # file, which may hold a password.
            parts = [p for p in (e.context, e.problem) if p]
            message = "YAML syntax error: " + ("; ".join(parts) or "cannot parse")
            if e.context_mark and e.problem_mark and e.context_mark.line != e.problem_mark.line:
                began = mark(e.context_mark)
                message += f" (the construct began at line {began[0]}, column {began[1]})"
            self.problems.append(ConfigProblem(self.filename, line, column, "", message))
            return False
        except yaml.YAMLError as e:
            self.problems.append(
                ConfigProblem(self.filename, 1, 1, "", f"YAML error: {type(e).__name__}")
            )
            return False
        except (TooLargeError, RecursionError):
            self.problems.append(
                ConfigProblem(
                    self.filename, 1, 1, "", "the document is too large or nested too deeply"
                )
            )
            return False
        finally:
            loader.dispose()
        for raw in self.doc.problems:
            self.add(raw.path, raw.message, at_key=raw.at_key, where=raw.where)
        data = self.doc.data
        if data is None:
            self.add((), "the file is empty: expected a mapping with registries and rules")
            return False
        if not isinstance(data, dict):
            got = kind_of(data)
            self.add((), f"the top level must be a mapping (registries, rules…), got {got}")
            return False
        return True

    def validate(self) -> Config | None:
        context = LoadContext(
            filename=self.filename,
            base_dir=self.base_dir,
            state_path=default_state_path(self.environ),
            host_name=socket.gethostname(),
        )
        try:
            return _CONFIG.validate_python(self.doc.data, context=context)
        except ValidationError as e:
            errors = e.errors(include_url=False)
            inner = {tuple(err["loc"][:n]) for err in errors for n in range(len(err["loc"]))}
            for err in errors:
                if err["type"] == "too_short" and tuple(err["loc"]) in inner:
                    continue  # a tuple counts only its valid items: its items are the problem
                path, shown = self._locate(tuple(err["loc"]))
                if any(path[: len(b)] == b for b in self.doc.broken):
                    continue  # already reported: a missing variable or a bad ${…}
                unknown = err["type"] in ("extra_forbidden", "unexpected_keyword_argument")
                self.add(path, _error_message(err), at_key=unknown, shown=shown)
            return None

    def cross_check(self) -> None:
        self._not_in_file()
        DocumentChecks(self.doc, self.add, self.base_dir, check_files=self.check_files).run()

    def _not_in_file(self) -> None:
        """Fields the file does not spell (a registry's ``name`` is its key): unknown keys."""
        data = self.doc.data
        if "path" in data:
            self.add(("path",), _unknown_key_message(("path",)), at_key=True)
        registries = data.get("registries")
        for name, reg in registries.items() if isinstance(registries, dict) else ():
            if isinstance(reg, dict) and "name" in reg:
                where = ("registries", name, "name")
                self.add(where, _unknown_key_message(where), at_key=True)


def _display(path: Path) -> str:
    shown = ""
    for seg in path:
        shown += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if shown else seg)
    return shown


def _load(
    text: str,
    filename: str,
    base_dir: str,
    environ: Mapping[str, str] | None,
    check_files: bool,
) -> Config:
    env = os.environ if environ is None else environ
    loader = _Loader(filename, base_dir, env, check_files=check_files)
    config = None
    if loader.parse(text):
        config = loader.validate()
        loader.cross_check()
    if loader.problems or config is None:
        problems = sorted(loader.problems, key=lambda p: (p.line, p.column))
        raise ConfigError(problems)
    return config


def load_config_text(
    text: str,
    *,
    filename: str = "<string>",
    environ: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Config:
    """Validate config ``text`` as if read from ``filename``; relative paths in it are taken
    from the current directory. Raises ``ConfigError`` with every problem found."""
    return _load(text, filename, os.getcwd(), environ, check_files)


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Config:
    """Read, interpolate and validate the config file at ``path``.

    ``environ`` (default ``os.environ``) supplies ``${VAR}``. Files the config names
    (``password_file``, ``ca_file``, ``client_cert``, ``client_key``; relative paths are taken
    from the config file's directory) must exist and be readable unless ``check_files`` is
    false, which is for checking a config meant for another machine. Raises ``ConfigError``
    carrying every problem, each with file, line, column and key path; a file that cannot be
    read is one problem at 1:1.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError([ConfigProblem(filename, 1, 1, "", f"cannot read: {reason}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            [ConfigProblem(filename, 1, 1, "", f"larger than {MAX_FILE_BYTES} bytes")]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(filename, line, 1, "", "not UTF-8 text")]) from None
    base_dir = os.path.dirname(os.path.abspath(filename))
    return _load(text, filename, base_dir, environ, check_files)
