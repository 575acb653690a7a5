"""A ``syncd once`` killed (SIGKILL) while writing a big blob into a layout: readers see
only complete images, and the next pass completes the copy and removes the leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.images import image, layer, push
from tests.helpers.proxy import FaultProxy
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw
from tests.layout.conftest import (
    layout_tags,
    run_syncd,
    skopeo_copy,
    skopeo_raw,
    validate_layout,
    write_config,
)

# Over the blob mover's chunked threshold (32 MiB): the upload session takes PATCH chunks.
BIG = 36 * 1024 * 1024


def _partial_blob(layout: Path) -> Path | None:
    tmp = layout / ".syncd-tmp"
    if not tmp.is_dir():
        return None
    for p in tmp.iterdir():
        if p.name.startswith("blob-") and p.stat().st_size > 2 * 1024 * 1024:
            return p
    return None


@pytest.mark.slow
def test_sigkill_mid_blob_leaves_a_valid_layout_and_the_next_pass_completes(
    source: Registry, registries: RegistryFactory, tmp_path: Path
) -> None:
    small = image("crash-small")
    big = image("crash-big", shared=[layer("crash-big-layer", BIG)], layers=0)
    push(source.url, "app", "v0", small)
    oci = tmp_path / "oci"
    layout = oci / "app"
    direct = write_config(
        tmp_path / "direct.yaml",
        {"src": source.url, "disk": f"oci:{oci}"},
        "src",
        ["disk"],
        repositories=["app"],
    )
    assert run_syncd("-c", str(direct), "once").returncode == 0
    push(source.url, "app", "v1", big)

    # Through a slow front the big layer takes seconds to arrive: time to kill mid-write.
    proxy = FaultProxy(source.port, latency=0.005)
    try:
        slow = write_config(
            tmp_path / "slow.yaml",
            {"src": proxy.url, "disk": f"oci:{oci}"},
            "src",
            ["disk"],
            repositories=["app"],
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "-c", str(slow), "once"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while _partial_blob(layout) is None:
                assert proc.poll() is None, "syncd ended before the big blob was half written"
                assert time.monotonic() < deadline, "no partial blob appeared"
                time.sleep(0.01)  # sleep-ok: poll interval of a bounded wait on a file
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(10)
    finally:
        proxy.close()
    assert proc.returncode == -signal.SIGKILL

    # What a reader sees: the old tag, complete; no trace of the new one but a temp file.
    assert set(layout_tags(layout)) == {"v0"}
    assert _partial_blob(layout) is not None
    big_layer = layout / "blobs" / "sha256" / big.layers[0].digest[7:]
    assert not big_layer.exists()
    validate_layout(layout, ["v0"], images=["v0"], strict=True)
    assert skopeo_raw(f"oci:{layout}:v0") == small.raw
    other = registries()
    skopeo_copy(f"oci:{layout}:v0", f"docker://{other.host}/app:v0")
    assert manifest_raw(other.url, "app", "v0") == small.raw

    r = run_syncd("-c", str(direct), "once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert layout_tags(layout) == {"v0": small.digest, "v1": big.digest}
    assert [p.name for p in (layout / ".syncd-tmp").iterdir()] == ["lock"]
    assert big_layer.stat().st_size == len(big.layers[0].data)
    validate_layout(layout, ["v0", "v1"], images=["v0", "v1"], strict=True)
    skopeo_copy(f"oci:{layout}:v1", f"docker://{other.host}/app:v1")
    assert manifest_raw(other.url, "app", "v1") == big.raw


def test_two_processes_writing_one_layout_lose_no_tag(source: Registry, tmp_path: Path) -> None:
    """Two ``syncd once`` at the same time into one repository's layout: the file lock on
    the layout serialises their index.json updates, so every tag of both ends up there."""
    images = {}
    for prefix in ("v", "w"):
        for i in range(20):
            img = image(f"two-{prefix}{i}", layers=1, size=512)
            push(source.url, "app", f"{prefix}{i}", img)
            images[f"{prefix}{i}"] = img.digest
    oci = tmp_path / "oci"
    procs = []
    for prefix in ("v", "w"):
        cfg = write_config(
            tmp_path / f"{prefix}.yaml",
            {"src": source.url, "disk": f"oci:{oci}"},
            "src",
            ["disk"],
            repositories=["app"],
            tags={"include": [f"^{prefix}"]},
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "syncd", "-c", str(cfg), "once"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    assert layout_tags(oci / "app") == images
    validate_layout(oci / "app", sorted(images), images=["v0", "w0"], strict=True)
