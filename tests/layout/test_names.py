"""How index.json entries become tags (directories) and repository:tag (archives)."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.layout.names import (
    archive_default_repository,
    archive_images,
    directory_tags,
    split_reference,
)

REF = "org.opencontainers.image.ref.name"
CTR = "io.containerd.image.name"


def entry(digest: str, **annotations: str) -> dict[str, Any]:
    ann = {REF if k == "ref" else CTR: v for k, v in annotations.items()}
    return {"mediaType": "m", "digest": digest, "size": 1, "annotations": ann}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("docker.io/library/alpine:3.19", ("library/alpine", "3.19")),
        ("ghcr.io/org/tool:1.0", ("org/tool", "1.0")),
        ("localhost/app:v1", ("app", "v1")),
        ("127.0.0.1:5000/team/app:v1", ("team/app", "v1")),
        ("team/app:v1", ("team/app", "v1")),
        ("app:v1", ("app", "v1")),
        ("example.com/app:v1@sha256:" + "a" * 64, ("app", "v1")),
        ("example.com:5000/app", None),  # no tag
        ("Bad/App:v1", None),
        ("app:", None),
    ],
)
def test_split_reference(ref: str, expected: tuple[str, str] | None) -> None:
    assert split_reference(ref) == expected


def test_directory_tags_take_tag_shaped_ref_names_first_wins() -> None:
    entries = [
        entry("sha256:1", ref="v1"),
        entry("sha256:2", ref="v1"),
        entry("sha256:3", ref="name:v2"),  # skopeo oci:DIR:name:v2 — not a tag
        entry("sha256:4"),
        "not an object",
    ]
    tags = directory_tags(entries)
    assert list(tags) == ["v1"] and tags["v1"]["digest"] == "sha256:1"


def test_archive_names_containerd_then_reference_then_file_name() -> None:
    entries = [
        entry("sha256:1", ctr="docker.io/library/alpine:3.19", ref="3.19"),
        entry("sha256:2", ref="example.com/team/app:v2"),
        entry("sha256:3", ref="latest"),
        entry("sha256:4", ref="!!"),
        entry("sha256:5"),
    ]
    images = archive_images(entries, "/srv/in/My-Images.tar")
    assert {r: {t: e["digest"] for t, e in tags.items()} for r, tags in images.items()} == {
        "library/alpine": {"3.19": "sha256:1"},
        "team/app": {"v2": "sha256:2"},
        "my-images": {"latest": "sha256:3"},
    }
    assert archive_default_repository("x/export.oci") == "export"
