"""What syncd exposes, and which metrics and labels a PromQL expression refers to.

Enough of PromQL for our own alert and dashboard expressions: metric names are the
identifiers that start with ``syncd_`` or ``process_``, or are ``up``; labels are those of
``{...}`` matchers and of ``by/without/on/ignoring/group_*`` clauses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from syncd.metrics import Metrics

# Labels Prometheus adds to every scraped series; `le` comes with histogram buckets.
TARGET_LABELS = frozenset({"job", "instance"})
BUILTIN_METRICS = {"up": frozenset[str]()}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_METRIC = re.compile(r"(?<![\w:$])((?:syncd|process)_[a-zA-Z0-9_:]*|up)\b(?!\s*\()\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def exposed_metrics() -> dict[str, frozenset[str]]:
    """Sample name → label names, from a ``Metrics`` whose labelled metrics were touched.

    Labelled metrics show no samples until a child exists, so each gets one with sample
    label values; the names then include the ``_total``/``_bucket``/``_sum``/``_count``
    suffixes exactly as Prometheus will store them.
    """
    metrics = Metrics()
    metrics.enable_cluster(expected_members=3)  # what `syncd run` with a cluster: section adds
    for value in vars(metrics).values():
        # _labelnames is prometheus_client's record of the declared labels; there is no
        # public accessor, and the declared labels are exactly what this check is about.
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(**{name: "sample" for name in value._labelnames})
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in out.items()}


def metric_refs(expr: str) -> Iterator[tuple[str, frozenset[str]]]:
    """(metric name, labels named in its matchers) for each metric selector in ``expr``."""
    for m in _METRIC.finditer(_mask_strings(expr)):
        # Matchers are read from the original text: the masked one hides their values only.
        body = expr[m.start(2) : m.end(2)] if m.group(2) else ""
        yield m.group(1), frozenset(_MATCHER.findall(body))


def grouping_labels(expr: str) -> set[str]:
    """Label names used in by/without/on/ignoring/group_left/group_right clauses."""
    out: set[str] = set()
    for m in _GROUPING.finditer(_mask_strings(expr)):
        out.update(x.strip() for x in m.group(1).split(",") if x.strip())
    return out


def check_expr(expr: str, exposed: dict[str, frozenset[str]]) -> list[str]:
    """Problems of ``expr`` against the exposition: unknown metrics or labels."""
    problems = []
    known = {**exposed, **BUILTIN_METRICS}
    used_labels: set[str] = set(TARGET_LABELS)
    refs = list(metric_refs(expr))
    if not refs:
        problems.append(f"no syncd metric in {expr!r}")
    for name, labels in refs:
        if name not in known:
            problems.append(f"unknown metric {name}")
            continue
        allowed = known[name] | TARGET_LABELS
        used_labels |= known[name]
        for label in labels - allowed:
            problems.append(f"{name} has no label {label}")
    for label in grouping_labels(expr) - used_labels - {"le"}:
        problems.append(f"grouping by {label}, which none of its metrics has")
    return problems


def _mask_strings(expr: str) -> str:
    # Same length, so match offsets stay valid in the original.
    return _STRING.sub(lambda m: '"' + "x" * (len(m.group()) - 2) + '"', expr)
