"""``Endpoint``: one repository in one place that holds images (``syncd.storage``)."""

from __future__ import annotations

from dataclasses import dataclass

from syncd.state import registry_key
from syncd.storage import ImageStore


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A repository on a registry (or in an OCI layout)."""

    client: ImageStore
    repository: str

    def __str__(self) -> str:
        return f"{self.client.name}/{self.repository}"


def registry_of(t: Endpoint) -> str:
    """The state store's name for ``t``'s registry: its normalised address
    (``registry_key`` of the client's origin; a layout's is its kind and absolute path)."""
    return registry_key(t.client.origin)
