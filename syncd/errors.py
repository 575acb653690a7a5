"""The one exception tree of syncd.

Every error carries ``reason`` (the ``reason`` label of ``syncd_image_failures_total``),
``exit_code`` (what the CLI exits with when the error ends a command) and ``retryable``
(whether the transport's retry loop may try the request again). Only ``cli.py`` and
``sync.py`` branch on these.
"""

from __future__ import annotations

from dataclasses import dataclass


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""

    reason = "error"
    exit_code = 1
    retryable = False


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a config file, located as precisely as the YAML allows."""

    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(SyncdError):
    """The configuration cannot be used; carries every problem found, not only the first."""

    reason = "config"
    exit_code = 2

    def __init__(self, problems: list[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            self.problems: list[ConfigProblem] = []
            super().__init__(problems)
        else:
            self.problems = list(problems)
            super().__init__("\n".join(str(p) for p in self.problems))


class InvalidReferenceError(SyncdError, ValueError):
    """An image reference, repository name, tag or digest does not parse."""

    reason = "invalid_reference"
    exit_code = 2


@dataclass(frozen=True, slots=True)
class OCIErrorDetail:
    """One entry of the ``errors`` array of a distribution-spec error body."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


class RegistryError(SyncdError):
    """A registry answered with an error, or could not be reached."""

    reason = "registry_error"

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        repository: str = "",
        method: str = "",
        url: str = "",
        status: int | None = None,
        details: tuple[OCIErrorDetail, ...] = (),
    ) -> None:
        self.message = message
        self.registry = registry
        self.repository = repository
        self.method = method
        self.url = url  # already redacted by the transport
        self.status = status
        self.details = details
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.registry
        if self.repository:
            where = f"{where}/{self.repository}" if where else self.repository
        text = f"{where}: {self.message}" if where else self.message
        if self.details:
            text += " (" + "; ".join(str(d) for d in self.details) + ")"
        if self.method and self.url:
            text += f" [{self.method} {self.url}"
            text += f" -> {self.status}]" if self.status is not None else "]"
        return text


class AuthError(RegistryError):
    """401/403: credentials missing or wrong, or no permission for the operation."""

    reason = "auth"


class NotFoundError(RegistryError):
    """404 where something had to exist (a source manifest or blob)."""

    reason = "not_found"


class RateLimitedError(RegistryError):
    """429 Too Many Requests; ``retry_after`` is the server's hint in seconds, if any."""

    reason = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ServerError(RegistryError):
    """5xx, or a response that breaks the protocol."""

    reason = "server_error"
    retryable = True


class LayoutInvalidError(ServerError):
    """An OCI image layout (``oci:``/``oci-archive:``) is not valid: no ``oci-layout``, bad
    JSON, a blob that is missing or does not match its digest. The message names the file.

    A ``ServerError`` so the copy engine treats an unreadable target tag as it does a
    registry's (pushed over when the policy allows); never retried, the file will not mend.
    """

    reason = "layout_invalid"
    retryable = False


class LayoutIOError(ServerError):
    """The file system refused a layout operation (permissions, no space, a file where a
    directory must be). The message names the path."""

    reason = "layout_io"
    retryable = False


class ClientRequestError(RegistryError):
    """Another 4xx: the request itself was refused and repeating it will not help."""

    reason = "request_refused"


class CatalogUnsupportedError(ClientRequestError):
    """The registry does not list its repositories (``/v2/_catalog`` is optional)."""


class NetworkError(RegistryError):
    """Connection refused or reset, DNS failure, timeout."""

    reason = "network"
    retryable = True


class TLSError(RegistryError):
    """Certificate verification or the TLS handshake failed."""

    reason = "tls"


class DigestMismatchError(SyncdError):
    """Content did not hash to the digest that named it."""

    reason = "digest_mismatch"

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")


class ManifestInvalidError(SyncdError):
    """A manifest cannot be used: unknown media type, schema1, too large, malformed."""

    reason = "manifest_invalid"


class OverwriteRefusedError(SyncdError):
    """``overwrite: false`` and the target tag already points at another digest."""

    reason = "overwrite_refused"

    def __init__(self, target: str, current: str, wanted: str) -> None:
        self.target = target
        self.current = current
        self.wanted = wanted
        super().__init__(
            f"{target}: overwrite refused: tag points at {current}, source is {wanted}"
        )


class UnsignedImageError(SyncdError):
    """``require_signature: true`` and no signature refers to the image at the source."""

    reason = "unsigned"


def failure_reason(err: BaseException) -> str:
    """The bounded ``reason`` label for a failure."""
    return err.reason if isinstance(err, SyncdError) else "internal"


class WebhookPayloadError(SyncdError):
    """A webhook body is not a notification we understand: bad JSON or missing fields."""

    reason = "webhook_payload"


class FencedError(SyncdError):
    """This replica lost its cluster lease: it must not write a tag it can no longer vouch for.

    The work is left to the unit's new owner; nothing is retried here.
    """

    reason = "fenced"
