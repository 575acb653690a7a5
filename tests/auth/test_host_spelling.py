"""Credentials follow the host however it is written: a registry configured as
``http://LOCALHOST:PORT/`` is the registry whose Docker config key is ``localhost:PORT``
and whose upload ``Location``s say ``localhost``; the real CLI against real registries
with Basic auth (htpasswd) on both sides."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from syncd.registry.auth import Authenticator
from syncd.registry.transport import Request, Transport
from tests.auth.conftest import USERS, SyncdRunner
from tests.helpers.auth import htpasswd_auth
from tests.helpers.images import image, push
from tests.helpers.registry import RegistryFactory, manifest_raw


def test_upper_case_host_with_docker_config(
    registries: RegistryFactory, htpasswd: Path, syncd: SyncdRunner, tmp_path: Path
) -> None:
    src = registries(auth=htpasswd_auth(htpasswd))
    dst = registries(auth=htpasswd_auth(htpasswd))
    writer = ("writer", USERS["writer"])
    img = image("spelling", layers=2)
    push(src.url, "team/app", "v1", img, auth=writer)
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = base64.b64encode(f"{writer[0]}:{writer[1]}".encode()).decode()
    # Keys as `docker login` writes them: lower case, no scheme, or with one.
    (docker / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    f"localhost:{src.port}": {"auth": auth},
                    f"http://localhost:{dst.port}": {"auth": auth},
                }
            }
        )
    )
    syncd.env["DOCKER_CONFIG"] = str(docker)
    cfg = syncd.config(
        {
            "src": {"url": f"http://LOCALHOST:{src.port}/", "docker_config": True},
            "dst": {"url": f"http://LocalHost:{dst.port}", "docker_config": True},
        },
        [{"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", auth=writer) == img.raw
    # Every upload went to a Location the registry wrote in its own spelling, with auth.
    assert dst.counts()["upload_put"] == 3


def test_locations_in_any_spelling_are_the_registry() -> None:
    t = Transport(
        name="r",
        base_url="https://Reg.Example.com:443",
        authenticator=Authenticator(registry="r"),
    )
    for loc in (
        "https://reg.example.com/v2/a/blobs/uploads/u?_state=x",
        "https://REG.EXAMPLE.COM:443/v2/a/blobs/uploads/u",
    ):
        assert t._url(Request("PUT", loc))[1] is True
    for other in ("https://blobs.example.com/x", "http://reg.example.com/x"):
        assert t._url(Request("GET", other))[1] is False
