"""Durations as operators write them in the config: ``30s``, ``5m``, ``1h30m``, ``1d``, ``90``.

Pure (L0): no I/O. A bare number, or a string of digits, is seconds. Units may be combined in
any order (``1h30m``, ``2m30s``), each part may have a fraction (``1.5h``), and the total must be
positive: a zero or negative polling period would spin.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# "ms" before "m" so that "500ms" is not read as 500 minutes followed by junk.
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")

DURATION_HELP = "a number of seconds or units like 30s, 5m, 1h30m, 1d"


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds, or raise ``ValueError`` saying what is accepted.

    Accepts an int or float (seconds) or a string as described in the module docstring.
    Booleans are refused, although Python counts them as ints: ``interval: yes`` is a typo.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration ({DURATION_HELP}), got {_kind(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            seconds = 0.0
            pos = 0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ValueError(f"invalid duration {value!r}: use {DURATION_HELP}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be more than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest ``1h30m``-style spelling of ``seconds`` (for logs and ``plan``)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
