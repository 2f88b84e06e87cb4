"""Prometheus file-based service discovery for a cluster's workers.

Every worker exposes /metrics on its own admin port. The supervisor writes one
``file_sd_configs`` target file at start (atomically: Prometheus re-reads it on change);
each target carries ``shard`` and ``cluster`` labels, so dashboards sum over workers and
can break one out (dashboards/prometheus/prometheus.yml reads ``targets/*.json``).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from switch.cluster.layout import ClusterLayout


class TargetGroup(msgspec.Struct, frozen=True):
    targets: list[str]
    labels: dict[str, str]


def target_groups(layout: ClusterLayout) -> list[TargetGroup]:
    return [TargetGroup([w.admin_address], {"shard": str(w.shard), "cluster": layout.name})
            for w in layout.workers]


def write_file_sd(layout: ClusterLayout, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(target_groups(layout))) + b"\n")
    tmp.replace(target)
    return target
