"""Every metric of the contract, built once on a private ``CollectorRegistry``.

A fresh registry per ``Metrics`` keeps tests independent and avoids prometheus_client's
"Duplicated timeseries" error when two instances live in one process.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds; a pass spans sub-second no-ops to hour-long cold copies.
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Holds the contract's metrics. Label values are bounded: never digests or tags."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.images_synced = Counter(
            "syncd_images_synced_total",
            "Images copied to a target",
            ["rule", "target"],
            registry=r,
        )
        self.image_failures = Counter(
            "syncd_image_failures_total",
            "Images that failed to sync",
            ["rule", "target", "reason"],
            registry=r,
        )
        self.manifest_pushes = Counter(
            "syncd_manifest_pushes_total", "Manifest PUTs", ["target", "repository"], registry=r
        )
        self.blobs_copied = Counter(
            "syncd_blobs_copied_total", "Blob uploads completed", ["target"], registry=r
        )
        self.blobs_skipped = Counter(
            "syncd_blobs_skipped_total",
            "Blobs already present at the target",
            ["target"],
            registry=r,
        )
        self.blobs_mounted = Counter(
            "syncd_blobs_mounted_total",
            "Blobs mounted from another repository",
            ["target"],
            registry=r,
        )
        self.blob_bytes_copied = Counter(
            "syncd_blob_bytes_copied_total", "Blob bytes uploaded", ["target"], registry=r
        )
        self.sync_duration = Histogram(
            "syncd_sync_duration_seconds",
            "Duration of one pass of a rule",
            ["rule"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "syncd_last_success_timestamp_seconds",
            "End of the last pass of a rule without failures",
            ["rule"],
            registry=r,
        )
        self.registry_requests = Counter(
            "syncd_registry_requests_total",
            "HTTP requests to registries",
            ["registry", "method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "syncd_registry_request_duration_seconds",
            "Latency of registry requests",
            ["registry", "method"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "syncd_retries_total",
            "Requests retried after a transient failure",
            ["registry"],
            registry=r,
        )
        self.registry_concurrency = Gauge(
            "syncd_registry_concurrency",
            "Requests of a kind allowed in flight to a registry (adapts to 429/503 answers)",
            ["registry", "kind"],
            registry=r,
        )
        # `account` is the index of the registry's credentials when it has several, else "".
        self.registry_quota_remaining = Gauge(
            "syncd_registry_quota_remaining",
            "Pulls left in a registry's current budget window (RateLimit-Remaining)",
            ["registry", "account"],
            registry=r,
        )
        self.quota_waits = Counter(
            "syncd_quota_waits_total",
            "Requests held back because a registry's budget was spent or it asked to wait",
            ["registry"],
            registry=r,
        )
        self.target_bytes = Gauge(
            "syncd_target_bytes",
            "Unique blob bytes of the images kept at a target repository",
            ["target", "repository"],
            registry=r,
        )
        self.referrers_copied = Counter(
            "syncd_referrers_copied_total", "Referrer artifacts copied", ["target"], registry=r
        )
        self.tags_deleted = Counter(
            "syncd_tags_deleted_total",
            "Tags deleted at a target by a rule's prune",
            ["rule", "target"],
            registry=r,
        )
        self.deletions_skipped = Counter(
            "syncd_deletions_skipped_total",
            "Deletions prune did not make, by reason (shared, changed, protected, ...)",
            ["rule", "target", "reason"],
            registry=r,
        )
        # 1 while the last pass of a rule held its deletions at a target back because there
        # were more than max_deletions: the alert's signal (a counter cannot say "still").
        self.prune_held_back = Gauge(
            "syncd_prune_held_back",
            "1 if the last pass held deletions back (more than max_deletions)",
            ["rule", "target"],
            registry=r,
        )
        self.config_reloads = Counter(
            "syncd_config_reloads_total", "Config reloads by result", ["result"], registry=r
        )
        self.last_pass_failures = Gauge(
            "syncd_rule_last_pass_failures",
            "Images that failed in the last pass of a rule",
            ["rule"],
            registry=r,
        )
        self.rule_interval = Gauge(
            "syncd_rule_interval_seconds",
            "Configured interval of a rule (for staleness alerts)",
            ["rule"],
            registry=r,
        )
        # The reload path sets 1 after a good reload and 0 after a rejected one: a counter
        # cannot say whether the *latest* reload failed, which the reload alert needs. It starts
        # at 1 because syncd does not start with an invalid config.
        self.config_last_reload_successful = Gauge(
            "syncd_config_last_reload_successful",
            "1 if the last config (re)load succeeded, 0 if the last reload was rejected",
            registry=r,
        )
        self.config_last_reload_successful.set(1)
        # -- cluster mode (syncd/cluster); absent from the exposition of a single process,
        # whose alerts must not see members or leases that do not exist.
        self.cluster_members = Gauge(
            "syncd_cluster_members", "Live members this replica sees in etcd", registry=None
        )
        self.cluster_expected_members = Gauge(
            "syncd_cluster_expected_members",
            "cluster.expected_members of the config (the alert threshold)",
            registry=None,
        )
        self.cluster_units_owned = Gauge(
            "syncd_cluster_units_owned",
            "Units (rule, source repository) this replica holds a claim on",
            ["replica"],
            registry=None,
        )
        self.cluster_units = Gauge(
            "syncd_cluster_units",
            "Units (rule, source repository) this replica knows",
            registry=None,
        )
        self.cluster_lease_renewals = Counter(
            "syncd_cluster_lease_renewals_total",
            "Renewals of this replica's etcd lease by result",
            ["result"],
            registry=None,
        )
        self.cluster_ready = Gauge(
            "syncd_cluster_ready",
            "1 while this replica holds a live lease and may copy, else 0",
            registry=None,
        )
        self.cluster_etcd_requests = Counter(
            "syncd_cluster_etcd_requests_total",
            "Requests to etcd by operation",
            ["op"],
            registry=None,
        )
        # process_start_time_seconds etc.: a rule that never succeeded since start is aged
        # from the process start by the staleness alert.
        ProcessCollector(registry=r)
        for result in ("success", "failure"):
            self.config_reloads.labels(result=result)

    def enable_cluster(self, *, expected_members: int | None = None) -> None:
        """Expose the cluster metrics (``syncd run`` with a ``cluster:`` section)."""
        if expected_members is not None:
            self.registry.register(self.cluster_expected_members)
            self.cluster_expected_members.set(expected_members)
        for m in (
            self.cluster_members,
            self.cluster_units_owned,
            self.cluster_units,
            self.cluster_lease_renewals,
            self.cluster_ready,
            self.cluster_etcd_requests,
        ):
            self.registry.register(m)
        for result in ("success", "failure"):
            self.cluster_lease_renewals.labels(result=result)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
