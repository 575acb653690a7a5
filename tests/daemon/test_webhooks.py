"""Webhook bodies, as registries send them, turned into RepoEvents (pure, table-driven)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from syncd.errors import WebhookPayloadError
from syncd.webhooks import (
    MAX_BODY_BYTES,
    RepoEvent,
    parse_distribution_events,
    parse_harbor_event,
)

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def _dist_event(action: str, repo: str, *, tag: str | None, media_type: str) -> dict[str, Any]:
    """One event shaped like docker-registry 2.8's notifications bridge output."""
    target: dict[str, Any] = {
        "mediaType": media_type,
        "size": 528,
        "digest": D1,
        "length": 528,
        "repository": repo,
        "url": f"http://127.0.0.1:5000/v2/{repo}/manifests/{D1}",
    }
    if tag is not None:
        target["tag"] = tag
    return {
        "id": "5b8d0a4c-0d3b-4a4e-9d3a-1e7f0a0b1c2d",
        "timestamp": "2026-11-29T09:00:00.123456789Z",
        "action": action,
        "target": target,
        "request": {
            "id": "0c3e7c2a-1d5f-4b8e-8f9a-3b2c1d0e9f8a",
            "addr": "127.0.0.1:41234",
            "host": "127.0.0.1:5000",
            "method": "PUT",
            "useragent": "skopeo/1.9.3",
        },
        "actor": {},
        "source": {"addr": "host:5000", "instanceID": "8f0e6a8c-4c0a-4b57-9d7e-2f5b1a3c4d5e"},
    }


OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
INDEX = "application/vnd.oci.image.index.v1+json"
BLOB = "application/octet-stream"

DISTRIBUTION_CASES = [
    (
        "manifest push by tag",
        [_dist_event("push", "team-a/app", tag="v1", media_type=OCI)],
        [RepoEvent("team-a/app", "v1", D1)],
    ),
    (
        "docker manifest",
        [_dist_event("push", "app", tag="latest", media_type=DOCKER)],
        [RepoEvent("app", "latest", D1)],
    ),
    (
        "index pushed by digest",
        [_dist_event("push", "app", tag=None, media_type=INDEX)],
        [RepoEvent("app", None, D1)],
    ),
    ("blob push ignored", [_dist_event("push", "app", tag=None, media_type=BLOB)], []),
    ("pull ignored", [_dist_event("pull", "app", tag="v1", media_type=OCI)], []),
    ("delete ignored", [_dist_event("delete", "app", tag="v1", media_type=OCI)], []),
    (
        "mixed batch keeps order",
        [
            _dist_event("push", "a/x", tag=None, media_type=BLOB),
            _dist_event("push", "a/x", tag="v2", media_type=OCI),
            _dist_event("pull", "b/y", tag="v1", media_type=OCI),
            _dist_event("push", "b/y", tag="v3", media_type=OCI),
        ],
        [RepoEvent("a/x", "v2", D1), RepoEvent("b/y", "v3", D1)],
    ),
    ("empty envelope", [], []),
]


@pytest.mark.parametrize(
    ("events", "expected"),
    [pytest.param(e, x, id=name) for name, e, x in DISTRIBUTION_CASES],
)
def test_distribution_envelope(events: list[dict[str, Any]], expected: list[RepoEvent]) -> None:
    assert parse_distribution_events(json.dumps({"events": events}).encode()) == expected


def _harbor(kind: str, resources: list[dict[str, Any]], repo: str = "library/nginx") -> bytes:
    ns, _, name = repo.rpartition("/")
    return json.dumps(
        {
            "type": kind,
            "occur_at": 1764406800,
            "operator": "admin",
            "event_data": {
                "resources": resources,
                "repository": {
                    "date_created": 1764400000,
                    "name": name,
                    "namespace": ns,
                    "repo_full_name": repo,
                    "repo_type": "private",
                },
            },
        }
    ).encode()


def _harbor_cloudevent(resources: list[dict[str, Any]], repo: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": "4b6ddc7a-a3b3-4b33-8e7e-1b2a3c4d5e6f",
            "source": "/projects/1/webhook/policies/1",
            "type": "harbor.artifact.pushed",
            "datacontenttype": "application/json",
            "time": "2026-11-29T09:00:00Z",
            "operator": "admin",
            "data": {
                "resources": resources,
                "repository": {"name": repo.rpartition("/")[2], "repo_full_name": repo},
            },
        }
    ).encode()


