"""An ``oci:`` directory: one OCI image layout per repository, ``ROOT/<repository>/``.

Blocking code, called through ``asyncio.to_thread`` by ``LayoutClient``. Reads take
``index.json`` as the only list of tags; writes follow ``syncd.layout.fs``'s crash-safe
order, and ``index.json`` is only ever replaced whole, under the layout's file lock, after
every blob and child manifest its new entry needs is in place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from syncd.errors import InvalidReferenceError, LayoutInvalidError, NotFoundError
from syncd.layout import fs
from syncd.layout.names import REF_NAME, directory_tags
from syncd.manifest import OCI_INDEX
from syncd.reference import validate_repository

# Directories never taken for repositories while walking the root: a layout's own parts.
_NOT_REPOSITORIES = frozenset({"blobs", fs.TMP_DIR})
# A walk of the root stops this deep (repository names have few components).
_MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class _Cached:
    stamp: tuple[int, int, int]
    tags: dict[str, dict[str, Any]]


class LayoutDirectory:
    """The layouts under one ``oci:`` root."""

    def __init__(self, root: str, registry: str) -> None:
        self.root = os.path.abspath(root)
        self.registry = registry
        self._cache: dict[str, _Cached] = {}

    # -- paths -------------------------------------------------------------------------
    def layout(self, repository: str) -> str:
        try:
            validate_repository(repository)
        except InvalidReferenceError as e:
            raise LayoutInvalidError(str(e), registry=self.registry) from None
        return os.path.join(self.root, *repository.split("/"))

    def blob_path(self, repository: str, digest: str) -> str:
        return os.path.join(self.layout(repository), fs.blob_relpath(digest))

    # -- reading -----------------------------------------------------------------------
    def tags(self, repository: str) -> dict[str, dict[str, Any]] | None:
        """Tag → index.json descriptor, or None when there is no layout for the repository.

        A directory that is there but is not a valid layout raises, naming the file.
        """
        layout = self.layout(repository)
        index = os.path.join(layout, fs.INDEX_JSON)
        try:
            st = os.stat(index)
        except FileNotFoundError:
            if not os.path.isdir(layout):
                return None
            if os.path.exists(os.path.join(layout, fs.OCI_LAYOUT)):
                raise LayoutInvalidError(f"{index} is missing", registry=self.registry) from None
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(repository)
        if cached is not None and cached.stamp == stamp:
            return cached.tags
        fs.check_layout(layout)
        doc = fs.read_json(index)
        entries = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise LayoutInvalidError(f"{index} has no 'manifests' list", registry=self.registry)
        tags = directory_tags(entries)
        self._cache[repository] = _Cached(stamp, tags)
        return tags

    def repositories(self) -> list[str]:
        """Every directory under the root that is (or claims to be) a layout."""
        if not os.path.isdir(self.root):
            raise NotFoundError(f"{self.root} is not a directory", registry=self.registry)
        found: list[str] = []

        def walk(path: str, parts: tuple[str, ...]) -> None:
            if len(parts) > _MAX_DEPTH:
                return
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError:
                return
            names = {e.name for e in entries}
            if parts and (fs.OCI_LAYOUT in names or fs.INDEX_JSON in names):
                found.append("/".join(parts))
            for e in entries:
                if e.name in _NOT_REPOSITORIES or e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, (*parts, e.name))

        walk(self.root, ())
        out = []
        for name in found:
            try:
                out.append(validate_repository(name))
            except InvalidReferenceError:
                continue  # a directory whose name no rule could address
        return out

    def blob_size(self, repository: str, digest: str) -> int | None:
        try:
            return os.stat(self.blob_path(repository, digest)).st_size
        except FileNotFoundError:
            return None

    # -- writing -----------------------------------------------------------------------
    def prepare(self, repository: str) -> str:
        """The repository's layout, created if absent; returns its path."""
        layout = self.layout(repository)
        fs.ensure_layout(layout)
        return layout

    def clean(self, repository: str) -> int:
        """Remove what a killed writer left in the repository's layout."""
        layout = self.layout(repository)
        return fs.clean_temp(layout) if os.path.isdir(layout) else 0

    def put_blob_bytes(self, repository: str, digest: str, data: bytes) -> None:
        """Store small content (a manifest) whose digest the caller has computed."""
        final = self.blob_path(repository, digest)
        if os.path.exists(final):
            return
        layout = self.prepare(repository)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fs.write_atomic(layout, final, data)

    def missing(self, repository: str, digests: list[str]) -> list[str]:
        """The ones of ``digests`` the repository's layout does not hold."""
        return [d for d in digests if self.blob_size(repository, d) is None]

    def set_tag(self, repository: str, tag: str, descriptor: dict[str, Any]) -> bool:
        """Point ``tag`` at ``descriptor`` in index.json (replacing the tag's entry in
        place); returns False when it already did, and then writes nothing."""
        layout = self.prepare(repository)
        index = os.path.join(layout, fs.INDEX_JSON)
        entry = {**descriptor, "annotations": {REF_NAME: tag}}
        with fs.layout_lock(layout):
            doc = fs.read_json(index)
            if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
                raise LayoutInvalidError(f"{index} has no 'manifests' list", registry=self.registry)
            entries: list[Any] = doc["manifests"]
            at = [
                i
                for i, e in enumerate(entries)
                if isinstance(e, dict)
                and isinstance(e.get("annotations"), dict)
                and e["annotations"].get(REF_NAME) == tag
            ]
            if at:
                old = entries[at[0]]
                same = all(old.get(k) == entry[k] for k in ("mediaType", "digest", "size"))
                if same and len(at) == 1:
                    return False
                # Keep the other annotations another tool put on the entry.
                entry["annotations"] = {**old["annotations"], REF_NAME: tag}
                entries[at[0]] = entry
                for i in reversed(at[1:]):
                    del entries[i]
            else:
                entries.append(entry)
            doc.setdefault("schemaVersion", 2)
            doc.setdefault("mediaType", OCI_INDEX)
            fs.write_atomic(layout, index, json.dumps(doc, indent=2).encode())
        self._cache.pop(repository, None)
        return True

    def mount(self, repository: str, digest: str, from_repository: str) -> bool:
        """Make a blob of another repository's layout present here; False if it has none."""
        src = self.blob_path(from_repository, digest)
        if not os.path.exists(src):
            return False
        final = self.blob_path(repository, digest)
        if os.path.exists(final):
            return True
        layout = self.prepare(repository)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fs.link_or_copy(src, layout, final, digest)
        return True
