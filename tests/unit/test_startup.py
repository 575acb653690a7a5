"""What a one-shot command pays before its first request (issue 9: `once` in CI)."""

from __future__ import annotations

import json
import subprocess
import sys

# Loaded only by the paths that use them: `run` and `once --listen` (metrics and the HTTP
# server), rules with `semver:` or `schedule:`.
LAZY = ["prometheus_client", "syncd.metrics", "syncd.server", "syncd.daemon.lifecycle"]
LAZY += ["semantic_version", "croniter"]


def test_importing_the_cli_leaves_the_daemon_stack_unloaded() -> None:
    probe = (
        f"import json, sys, syncd.cli; print(json.dumps([m for m in {LAZY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
