"""A string that refuses to be printed."""

from __future__ import annotations


class Secret:
    """Wraps a credential so ``repr``, ``str`` and f-strings show a mask, never the value.

    Only the transport calls ``reveal()``, at the moment it builds an Authorization header.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('******')"

    def __str__(self) -> str:
        return "******"

    def __format__(self, spec: str) -> str:
        return "******"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values cannot be pickled")
