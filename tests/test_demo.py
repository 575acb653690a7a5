"""The README's first command must keep working: the demo, in its self-checking mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_check() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "scripts.demo_run", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "team-a/app:v1.1.0: same digest as dev" in r.stdout
    assert "syncd_images_synced_total" in r.stdout
