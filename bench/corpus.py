"""Deterministic benchmark corpora, written as OCI layouts and pushed with a plain HTTP client.

Three corpora:

* ``main``: a dozen repositories with five tags each (four images plus ``latest``), built on
  three shared base stacks so the same base layers live in several repositories; four of the
  repositories are multi-platform indexes (linux/amd64 + linux/arm64). About 530 MB of
  incompressible layer bytes at ``--scale 1``; ``--scale 0.1`` makes a ~55 MB quick corpus.
  One extra image (``app01:1.4``) is built but not seeded: the incremental scenario pushes it.
* ``many``: thousands of tags over a few tiny images per repository (tags share manifests,
  so seeding is one manifest PUT per tag and nothing else).
* ``big``: one image with a single large layer, for the memory scenario.

Layers are gzip streams (stored blocks, so still incompressible) of a one-file tar whose
content comes from ``random.Random(seed)``: the same seed gives the same digest on every
machine. Blobs are generated chunk by chunk straight to disk and uploaded from the file with a
single monolithic PUT, so nothing holds a whole layer in memory.

Run ``python -m bench.corpus --scale 0.1 --push http://127.0.0.1:5000`` to build and seed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CORPUS_VERSION = 3
MB = 1024 * 1024
CHUNK = 1 * MB
OUT = Path(__file__).resolve().parent / "out"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PLATFORMS = ("linux/amd64", "linux/arm64")
SEEDER_AGENT = "syncd-bench-seeder/1"


# -- the plan: what a corpus contains --------------------------------------------------------
@dataclass
class Repo:
    """One repository: tag → manifest digest, and what must be pushed (children first)."""

    tags: dict[str, str] = field(default_factory=dict)
    manifests: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)

    def add_manifest(self, digest: str) -> None:
        if digest not in self.manifests:
            self.manifests.append(digest)

    def add_blobs(self, digests: Iterable[str]) -> None:
        for d in digests:
            if d not in self.blobs:
                self.blobs.append(d)


@dataclass
class Corpus:
    """A built corpus: an OCI layout under ``root`` plus the push plan in ``corpus.json``."""

    root: Path
    name: str
    repos: dict[str, Repo]
    media_types: dict[str, str]  # manifest digest → media type
    sizes: dict[str, int]  # blob digest → size
    extra: dict[str, Repo] = field(default_factory=dict)  # built, not seeded

    # -- files ---------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    # -- figures -------------------------------------------------------------------------
    @property
    def tag_count(self) -> int:
        return sum(len(r.tags) for r in self.repos.values())

    def unique_blobs(self, repos: Iterable[Repo] | None = None) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.repos.values() if repos is None else repos:
            for d in r.blobs:
                seen.setdefault(d, None)
        return list(seen)

    def unique_bytes(self, repos: Iterable[Repo] | None = None) -> int:
        return sum(self.sizes[d] for d in self.unique_blobs(repos))

    def blob_placements(self) -> int:
        """Blob copies a target needs: each blob once per repository that references it."""
        return sum(len(r.blobs) for r in self.repos.values())

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "repositories": len(self.repos),
            "tags": self.tag_count,
            "manifests": sum(len(r.manifests) for r in self.repos.values()),
            "unique_blobs": len(self.unique_blobs()),
            "blob_placements": self.blob_placements(),
            "unique_bytes": self.unique_bytes(),
        }

    # -- persistence ---------------------------------------------------------------------
    def save(self, meta: dict[str, Any]) -> None:
        doc = {
            "meta": meta,
            "name": self.name,
            "repos": {k: vars(v) for k, v in self.repos.items()},
            "extra": {k: vars(v) for k, v in self.extra.items()},
            "media_types": self.media_types,
            "sizes": self.sizes,
        }
        _write_layout_index(self)
        (self.root / "corpus.json").write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, root: Path, meta: dict[str, Any]) -> Corpus | None:
        """The corpus under ``root`` if it was built with exactly ``meta``; else None."""
        try:
            doc = json.loads((root / "corpus.json").read_text())
        except (OSError, ValueError):
            return None
        if doc.get("meta") != meta:
            return None
        corpus = cls(
            root,
            doc["name"],
            {k: Repo(**v) for k, v in doc["repos"].items()},
            doc["media_types"],
            doc["sizes"],
            {k: Repo(**v) for k, v in doc["extra"].items()},
        )
        # A half-deleted cache is rebuilt rather than trusted.
        if any(not corpus.path(d).exists() for d in corpus.sizes):
            return None
        return corpus


def _write_layout_index(corpus: Corpus) -> None:
    """``oci-layout`` + ``index.json`` so ``skopeo copy oci:ROOT:repo_tag`` also works."""
    manifests = []
    for repo_name, repo in [*corpus.repos.items(), *corpus.extra.items()]:
        for tag, digest in repo.tags.items():
            manifests.append(
                {
                    "mediaType": corpus.media_types[digest],
                    "digest": digest,
                    "size": corpus.path(digest).stat().st_size,
                    "annotations": {"org.opencontainers.image.ref.name": f"{repo_name}_{tag}"},
                }
            )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    (corpus.root / "index.json").write_text(json.dumps(index))
    (corpus.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


# -- blob generation ------------------------------------------------------------------------
class Builder:
    """Writes blobs into ``root/blobs/sha256`` and remembers sizes and media types."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.sizes: dict[str, int] = {}
        self.media_types: dict[str, str] = {}
        self._layers: dict[tuple[str, int], tuple[str, str]] = {}

    def _store(self, digest: str, tmp: Path) -> None:
        tmp.replace(self.blob_dir / digest.split(":", 1)[1])

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        tmp = self.blob_dir / f".tmp-{os.getpid()}"
        tmp.write_bytes(data)
        self._store(digest, tmp)
        self.sizes[digest] = len(data)
        return digest

    def layer(self, seed: str, size: int) -> tuple[str, str]:
        """A gzip'd one-file tar of ``size`` random bytes; returns (digest, diff_id)."""
        key = (seed, size)
        if key in self._layers:
            return self._layers[key]
        rnd = random.Random(seed)
        info = tarfile.TarInfo(f"data/{hashlib.sha256(seed.encode()).hexdigest()[:16]}")
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        # Level 0 (stored blocks): a valid gzip stream at generation speed; the payload is
        # random, so real compression would not shrink it anyway.
        gz = zlib.compressobj(0, zlib.DEFLATED, 31)
        tar_hash = hashlib.sha256()
        blob_hash = hashlib.sha256()
        tmp = self.blob_dir / f".tmp-{os.getpid()}"
        written = 0
        with tmp.open("wb") as f:

            def emit(raw: bytes) -> None:
                nonlocal written
                tar_hash.update(raw)
                out = gz.compress(raw)
                if out:
                    blob_hash.update(out)
                    f.write(out)
                    written += len(out)

            emit(header)
            left = size
            while left > 0:
                n = min(CHUNK, left)
                emit(rnd.randbytes(n))
                left -= n
            emit(b"\0" * ((-size) % 512) + b"\0" * 1024)
            tail = gz.flush()
            blob_hash.update(tail)
            f.write(tail)
            written += len(tail)
        digest = "sha256:" + blob_hash.hexdigest()
        self._store(digest, tmp)
        self.sizes[digest] = written
        result = (digest, "sha256:" + tar_hash.hexdigest())
        self._layers[key] = result
        return result

    def image(self, name: str, platform: str, layers: list[tuple[str, str]]) -> str:
        """Config + manifest for ``layers``; returns the manifest digest."""
        os_, arch = platform.split("/")
        config = {
            "architecture": arch,
            "os": os_,
            "config": {"Env": [f"IMAGE={name}"], "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
        }
        cfg_raw = json.dumps(config, sort_keys=True).encode()
        cfg = self.put_bytes(cfg_raw)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": len(cfg_raw)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": d, "size": self.sizes[d]} for d, _ in layers
            ],
        }
        digest = self.put_bytes(json.dumps(manifest, indent=2).encode())
        self.media_types[digest] = OCI_MANIFEST
        return digest

    def index(self, children: list[tuple[str, str]]) -> str:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": d,
                    "size": self.sizes[d],
                    "platform": dict(zip(("os", "architecture"), p.split("/"), strict=True)),
                }
                for d, p in children
            ],
        }
        digest = self.put_bytes(json.dumps(doc, indent=2).encode())
        self.media_types[digest] = OCI_INDEX
        return digest

    def blobs_of(self, manifest: str) -> list[str]:
        """Config and layers of an image, or of every child of an index."""
        doc = json.loads((self.blob_dir / manifest.split(":", 1)[1]).read_bytes())
        if doc.get("mediaType") == OCI_INDEX:
            return [b for m in doc["manifests"] for b in self.blobs_of(m["digest"])]
        return [doc["config"]["digest"], *(lay["digest"] for lay in doc["layers"])]

    def children_of(self, manifest: str) -> list[str]:
        doc = json.loads((self.blob_dir / manifest.split(":", 1)[1]).read_bytes())
        return [m["digest"] for m in doc.get("manifests", [])]

    def tag(self, repo: Repo, tag: str, manifest: str) -> None:
        repo.add_blobs(self.blobs_of(manifest))
        for child in self.children_of(manifest):
            repo.add_manifest(child)
        repo.add_manifest(manifest)
        repo.tags[tag] = manifest


