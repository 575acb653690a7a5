"""Credentials stay with the registry: a redirect to blob storage gets no Authorization.

The registry runs distribution's ``redirect`` storage middleware, which answers blob GETs
with a 307 to ``baseurl`` + the blob's storage path (how S3/CDN-backed registries behave).
A small file server on another port plays the blob storage and records the headers it gets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.auth.conftest import USERS, SyncdRunner
from tests.helpers.auth import TokenIssuer, htpasswd_auth
from tests.helpers.images import image, push
from tests.helpers.registry import RegistryFactory, manifest_raw

RULE = {"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}


@dataclass
class BlobStorage:
    """Serves files under ``root`` (the registry's storage) and logs each request."""

    root: Path | None = None
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> BlobStorage:
        storage = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                storage.seen.append((self.path, self.headers.get("Authorization")))
                assert storage.root is not None
                path = (storage.root / self.path.split("?")[0].lstrip("/")).resolve()
                if not path.is_relative_to(storage.root) or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def blob_storage() -> Iterator[BlobStorage]:
    storage = BlobStorage().start()
    try:
        yield storage
    finally:
        storage.stop()


def redirecting(baseurl: str) -> dict[str, Any]:
    return {"storage": [{"name": "redirect", "options": {"baseurl": baseurl}}]}


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_no_authorization_header_follows_a_redirect(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],
    htpasswd: Path,
    blob_storage: BlobStorage,
    syncd: SyncdRunner,
    kind: str,
) -> None:
    issuer = issuers()
    auth = htpasswd_auth(htpasswd) if kind == "basic" else issuer.registry_auth()
    src = registries(auth=auth, middleware=redirecting(blob_storage.url))
    blob_storage.root = src.root.resolve()
    img = image("redir", size=8192)
    if kind == "basic":
        push(src.url, "team/app", "v1", img, auth=("writer", USERS["writer"]))
    else:
        push(src.url, "team/app", "v1", img, token=issuer.seed_token("team/app"))
    dst = registries()
    cfg = syncd.config(
        {
            "src": {"url": src.url, "username": "reader", "password": USERS["reader"]},
            "dst": {"url": dst.url},
        },
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1") == img.raw
    # Every blob came through the redirect, and none of those requests carried credentials.
    fetched = [path for path, _ in blob_storage.seen]
    assert len(fetched) >= len(img.blobs)
    assert all(path.endswith("/data") for path in fetched)
    assert [auth for _, auth in blob_storage.seen] == [None] * len(blob_storage.seen)
