"""The JSON Schema of the config file, for editors (YAML language servers) and CI.

Generated from the pydantic models that validate the file (``config.load``), so it cannot
drift from what ``syncd validate`` accepts. It checks the shape (keys, types, one-or-many
lists, durations written as ``5m`` or seconds); value checks that need code (regexes compile,
registry names that rules refer to, files that exist) stay with ``syncd validate``.
``${VAR}`` is expanded only when the file is loaded, so to the schema it is a string.
"""

from __future__ import annotations

from typing import Any

from syncd.config.load import REGISTRY_NAME_RE, ConfigModel

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a syncd config file."""
    schema = ConfigModel.model_json_schema(mode="validation")
    schema["properties"]["registries"]["propertyNames"] = {"pattern": REGISTRY_NAME_RE.pattern}
    return {
        "$schema": DIALECT,
        **schema,
        "title": "syncd configuration",
        "description": "The config file of syncd (syncd -c FILE); reference: docs/config.md.",
    }
