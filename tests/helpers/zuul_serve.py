"""Runs zuul-registry's own ``main`` with only its filesystem storage driver imported.

Started with the interpreter of zuul-registry's venv by ``tests.helpers.zuul``. Its swift
and s3 drivers import openstacksdk and boto3 at start-up, over a second of CPU per test
registry for drivers these tests never configure; empty stand-ins take their place, so
an accidental ``driver: swift`` fails loudly. Everything that answers HTTP is the
package's own code.
"""

import sys
import types

for _name in ("swift", "s3"):
    _stub = types.ModuleType(f"zuul_registry.{_name}")
    _stub.Driver = None  # type: ignore[attr-defined]
    sys.modules[f"zuul_registry.{_name}"] = _stub

from zuul_registry.main import main  # noqa: E402

sys.exit(main())
