"""Image references: ``host[:port]/path/name[:tag][@sha256:…]``, parsed and validated.

Grammar from the distribution spec (``docker/distribution/reference``): a repository is
lower-case path components separated by ``/``; a tag is ``[\\w][\\w.-]{0,127}``. A first
component that contains ``.`` or ``:`` or is ``localhost`` is a registry host; otherwise the
reference is on Docker Hub, where one-component names live under ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from syncd.errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
# Docker Hub's API host differs from the name users write.
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")
# The spec limits the whole name (host included) to 255 characters.
MAX_NAME = 255


def validate_repository(name: str) -> str:
    """Return ``name`` if it is a valid repository path, else raise naming it."""
    if not name or len(name) > MAX_NAME or not REPOSITORY_RE.match(name):
        raise InvalidReferenceError(
            f"invalid repository name {name!r}: lower-case letters, digits and separators "
            "[._-] in components joined by '/'"
        )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise naming it."""
    if not TAG_RE.match(tag):
        raise InvalidReferenceError(
            f"invalid tag {tag!r}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a sha256/sha512 digest in canonical form."""
    if not DIGEST_RE.match(digest):
        raise InvalidReferenceError(f"invalid digest {digest!r}: expected sha256:<64 hex>")
    return digest


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference. ``tag`` and ``digest`` may both be set; the digest wins."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def identifier(self) -> str:
        """What goes into ``/v2/<name>/manifests/<identifier>``."""
        if self.digest:
            return self.digest
        return self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, validate_digest(digest))

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _split_host(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST_RE.match(first):
            raise InvalidReferenceError(f"invalid registry host {first!r} in {name!r}")
        return first, rest
    path = name if "/" in name else f"library/{name}"
    return DOCKER_HUB, path


def parse_reference(text: str, *, default_registry: str | None = None) -> Reference:
    """Parse ``[host[:port]/]path[:tag][@digest]``.

    With ``default_registry`` the text is taken to be a repository path on that registry
    (no host guessing), which is how rules name repositories.
    """
    if not text or text != text.strip():
        raise InvalidReferenceError(f"invalid reference {text!r}: empty or surrounded by spaces")
    try:
        rest, _, digest = text.partition("@")
        if digest:
            validate_digest(digest)
        tag: str | None = None
        # A ':' after the last '/' separates the tag; one before it is a port.
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            rest, tag = rest[:colon], rest[colon + 1 :]
            validate_tag(tag)
        if default_registry is not None:
            registry, repository = default_registry, rest
        else:
            registry, repository = _split_host(rest)
        validate_repository(repository)
    except InvalidReferenceError as e:
        raise InvalidReferenceError(f"invalid reference {text!r}: {e}") from None
    return Reference(registry, repository, tag, digest or None)


# -- registry origins -------------------------------------------------------------------
# Every name Docker Hub's registry answers to; the API itself is on registry-1.docker.io.
DOCKER_HUB_ALIASES = frozenset(
    {DOCKER_HUB, "index.docker.io", DOCKER_HUB_API, "registry.hub.docker.com"}
)
_DEFAULT_PORTS = {"https": 443, "http": 80}


def split_origin(url: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` of a registry URL, normalised for comparison.

    ``https://Reg.Example.com:443/``, ``reg.example.com`` and ``REG.example.com/v2/`` are
    one origin: the host is lower-cased (DNS names are case-insensitive, RFC 4343), a
    port that is the scheme's default is dropped (RFC 3986 section 6.2.3), and a bare
    ``host[:port]`` means https. Never compare registry hosts as raw strings.
    """
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "https", text
    scheme = scheme.lower()
    netloc = rest.split("/", 1)[0].rpartition("@")[2].lower()
    host, port = netloc, ""
    if netloc.startswith("["):  # [v6] or [v6]:port
        end = netloc.find("]")
        host, port = netloc[: end + 1], netloc[end + 2 :] if end >= 0 else ""
    elif netloc.count(":") == 1:
        host, port = netloc.split(":")
    if port.isdigit() and _DEFAULT_PORTS.get(scheme) == int(port):
        port = ""
    return scheme, f"{host}:{port}" if port else host


def origin(url: str) -> str:
    """``scheme://host[:port]``, normalised as ``split_origin`` says."""
    scheme, host = split_origin(url)
    return f"{scheme}://{host}"


def is_docker_hub(host: str) -> bool:
    """True for any of Docker Hub's names (``host`` as ``split_origin`` returns it)."""
    return host in DOCKER_HUB_ALIASES


def hub_repository(repository: str) -> str:
    """A Docker Hub repository as the API names it: one component means ``library/NAME``,
    as the Docker CLI reads ``docker pull nginx``."""
    return repository if "/" in repository else f"library/{repository}"