def _sz(mb: float, scale: float) -> int:
    return max(4096, int(mb * MB * scale))


def build_main(scale: float = 1.0, root: Path | None = None) -> Corpus:
    """The dozen-repository corpus (cached under bench/out by scale)."""
    root = root or OUT / f"corpus-main-{scale:g}"
    meta = {"version": CORPUS_VERSION, "kind": "main", "scale": scale}
    cached = Corpus.load(root, meta)
    if cached:
        return cached
    b = Builder(root)
    stacks = {
        (s, p): [b.layer(f"base-{s}-{p}-{i}", _sz(mb, scale)) for i, mb in enumerate((20, 8))]
        for s in "abc"
        for p in PLATFORMS
        if p == "linux/amd64" or s == "a"
    }
    repos: dict[str, Repo] = {}
    extra: dict[str, Repo] = {}
    for i in range(12):
        name = f"app{i + 1:02d}"
        stack = "abc"[i % 3]
        plats = PLATFORMS if i % 3 == 0 else PLATFORMS[:1]
        deps = {p: b.layer(f"deps-{name}-{p}", _sz(10, scale)) for p in plats}
        repo = repos[name] = Repo()

        def make(version: str, *, name: str = name, stack: str = stack, plats: Any = plats,
                 deps: Any = deps) -> str:  # fmt: skip
            kids = []
            for p in plats:
                app = b.layer(f"app-{name}-{version}-{p}", _sz(4, scale))
                kids.append((b.image(f"{name}:{version}", p, [*stacks[stack, p], deps[p], app]), p))
            return kids[0][0] if len(kids) == 1 else b.index(kids)

        for v in ("1.0", "1.1", "1.2", "1.3"):
            b.tag(repo, v, make(v))
        b.tag(repo, "latest", repo.tags["1.3"])
        if name == "app01":
            b.tag(extra.setdefault(name, Repo()), "1.4", make("1.4"))
    corpus = Corpus(root, "main", repos, b.media_types, b.sizes, extra)
    corpus.save(meta)
    return corpus


