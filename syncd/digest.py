"""Digests: compute, compare, and verify streams as they pass."""

from __future__ import annotations

import hashlib

from syncd.errors import DigestMismatchError
from syncd.reference import validate_digest


def digest_of(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DigestVerifier:
    """Hashes a stream chunk by chunk and checks it against the digest that named it.

    The copy engine feeds every chunk through ``update`` on its way to the target, so a
    corrupt source blob is caught before the final upload PUT commits it.
    """

    __slots__ = ("_hash", "expected", "size")

    def __init__(self, expected: str) -> None:
        validate_digest(expected)
        algorithm = expected.partition(":")[0]
        self.expected = expected
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def actual(self) -> str:
        return f"{self._hash.name}:{self._hash.hexdigest()}"

    def verify(self, what: str, *, expected_size: int | None = None) -> None:
        """Raise ``DigestMismatchError`` unless the bytes seen hash (and size) as promised."""
        actual = self.actual
        if actual != self.expected:
            raise DigestMismatchError(what, self.expected, actual)
        if expected_size is not None and self.size != expected_size:
            raise DigestMismatchError(
                what, f"{self.expected} ({expected_size} bytes)", f"{actual} ({self.size} bytes)"
            )
