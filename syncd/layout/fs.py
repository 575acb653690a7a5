"""Blocking file operations on one OCI image layout, written so a reader never sees half.

Everything here runs in a worker thread (``asyncio.to_thread``); nothing here knows
manifests or the copy engine.

Crash safety (image-spec ``image-layout.md``: a layout is ``oci-layout``, ``index.json``
and ``blobs/<alg>/<encoded>``): a file only appears under its final name by ``rename``
after its bytes are fsynced (and, for a blob, verified against its digest), and the
directory is fsynced after the rename. Work in progress lives in ``.syncd-tmp/`` of the
layout, each file held under an exclusive ``flock`` while its writer lives, so the next
process can tell an abandoned file (lock free: the writer died) from one being written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

from syncd.errors import LayoutInvalidError

OCI_LAYOUT = "oci-layout"
INDEX_JSON = "index.json"
LAYOUT_VERSION = "1.0.0"
TMP_DIR = ".syncd-tmp"
LOCK_FILE = "lock"
# The digest algorithms of image-spec ``descriptor.md`` "Registered algorithms".
_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
# index.json and oci-layout are metadata, never this large; a bound keeps a hostile file
# from being read whole into memory.
MAX_JSON_BYTES = 16 * 1024 * 1024
READ_CHUNK = 1024 * 1024


def blob_relpath(digest: str) -> str:
    """``blobs/<alg>/<hex>`` for a well-formed digest; anything else (``../``) is refused."""
    if not _DIGEST_RE.match(digest):
        raise LayoutInvalidError(f"not a digest a layout can hold: {digest!r}")
    alg, _, hexpart = digest.partition(":")
    return os.path.join("blobs", alg, hexpart)


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str) -> Any:
    """A small JSON file, or ``LayoutInvalidError`` naming it (missing, too big, not JSON)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise LayoutInvalidError(f"{path} is missing") from None
    except OSError as e:
        raise LayoutInvalidError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise LayoutInvalidError(f"{path} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise LayoutInvalidError(f"{path} is not valid JSON: {e}") from None


@dataclass(slots=True)
class TempFile:
    """A file under ``.syncd-tmp/`` held open and locked by this process."""

    path: str
    fd: int

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def commit(self, final: str) -> None:
        """fsync, rename to ``final``, fsync its directory, close."""
        os.fsync(self.fd)
        os.rename(self.path, final)
        self.close()
        fsync_dir(os.path.dirname(final))


def temp_file(layout: str, prefix: str) -> TempFile:
    """A fresh locked file in ``layout/.syncd-tmp``.

    The lock is taken right after creation; a cleaner in another process may have taken
    and removed the name in between, so the name is checked to still be this file.
    """
    tmpdir = os.path.join(layout, TMP_DIR)
    os.makedirs(tmpdir, exist_ok=True)
    for _ in range(8):
        path = os.path.join(tmpdir, f"{prefix}-{uuid.uuid4().hex}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return TempFile(path, fd)
        except FileNotFoundError:
            pass
        os.close(fd)
    raise LayoutInvalidError(f"cannot create a temporary file in {tmpdir}")


def write_atomic(layout: str, final: str, data: bytes) -> None:
    """``final`` holds exactly ``data`` or is as it was: temp file, fsync, rename, fsync dir."""
    tmp = temp_file(layout, os.path.basename(final))
    try:
        tmp.write(data)
        tmp.commit(final)
    except BaseException:
        tmp.discard()
        raise


def clean_temp(layout: str) -> int:
    """Remove the temporary files no live writer holds (left by a killed process).

    A read-only layout (a source on write-protected media) is left alone.
    """
    tmpdir = os.path.join(layout, TMP_DIR)
    try:
        names = os.listdir(tmpdir)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name == LOCK_FILE:
            continue
        path = os.path.join(tmpdir, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def layout_lock(layout: str) -> Any:
    """An exclusive ``flock`` on the layout, for index.json read-modify-write: two syncd
    processes writing one layout (two daemons, or a daemon and a ``once``) then take turns
    instead of losing each other's tags."""
    tmpdir = os.path.join(layout, TMP_DIR)
    os.makedirs(tmpdir, exist_ok=True)
    fd = os.open(os.path.join(tmpdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_layout(layout: str) -> None:
    """Create an empty layout (``blobs/sha256``, ``index.json``, then ``oci-layout``: a
    reader that finds the marker finds the rest) where parts of one are missing."""
    marker = os.path.join(layout, OCI_LAYOUT)
    if os.path.exists(marker):
        return
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    index = os.path.join(layout, INDEX_JSON)
    if not os.path.exists(index):
        empty = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }
        write_atomic(layout, index, json.dumps(empty, indent=2).encode())
    write_atomic(layout, marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
    fsync_dir(os.path.dirname(layout))


def check_layout(layout: str) -> None:
    """Raise naming the file unless ``layout`` has a usable ``oci-layout`` marker."""
    path = os.path.join(layout, OCI_LAYOUT)
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("imageLayoutVersion"), str):
        raise LayoutInvalidError(f"{path} has no imageLayoutVersion")


def link_or_copy(src: str, layout: str, final: str, digest: str) -> None:
    """Put the blob at ``src`` (another layout) under ``final``: a hard link, which stores
    it once on disk, or, across file systems, a verified copy."""
    try:
        os.link(src, final)
    except FileExistsError:
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        tmp = temp_file(layout, "blob")
        try:
            h = hashlib.new(digest.partition(":")[0])
            with open(src, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    h.update(chunk)
                    tmp.write(chunk)
            if f"{h.name}:{h.hexdigest()}" != digest:
                raise LayoutInvalidError(f"{src} does not match its digest {digest}") from None
            tmp.commit(final)
        except BaseException:
            tmp.discard()
            raise
        return
    fsync_dir(os.path.dirname(final))