_RES1 = {"digest": D1, "tag": "v1.0.0", "resource_url": "harbor.example.com/library/nginx:v1.0.0"}
_RES2 = {"digest": D2, "tag": "", "resource_url": f"harbor.example.com/library/nginx@{D2}"}

HARBOR_CASES = [
    (
        "push artifact",
        _harbor("PUSH_ARTIFACT", [_RES1]),
        [RepoEvent("library/nginx", "v1.0.0", D1)],
    ),
    ("untagged push", _harbor("PUSH_ARTIFACT", [_RES2]), [RepoEvent("library/nginx", None, D2)]),
    (
        "two resources",
        _harbor("PUSH_ARTIFACT", [_RES1, _RES2]),
        [RepoEvent("library/nginx", "v1.0.0", D1), RepoEvent("library/nginx", None, D2)],
    ),
    (
        "no resources still names the repository",
        _harbor("PUSH_ARTIFACT", []),
        [RepoEvent("library/nginx")],
    ),
    ("pull ignored", _harbor("PULL_ARTIFACT", [_RES1]), []),
    ("delete ignored", _harbor("DELETE_ARTIFACT", [_RES1]), []),
    ("scan ignored", b'{"type":"SCANNING_COMPLETED","event_data":{}}', []),
    (
        "cloudevents format",
        _harbor_cloudevent([_RES1], "proj/team/app"),
        [RepoEvent("proj/team/app", "v1.0.0", D1)],
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"), [pytest.param(b, x, id=n) for n, b, x in HARBOR_CASES]
)
def test_harbor_webhook(body: bytes, expected: list[RepoEvent]) -> None:
    assert parse_harbor_event(body) == expected


MALFORMED_DISTRIBUTION = [
    ("not json", b"{events: ["),
    ("not utf-8", b"\xff\xfe\x00"),
    ("array body", b"[]"),
    ("no events key", b"{}"),
    ("events not a list", b'{"events": {}}'),
    ("event not an object", b'{"events": [42]}'),
    ("push without target", b'{"events": [{"action": "push"}]}'),
    (
        "repository missing",
        json.dumps(
            {"events": [{"action": "push", "target": {"tag": "v1", "mediaType": OCI}}]}
        ).encode(),
    ),
    (
        "repository invalid",
        json.dumps(
            {"events": [_dist_event("push", "Bad/UPPER", tag="v1", media_type=OCI)]}
        ).encode(),
    ),
    (
        "tag not a string",
        json.dumps(
            {"events": [{"action": "push", "target": {"repository": "a", "tag": 3}}]}
        ).encode(),
    ),
    ("too large", b'{"events": []' + b" " * MAX_BODY_BYTES + b"}"),
]


@pytest.mark.parametrize("body", [pytest.param(b, id=n) for n, b in MALFORMED_DISTRIBUTION])
def test_distribution_malformed(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError):
        parse_distribution_events(body)


MALFORMED_HARBOR = [
    ("not json", b"<xml/>"),
    ("no type", b'{"event_data": {}}'),
    ("no event_data", b'{"type": "PUSH_ARTIFACT"}'),
    ("repository missing", b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": []}}'),
    (
        "repo_full_name missing",
        json.dumps(
            {"type": "PUSH_ARTIFACT", "event_data": {"repository": {"name": "x"}, "resources": []}}
        ).encode(),
    ),
    (
        "resources not a list",
        json.dumps(
            {
                "type": "PUSH_ARTIFACT",
                "event_data": {"repository": {"repo_full_name": "a/b"}, "resources": {}},
            }
        ).encode(),
    ),
    ("resource not an object", _harbor("PUSH_ARTIFACT", ["v1"])),  # type: ignore[list-item]
    ("invalid repository", _harbor("PUSH_ARTIFACT", [_RES1], repo="../etc")),
]


@pytest.mark.parametrize("body", [pytest.param(b, id=n) for n, b in MALFORMED_HARBOR])
def test_harbor_malformed(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError):
        parse_harbor_event(body)