def build_many(tags: int = 5000, repos: int = 5, images: int = 10) -> Corpus:
    """``tags`` tags spread over ``repos`` repositories, each over ``images`` tiny images.

    Every fifth image is a two-platform index, so index handling (which skopeo re-pushes on
    every pass) shows up in the no-op figures too.
    """
    root = OUT / f"corpus-many-{tags}"
    meta = {"version": CORPUS_VERSION, "kind": "many", "tags": tags, "repos": repos}
    cached = Corpus.load(root, meta)
    if cached:
        return cached
    b = Builder(root)
    out: dict[str, Repo] = {}
    per_repo = [tags // repos + (1 if r < tags % repos else 0) for r in range(repos)]
    for r, count in enumerate(per_repo):
        name = f"many{r:02d}"
        repo = out[name] = Repo()
        digests = []
        for j in range(images):
            plats = PLATFORMS if j % 5 == 4 else PLATFORMS[:1]
            kids = [
                (b.image(f"{name}-{j}", p, [b.layer(f"tiny-{name}-{j}-{p}", 1024)]), p)
                for p in plats
            ]
            digests.append(kids[0][0] if len(kids) == 1 else b.index(kids))
        for t in range(count):
            b.tag(repo, f"t{t:05d}", digests[t % images])
    corpus = Corpus(root, "many", out, b.media_types, b.sizes)
    corpus.save(meta)
    return corpus


def build_big(size_mb: int = 1024) -> Corpus:
    """One repository ``big`` with one image whose single layer is ``size_mb`` MiB."""
    root = OUT / f"corpus-big-{size_mb}"
    meta = {"version": CORPUS_VERSION, "kind": "big", "size_mb": size_mb}
    cached = Corpus.load(root, meta)
    if cached:
        return cached
    b = Builder(root)
    repo = Repo()
    b.tag(repo, "1.0", b.image("big", "linux/amd64", [b.layer("big-layer", size_mb * MB)]))
    corpus = Corpus(root, "big", {"big": repo}, b.media_types, b.sizes)
    corpus.save(meta)
    return corpus


# -- pushing ------------------------------------------------------------------------------
class Pusher:
    """Seeds a registry from a corpus with plain HTTP: one monolithic PUT per blob.

    A blob already pushed to another repository of the same registry is mounted instead,
    which is what keeps seeding the shared base layers cheap.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, corpus: Corpus) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.corpus = corpus
        self.where: dict[str, str] = {}  # blob digest → a repository that has it
        self._locks: dict[str, asyncio.Lock] = {}

    async def blob(self, repo: str, digest: str) -> None:
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            home = self.where.get(digest)
            if home == repo:
                return
            if home is not None:
                async with self.session.post(
                    f"{self.url}/v2/{repo}/blobs/uploads/",
                    params={"mount": digest, "from": home},
                ) as resp:
                    if resp.status == 201:
                        return
                    location = resp.headers["Location"]
            else:
                async with self.session.post(f"{self.url}/v2/{repo}/blobs/uploads/") as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"POST upload {repo}: {resp.status}")
                    location = resp.headers["Location"]
            await upload_put(self.session, self.url, location, self.corpus.path(digest), digest)
            self.where.setdefault(digest, repo)

    async def manifest(self, repo: str, ref: str, digest: str) -> None:
        async with self.session.put(
            f"{self.url}/v2/{repo}/manifests/{ref}",
            data=self.corpus.read(digest),
            headers={"Content-Type": self.corpus.media_types[digest]},
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"PUT manifest {repo}:{ref}: {resp.status} {await resp.text()}")

    async def repo(self, name: str, repo: Repo, sem: asyncio.Semaphore) -> None:
        async def limited(coro: Any) -> None:
            async with sem:
                await coro

        await asyncio.gather(*(limited(self.blob(name, d)) for d in repo.blobs))
        # Children before the index that lists them (distribution 2.8 insists).
        for digest in repo.manifests:
            await limited(self.manifest(name, digest, digest))
        await asyncio.gather(
            *(limited(self.manifest(name, tag, d)) for tag, d in repo.tags.items())
        )


async def upload_put(
    session: aiohttp.ClientSession, base: str, location: str, path: Path, digest: str
) -> None:
    """The monolithic PUT of a whole blob file to an upload ``location``."""
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    with path.open("rb") as body:
        async with session.put(
            f"{location}{sep}digest={digest}",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"PUT blob {digest}: {resp.status} {await resp.text()}")


def new_session(limit: int = 8) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"User-Agent": SEEDER_AGENT},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
    )


async def push(
    url: str,
    corpus: Corpus,
    *,
    repos: dict[str, Repo] | None = None,
    concurrency: int = 8,
) -> None:
    """Push ``repos`` (default: every repository of ``corpus``) to the registry at ``url``."""
    async with new_session(concurrency) as session:
        pusher = Pusher(session, url, corpus)
        sem = asyncio.Semaphore(concurrency)
        for name, repo in (repos or corpus.repos).items():
            await pusher.repo(name, repo, sem)


async def delete_manifest(url: str, repo: str, digest: str) -> None:
    """Remove a manifest (and so every tag on it); the blobs stay, which is harmless."""
    async with (
        new_session(1) as session,
        session.delete(f"{url.rstrip('/')}/v2/{repo}/manifests/{digest}") as resp,
    ):
        if resp.status not in (202, 404):
            raise RuntimeError(f"DELETE {repo}@{digest}: {resp.status}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="layer size factor (0.1 ≈ 55 MB)")
    ap.add_argument("--many", type=int, default=0, help="also build the N-tag corpus")
    ap.add_argument("--big", type=int, default=0, help="also build a one-layer image of N MiB")
    ap.add_argument("--push", metavar="URL", help="seed the registry at URL (main corpus)")
    args = ap.parse_args(argv)
    corpora = [build_main(args.scale)]
    if args.many:
        corpora.append(build_many(args.many))
    if args.big:
        corpora.append(build_big(args.big))
    for c in corpora:
        print(json.dumps({**c.summary(), "root": str(c.root)}))
    if args.push:
        asyncio.run(push(args.push, corpora[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
