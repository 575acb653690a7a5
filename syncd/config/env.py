"""``${VAR}`` in the config file: values taken from the environment.

``${NAME}`` is replaced by the variable's value; ``$${`` stands for a literal ``${``. The
position loader (``config.yaml_positions``) calls this for every scalar holding ``${`` and
remembers that the value came from the environment, so that no message ever echoes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN_RE = re.compile(r"\$\$\{|\$\{")


def interpolate(text: str, environ: Mapping[str, str]) -> tuple[str, bool, list[str]]:
    """``text`` expanded, whether a variable was used, and the problems found (a value with
    problems is not used: its own validation would only repeat them)."""
    out: list[str] = []
    problems: list[str] = []
    pos = 0
    used_env = False
    while (m := _TOKEN_RE.search(text, pos)) is not None:
        out.append(text[pos : m.start()])
        if m.group() == "$${":
            out.append("${")
            pos = m.end()
            continue
        close = text.find("}", m.end())
        if close < 0:
            problems.append("unterminated '${': close it with '}', or write '$${'")
            out.append(text[m.start() :])
            pos = len(text)
            break
        name = text[m.end() : close]
        pos = close + 1
        if not _NAME_RE.match(name):
            # The name is not echoed: in a password, "${...}" may be part of the secret.
            problems.append(
                "invalid variable name in '${…}': letters, digits and '_', not starting "
                "with a digit (write '$${' for a literal '${')"
            )
            continue
        value = environ.get(name)
        if value is None:
            problems.append(f"environment variable {name} is not set")
            continue
        used_env = True
        out.append(value)
    out.append(text[pos:])
    return "".join(out), used_env, problems
