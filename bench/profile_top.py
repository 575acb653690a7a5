"""Top hot spots from a py-spy ``--format raw`` profile (collapsed stacks with counts).

``python -m bench.profile_top bench/out/profile-cold.pyspy.txt`` prints, as shares of all
on-CPU samples: the leaf functions (self time), the syncd lines that are on the stack
(inclusive time, file:line), and the share spent importing modules at start-up.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def analyse(path: Path, top: int = 15) -> str:
    leaf: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    total = imports = 0
    for raw in path.read_text().splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        parsed = [_FRAME.match(f) for f in frames]
        if any(m and m["func"].startswith("_find_and_load") for m in parsed):
            imports += count
        last = parsed[-1] if parsed else None
        if last:
            leaf[f"{last['func']} ({_short(last['file'])})"] += count
        seen: set[str] = set()
        for frame in parsed:
            if frame and "syncd/" in frame["file"] and frame["line"]:
                key = f"{_short(frame['file'])}:{frame['line']} {frame['func']}"
                if key not in seen:
                    seen.add(key)
                    lines[key] += count
    if not total:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} on-CPU samples; importing modules {imports / total:.0%}"]
    out.append("  self time (leaf functions):")
    out += [f"    {n / total:6.1%}  {k}" for k, n in leaf.most_common(top)]
    out.append("  syncd lines on the stack (inclusive):")
    out += [f"    {n / total:6.1%}  {k}" for k, n in lines.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    for p in args.profiles:
        print(analyse(p, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
