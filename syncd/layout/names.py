"""Tags of a layout's ``index.json``, and the images of an archive under repository names.

In an ``oci:`` directory each repository is its own layout, so an index entry's
``org.opencontainers.image.ref.name`` annotation is the tag (image-spec
``annotations.md``; what ``skopeo copy … oci:DIR/repo:tag`` and regclient write).

An ``oci-archive:`` holds one layout for possibly many images of many names, so each entry
is given a repository and a tag, first match wins:

1. ``io.containerd.image.name`` (``docker save`` of Docker 25+ with the containerd image
   store, ``ctr export``): a full reference such as ``docker.io/library/alpine:3.19``;
2. a ``ref.name`` that is itself a reference (``name:tag``, ``host/name:tag``: what
   ``skopeo copy … oci-archive:FILE:name:tag`` and ``buildah push`` write);
3. a ``ref.name`` that is only a tag: the repository is the archive's file name without
   extension (``images.tar`` → ``images``).

The registry host of a full reference is dropped (``docker.io/library/alpine`` →
``library/alpine``): rules name the repository path, as they do for a registry.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from syncd.errors import InvalidReferenceError
from syncd.reference import validate_repository, validate_tag

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def _annotations(entry: Any) -> dict[str, str]:
    ann = entry.get("annotations") if isinstance(entry, dict) else None
    return {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}


def is_tag(name: str) -> bool:
    try:
        validate_tag(name)
    except InvalidReferenceError:
        return False
    return True


def split_reference(ref: str) -> tuple[str, str] | None:
    """``(repository, tag)`` of ``[host/]path[:tag][@digest]``, host dropped; None if no tag
    or not a valid name."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon <= slash:
        return None
    path, tag = name[:colon], name[colon + 1 :]
    parts = path.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    repository = "/".join(parts)
    try:
        validate_repository(repository)
        validate_tag(tag)
    except InvalidReferenceError:
        return None
    return repository, tag


def directory_tags(entries: list[Any]) -> dict[str, dict[str, Any]]:
    """Tag → descriptor of a directory layout's index entries (the first entry of a tag
    wins; entries without a tag-shaped ``ref.name`` are untagged)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = _annotations(entry).get(REF_NAME, "")
        if name and is_tag(name) and name not in out:
            out[name] = entry
    return out


def archive_default_repository(path: str) -> str:
    """The repository of archive entries that carry only a tag: the file's stem."""
    stem = os.path.basename(path)
    for ext in (".tar", ".oci", ".ociarchive"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return stem.lower()


def archive_images(entries: list[Any], archive: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Repository → tag → descriptor of an archive's index entries (see the module doc)."""
    default = archive_default_repository(archive)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in entries:
        ann = _annotations(entry)
        where: tuple[str, str] | None = None
        ref_name = ann.get(REF_NAME, "")
        if ann.get(CONTAINERD_NAME):
            where = split_reference(ann[CONTAINERD_NAME])
        if where is None and ref_name and (":" in ref_name or "/" in ref_name):
            where = split_reference(ref_name)
        if where is None and ref_name and is_tag(ref_name):
            try:
                where = validate_repository(default), ref_name
            except InvalidReferenceError:
                where = None
        if where is None:
            if ref_name or ann.get(CONTAINERD_NAME):
                log.warning(
                    "%s: index entry %s has no usable repository and tag; not listed",
                    archive,
                    ann.get(CONTAINERD_NAME) or ref_name,
                    extra={"event": "layout_entry_skipped"},
                )
            continue
        repository, tag = where
        out.setdefault(repository, {}).setdefault(tag, entry)
    return out
