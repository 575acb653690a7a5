"""Read one OCI image layout out of a tar archive without unpacking it.

The tar is scanned once for its member headers (``tarfile``); a blob is then read straight
from the archive file at the member's data offset, so a multi-gigabyte ``docker save``
output costs no extra disk and no more memory than one chunk. Only uncompressed tars can be
read by offset, which is what ``docker save``, ``skopeo copy … oci-archive:`` and ``buildah
push oci-archive:`` write; a compressed one is refused with a message saying so.

The scan is redone when the file's size or modification time changes (a daemon whose
archive is replaced by a newer export).
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import LayoutInvalidError
from syncd.layout.fs import INDEX_JSON, MAX_JSON_BYTES, OCI_LAYOUT
from syncd.layout.names import archive_images

# Symbolic or hard links inside the tar (older ``docker save`` layouts link the legacy
# per-layer files to blobs) are followed at most this many times.
_MAX_LINKS = 8


@dataclass(frozen=True, slots=True)
class Member:
    """Where a file's bytes sit in the archive."""

    offset: int
    size: int


@dataclass(slots=True)
class ArchiveContents:
    """What one scan of the archive found."""

    stamp: tuple[int, int]
    members: dict[str, Member] = field(default_factory=dict)
    # repository -> tag -> index.json descriptor
    images: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def _normal(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


def scan(path: str) -> ArchiveContents:
    """Read the archive's headers, ``oci-layout`` and ``index.json``; raise naming the file."""
    try:
        st = os.stat(path)
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise LayoutInvalidError(f"{path} is missing") from None
    except tarfile.ReadError as e:
        raise LayoutInvalidError(
            f"{path} is not an uncompressed tar archive ({e}); decompress it first"
        ) from None
    except OSError as e:
        raise LayoutInvalidError(f"cannot read {path}: {e.strerror or e}") from None
    out = ArchiveContents(stamp=(st.st_size, st.st_mtime_ns))
    links: dict[str, str] = {}
    try:
        with tar:
            for info in tar:
                name = _normal(info.name)
                if info.isfile():
                    out.members[name] = Member(info.offset_data, info.size)
                elif info.issym():
                    links[name] = _normal(posixpath.join(posixpath.dirname(name), info.linkname))
                elif info.islnk():
                    links[name] = _normal(info.linkname)
    except (tarfile.TarError, OSError) as e:
        raise LayoutInvalidError(f"{path} is not a readable tar archive: {e}") from None
    for name, target in links.items():
        for _ in range(_MAX_LINKS):
            if target in out.members:
                out.members[name] = out.members[target]
                break
            if target not in links:
                break
            target = links[target]
    marker = read_member_json(path, out, OCI_LAYOUT)
    if not isinstance(marker, dict) or not isinstance(marker.get("imageLayoutVersion"), str):
        raise LayoutInvalidError(f"{path}:{OCI_LAYOUT} has no imageLayoutVersion")
    index = read_member_json(path, out, INDEX_JSON)
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise LayoutInvalidError(f"{path}:{INDEX_JSON} has no 'manifests' list")
    out.images = archive_images(entries, path)
    return out


def read_member(path: str, contents: ArchiveContents, name: str, limit: int) -> bytes:
    """The whole of a small member; ``LayoutInvalidError`` naming ``FILE:member``."""
    member = contents.members.get(name)
    if member is None:
        raise LayoutInvalidError(f"{path}:{name} is missing from the archive")
    if member.size > limit:
        raise LayoutInvalidError(f"{path}:{name} is larger than {limit} bytes")
    with open(path, "rb") as f:
        f.seek(member.offset)
        data = f.read(member.size)
    if len(data) != member.size:
        raise LayoutInvalidError(f"{path}:{name} is cut short (the archive is truncated)")
    return data


def read_member_json(path: str, contents: ArchiveContents, name: str) -> Any:
    raw = read_member(path, contents, name, MAX_JSON_BYTES)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise LayoutInvalidError(f"{path}:{name} is not valid JSON: {e}") from None
