"""registry → ``oci:`` directory → registry, with ``syncd once`` as a process: digests of
every tag, index and referrer unchanged; independent tools read and validate the layout."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw, tags
from tests.layout.conftest import (
    layout_tags,
    run_syncd,
    skopeo_copy,
    skopeo_raw,
    validate_layout,
    write_config,
)
from tests.referrers.conftest import SBOM_TYPE, artifact, attach, cosign_signature, fallback_tag


def test_registry_to_layout_to_registry_keeps_every_digest(
    registries: RegistryFactory, tmp_path: Path
) -> None:
    src, back, third = registries(), registries(), registries()
    base = layer("rt-base", 4096)
    app = image("rt-app", shared=[base])
    idx = multiarch("rt-multi")
    push(src.url, "team/app", "v1", app)
    push(src.url, "team/app", "v2", idx)
    push(src.url, "team/app", "latest", app)
    push(src.url, "tool", "1.0", image("rt-tool", shared=[base]))
    sbom = artifact(app, SBOM_TYPE, "sbom of app")
    attach(src, "team/app", sbom)
    sig = cosign_signature(src, "team/app", idx, "rt")
    oci = tmp_path / "media" / "oci"

    out = write_config(
        tmp_path / "out.yaml",
        {"src": src.url, "disk": f"oci:{oci}"},
        "src",
        ["disk"],
        repositories=["**"],
    )
    r = run_syncd("-c", str(out), "once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failed=0" in r.stdout.splitlines()[-1]

    layout = oci / "team" / "app"
    want = ["latest", "v1", "v2", fallback_tag(app.digest), fallback_tag(idx.digest) + ".sig"]
    assert sorted(layout_tags(layout)) == sorted(want)
    for tag in want:
        assert layout_tags(layout)[tag] == manifest_digest(src, "team/app", tag)
    # Children of the index and the untagged referrer are blobs of the layout.
    for digest in [c.digest for c, _ in idx.children] + [sbom.digest]:
        assert (layout / "blobs" / "sha256" / digest[7:]).is_file()
    # Blobs shared by images of one repository are stored once; across repositories
    # (team/app and tool share `base`) they are hard links of one file.
    shared_app = layout / "blobs" / "sha256" / base.digest[7:]
    shared_tool = oci / "tool" / "blobs" / "sha256" / base.digest[7:]
    assert os.stat(shared_app).st_ino == os.stat(shared_tool).st_ino
    validate_layout(layout, want, images=["v1", "latest"], strict=False)
    validate_layout(oci / "tool", ["1.0"], images=["1.0"], strict=True)
    # An independent reader: skopeo sees the exact bytes and copies the images onward,
    # checking each blob against its digest (skopeo 1.9 cannot copy an index of
    # artifacts with digests preserved; syncd's own copy back checks those below).
    assert skopeo_raw(f"oci:{layout}:v2") == idx.raw
    for tag in ("v1", "v2", "latest"):
        skopeo_copy(f"oci:{layout}:{tag}", f"docker://{third.host}/team/app:{tag}")
        assert manifest_raw(third.url, "team/app", tag) == manifest_raw(src.url, "team/app", tag)

    back_cfg = write_config(
        tmp_path / "in.yaml",
        {"disk": f"oci:{oci}", "back": back.url},
        "disk",
        ["back"],
        repositories=["team/*", "tool"],
    )
    r = run_syncd("-c", str(back_cfg), "once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert tags(back.url, "team/app") == sorted(want)
    for tag in want:
        assert manifest_raw(back.url, "team/app", tag) == manifest_raw(src.url, "team/app", tag)
    for digest in [sbom.digest, sig.digest, *(c.digest for c, _ in idx.children)]:
        assert manifest_raw(back.url, "team/app", digest) == manifest_raw(
            src.url, "team/app", digest
        )
    assert manifest_raw(back.url, "tool", "1.0") == manifest_raw(src.url, "tool", "1.0")


def manifest_digest(reg: Registry, repo: str, ref: str) -> str:
    raw = manifest_raw(reg.url, repo, ref)
    assert raw is not None
    return "sha256:" + hashlib.sha256(raw).hexdigest()
