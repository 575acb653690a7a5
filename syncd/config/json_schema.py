"""The JSON Schema of the config file, for editors (YAML language servers) and CI.

Generated from ``config.schema``, the declaration ``syncd validate`` checks a file against,
so it cannot drift from what is accepted. It checks the shape (keys, types, one-or-many
lists, durations written as ``5m`` or seconds); value checks that need code (regexes compile,
registry names that rules refer to, files that exist) stay with ``syncd validate``.
``${VAR}`` is expanded only when the file is loaded, so to the schema it is a string.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from syncd.config.schema import NOT_IN_FILE, Config
from syncd.config.values import REGISTRY_NAME_RE

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a syncd config file."""
    schema = TypeAdapter(Config).json_schema(mode="validation")
    # Fields the file does not spell (a registry's name is its key, the file has no path).
    for name, hidden in NOT_IN_FILE.items():
        found = schema if name == "Config" else schema["$defs"][name]
        for key in hidden:
            del found["properties"][key]
            found["required"] = [k for k in found.get("required", []) if k != key]
    schema["properties"]["registries"]["propertyNames"] = {"pattern": REGISTRY_NAME_RE.pattern}
    return {
        "$schema": DIALECT,
        **schema,
        "title": "syncd configuration",
        "description": "The config file of syncd (syncd -c FILE); reference: docs/config.md.",
    }
