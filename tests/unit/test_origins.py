"""Registry origins, Docker Hub names, non-distributable layers, artifact manifests and
referrer-tag selection: the pure parts of talking to production registries."""

from __future__ import annotations

import json
import textwrap

import pytest

from syncd.config.load import load_config_text
from syncd.config.schema import RegistryConfig, TagFilter
from syncd.errors import ConfigError
from syncd.manifest import OCI_ARTIFACT, OCI_MANIFEST, is_nondistributable, parse_manifest
from syncd.reference import hub_repository, origin, split_origin
from syncd.registry.credentials import normalize_host
from syncd.registry.pool import ClientPool
from syncd.rules import names_tag

D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Reg.Example.com:443/", "https://reg.example.com"),
        ("reg.example.com", "https://reg.example.com"),
        ("REG.example.com:443", "https://reg.example.com"),
        ("reg.example.com:5000", "https://reg.example.com:5000"),
        ("http://LOCALHOST:5000", "http://localhost:5000"),
        ("http://localhost:80/v2/x/blobs/uploads/u?_state=s", "http://localhost"),
        ("HTTPS://[::1]:443/", "https://[::1]"),
        ("http://[::1]:5000", "http://[::1]:5000"),
        ("https://reg.example.com:80", "https://reg.example.com:80"),
    ],
)
def test_origin_normalises(url: str, expected: str) -> None:
    assert origin(url) == expected


def test_one_registry_however_spelled() -> None:
    spellings = ["https://Reg.Example.com:443/", "reg.example.com", "https://reg.example.com"]
    assert {RegistryConfig(name="r", url=u).base_url for u in spellings} == {
        "https://reg.example.com"
    }
    # Docker's config keys, with or without a scheme or the default port, find the host.
    assert normalize_host("https://Reg.Example.com:443/v1/") == normalize_host("reg.example.com")
    assert RegistryConfig(name="l", url="http://LOCALHOST:5000").host == "localhost:5000"


@pytest.mark.parametrize("url", ["docker.io", "index.docker.io", "https://registry-1.docker.io"])
def test_docker_hub_aliases_reach_the_api_host(url: str) -> None:
    reg = RegistryConfig(name="hub", url=url)
    assert reg.docker_hub and reg.base_url == "https://registry-1.docker.io"
    assert normalize_host(reg.host) == "docker.io"  # Docker's config keeps Hub under this
    client = ClientPool({"hub": reg}).client("hub")
    assert client.transport.base_url == "https://registry-1.docker.io"
    assert client.name == "hub"  # metrics and logs keep the operator's name
    assert client.wire("nginx") == "library/nginx"
    assert client.wire("bitnami/nginx") == "bitnami/nginx"


def test_one_component_names_are_library_only_on_docker_hub() -> None:
    assert hub_repository("alpine") == "library/alpine"
    assert hub_repository("library/alpine") == "library/alpine"
    other = ClientPool({"r": RegistryConfig(name="r", url="reg.example.com")}).client("r")
    assert other.wire("alpine") == "alpine"
    assert split_origin("docker.io") == ("https", "docker.io")


def test_validate_refuses_a_glob_against_docker_hub() -> None:
    text = textwrap.dedent(
        """\
        registries:
          hub: {url: docker.io}
          dst: {url: http://127.0.0.1:5002}
        rules:
          - name: r
            source: hub
            targets: [dst]
            repositories: [nginx, 'bitnami/*']
        """
    )
    with pytest.raises(ConfigError) as e:
        load_config_text(text, filename="c.yaml")
    (problem,) = e.value.problems
    assert problem.line == 8 and "rules[0].repositories[1]" in str(problem)
    assert "'hub'" in str(problem) and "list the repositories by name" in str(problem)
    # Named repositories are fine.
    load_config_text(text.replace(", 'bitnami/*'", ", bitnami/nginx"), filename="c.yaml")


def _image(*layers: dict[str, object]) -> bytes:
    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D, "size": 2}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": list(layers)}
    return json.dumps(doc).encode()


def test_layers_are_skipped_by_media_type_only() -> None:
    plain_with_urls = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": E,
        "size": 5,
        "urls": ["https://mirror.example.com/blob"],
    }
    nondist = {
        "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "digest": "sha256:" + "c" * 64,
        "size": 7,
    }
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": "sha256:" + "d" * 64,
        "size": 9,
        "urls": ["https://mcr.microsoft.com/layer"],
    }
    m = parse_manifest(_image(plain_with_urls, nondist, foreign))
    assert [b.digest for b in m.blobs] == [D, E]
    assert is_nondistributable(nondist["mediaType"])  # type: ignore[arg-type]
    assert not is_nondistributable("application/vnd.oci.image.layer.v1.tar+zstd")


def test_artifact_manifest_is_copied_like_any_manifest() -> None:
    raw = json.dumps(
        {
            "mediaType": OCI_ARTIFACT,
            "artifactType": "application/vnd.example.sbom",
            "blobs": [{"mediaType": "application/json", "digest": E, "size": 3}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": D, "size": 100},
        }
    ).encode()
    m = parse_manifest(raw, where="artifact")
    assert m.media_type == OCI_ARTIFACT and not m.is_index and m.raw == raw
    assert [b.digest for b in m.blobs] == [E]
    assert m.subject is not None and m.subject.digest == D
    assert m.artifact_type == "application/vnd.example.sbom"


@pytest.mark.parametrize(
    ("f", "tag", "named"),
    [
        (TagFilter(), "sha256-" + "a" * 64 + ".sig", False),
        (TagFilter(include=(r"^v\d+$",)), "sha256-" + "a" * 64, False),
        (TagFilter(include=(r"\.sig$",)), "sha256-" + "a" * 64 + ".sig", True),
        (TagFilter(names=("sha256-" + "a" * 64,)), "sha256-" + "a" * 64, True),
    ],
)
def test_names_tag(f: TagFilter, tag: str, named: bool) -> None:
    assert names_tag(f, tag) is named
