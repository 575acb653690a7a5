"""Webhook bodies from registries, turned into the repositories that just received a push.

Two senders are understood:

* CNCF distribution (``docker-registry``) notifications: an envelope
  ``{"events": [...]}`` of media type ``application/vnd.docker.distribution.events.v1+json``.
  The registry emits an event per manifest *and per blob* pushed, plus pulls; only manifest
  pushes say that a repository changed, so blob events (target media type not a manifest and
  no tag) and every other action are ignored.
* Harbor webhooks of type ``PUSH_ARTIFACT`` in the "Default" payload format, and the same
  event in the "CloudEvents" format (``type: harbor.artifact.pushed``, fields under ``data``).

Parsing is pure: nothing here knows the HTTP server or starts a sync.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from syncd.errors import InvalidReferenceError, WebhookPayloadError
from syncd.manifest import IMAGE_TYPES, INDEX_TYPES
from syncd.reference import validate_repository

# A push-only envelope is small; a megabyte leaves room for registries that batch events.
MAX_BODY_BYTES = 1024 * 1024

_MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES
_HARBOR_PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed"})


@dataclass(frozen=True, slots=True)
class RepoEvent:
    """A push to ``repository`` (a source repository path, no host), by tag and/or digest."""

    repository: str
    tag: str | None = None
    digest: str | None = None


def parse_distribution_events(body: bytes) -> list[RepoEvent]:
    """The manifest pushes in a distribution notification envelope, in order.

    Raises ``WebhookPayloadError`` when the body is not such an envelope.
    """
    doc = _json_object(body)
    events = doc.get("events")
    if not isinstance(events, list):
        raise WebhookPayloadError("distribution envelope: 'events' must be a list")
    out: list[RepoEvent] = []
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(event, Mapping):
            raise WebhookPayloadError(f"distribution envelope: {where} must be an object")
        if event.get("action") != "push":
            continue  # pulls, deletes and mounts change nothing we copy
        target = event.get("target")
        if not isinstance(target, Mapping):
            raise WebhookPayloadError(f"distribution envelope: {where}.target must be an object")
        tag = _optional_str(target, "tag", f"{where}.target")
        media_type = _optional_str(target, "mediaType", f"{where}.target")
        if tag is None and media_type not in _MANIFEST_TYPES:
            continue  # a blob upload: the manifest push that follows is the event that counts
        repository = _repository(target.get("repository"), f"{where}.target.repository")
        digest = _optional_str(target, "digest", f"{where}.target")
        out.append(RepoEvent(repository, tag, digest))
    return out


def parse_harbor_event(body: bytes) -> list[RepoEvent]:
    """The artifacts of a Harbor ``PUSH_ARTIFACT`` webhook; other event types give ``[]``.

    Raises ``WebhookPayloadError`` when the body is not a Harbor webhook.
    """
    doc = _json_object(body)
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise WebhookPayloadError("harbor webhook: 'type' must be a string")
    if kind not in _HARBOR_PUSH_TYPES:
        return []  # pulls, deletes, scans, quota warnings...
    # The CloudEvents format carries the Default format's event_data under "data".
    data_key = "data" if "specversion" in doc else "event_data"
    data = doc.get(data_key)
    if not isinstance(data, Mapping):
        raise WebhookPayloadError(f"harbor webhook: '{data_key}' must be an object")
    repo = data.get("repository")
    if not isinstance(repo, Mapping):
        raise WebhookPayloadError(f"harbor webhook: '{data_key}.repository' must be an object")
    repository = _repository(repo.get("repo_full_name"), f"{data_key}.repository.repo_full_name")
    resources = data.get("resources")
    if not isinstance(resources, list):
        raise WebhookPayloadError(f"harbor webhook: '{data_key}.resources' must be a list")
    if not resources:
        return [RepoEvent(repository)]  # the repository changed even if Harbor lists nothing
    out: list[RepoEvent] = []
    for i, res in enumerate(resources):
        where = f"{data_key}.resources[{i}]"
        if not isinstance(res, Mapping):
            raise WebhookPayloadError(f"harbor webhook: {where} must be an object")
        # Harbor sends "" for the tag of an artifact pushed by digest.
        tag = _optional_str(res, "tag", where) or None
        digest = _optional_str(res, "digest", where) or None
        out.append(RepoEvent(repository, tag, digest))
    return out


def _json_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise WebhookPayloadError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise WebhookPayloadError(f"body is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise WebhookPayloadError("body must be a JSON object")
    return doc


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise WebhookPayloadError(f"{where}.{key} must be a string")


def _repository(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise WebhookPayloadError(f"{where} must be a string")
    try:
        return validate_repository(value)
    except InvalidReferenceError as e:
        raise WebhookPayloadError(f"{where}: {e}") from e
