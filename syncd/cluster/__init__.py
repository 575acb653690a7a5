"""Several ``syncd run`` replicas sharing the rules' work through etcd (``cluster:``).

Importing this package imports the etcd client (the ``syncd[cluster]`` extra); syncd does
so only when the config has a ``cluster:`` section. See docs/cluster.md.
"""

from __future__ import annotations

from syncd.cluster.replica import Replica

__all__ = ["Replica"]
