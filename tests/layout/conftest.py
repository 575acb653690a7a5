"""OCI image layouts in tests: run ``syncd`` as a process, check layouts with independent
tools (skopeo, oci-image-tool, umoci), build archives the way ``docker save`` lays them out."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.images import Image, Index

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/bootstrap installs it)")
    return path


def run_syncd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def write_config(
    path: Path, registries: dict[str, str], source: str, targets: list[str], **rule: Any
) -> Path:
    """A config of one rule ``r``; ``registries`` maps names to urls."""
    doc = {
        "registries": {name: {"url": url} for name, url in registries.items()},
        "defaults": {"retries": 2},
        "rules": [{"name": "r", "source": source, "targets": targets, **rule}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def index_json(layout: Path) -> dict[str, Any]:
    return json.loads((layout / "index.json").read_text())  # type: ignore[no-any-return]


def layout_tags(layout: Path) -> dict[str, str]:
    """Tag -> digest of a layout's index.json."""
    out = {}
    for e in index_json(layout)["manifests"]:
        name = (e.get("annotations") or {}).get(REF_NAME)
        if name:
            out[name] = e["digest"]
    return out


def validate_layout(layout: Path, tags: list[str], *, images: list[str], strict: bool) -> None:
    """Independent checks of a layout: umoci lists exactly ``tags`` and reads each of
    ``images`` (single-platform image manifests: umoci 0.4 calls an index tag ambiguous);
    with ``strict``, oci-image-tool validates the whole layout.

    oci-image-tool 1.0.0-rc1 predates artifacts and refuses their layer media types, so a
    layout holding referrers is checked by umoci and skopeo only (``strict=False``).
    """
    umoci = need("umoci")
    r = subprocess.run(
        [umoci, "ls", "--layout", str(layout)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(tags)
    for tag in images:
        r = subprocess.run(
            [umoci, "stat", "--image", f"{layout}:{tag}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    if strict:
        r = subprocess.run(
            [need("oci-image-tool"), "validate", "--type", "image", str(layout)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and "Validation succeeded" in r.stdout, r.stdout + r.stderr


def skopeo_raw(ref: str) -> bytes:
    r = subprocess.run(
        [need("skopeo"), "inspect", "--raw", "--tls-verify=false", ref],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def skopeo_copy(src: str, dst: str) -> None:
    r = subprocess.run(
        [
            need("skopeo"),
            "copy",
            "-q",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            src,
            dst,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def docker_save_archive(
    path: Path, images: list[tuple[str, str, Image | Index]], *, leave_out: Index | None = None
) -> Path:
    """A tar laid out as ``docker save`` of Docker 25+ writes it: ``oci-layout``,
    ``index.json`` whose entries carry ``io.containerd.image.name`` (the full name) and
    ``ref.name`` (the tag), ``blobs/sha256/``, and the legacy ``manifest.json``.

    ``images``: (full name such as ``docker.io/library/app``, tag, image or index).
    ``leave_out``: an index whose children after the first are left out (manifests and
    blobs), as Docker's containerd store saves only the platforms pulled locally.
    """
    blobs: dict[str, bytes] = {}
    entries = []
    legacy = []
    for name, tag, img in images:
        for b in img.blobs:
            blobs[b.digest] = b.data
        if isinstance(img, Index):
            for child, _ in img.children:
                blobs[child.digest] = child.raw
        blobs[img.digest] = img.raw
        entries.append(
            {
                "mediaType": img.media_type,
                "digest": img.digest,
                "size": len(img.raw),
                "annotations": {CONTAINERD_NAME: f"{name}:{tag}", REF_NAME: tag},
            }
        )
        if isinstance(img, Image):
            legacy.append(
                {
                    "Config": f"blobs/sha256/{img.config.digest[7:]}",
                    "RepoTags": [f"{name.removeprefix('docker.io/library/')}:{tag}"],
                    "Layers": [f"blobs/sha256/{b.digest[7:]}" for b in img.layers],
                }
            )
    if leave_out is not None:
        for child, _ in leave_out.children[1:]:
            for d in [child.digest, *(b.digest for b in child.blobs)]:
                blobs.pop(d, None)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    index["manifests"] = entries  # type: ignore[assignment]
    with tarfile.open(path, "w") as tar:
        for digest, data in sorted(blobs.items()):
            _add(tar, f"blobs/sha256/{digest[7:]}", data)
        _add(tar, "index.json", json.dumps(index).encode())
        _add(tar, "manifest.json", json.dumps(legacy).encode())
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    return path


def tar_layout(layout: Path, path: Path) -> Path:
    """A tar of one layout directory (what ``oci-archive:`` means), made with tarfile."""
    with tarfile.open(path, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / name, arcname=name)
    return path
