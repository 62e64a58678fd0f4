"""Traffic: the batch shapes a deployment serves, with weights (its share of attention calls or of time).

A traffic file is YAML or CSV. YAML::

    schema_version: 1
    kind: mla-tune/traffic
    shapes:
      - {spec: q1s4k, weight: 30}      # batch spec (see README), weight > 0
      - {spec: 64q1s4k, weight: 50}
      - {spec: 256q1s4k, weight: 20}

CSV: a header ``spec,weight`` and one shape per row. Weights are relative; they need not sum to anything.
The same file is a workload for ``study`` (``--traffic FILE``): its shapes with its weights. Files are read by
``traffic_io``.
"""

from __future__ import annotations

from .traffic_io import MAX_BYTES, MAX_SHAPES, TRAFFIC_KIND, Traffic, load_traffic
from .workloads import get_workload


def workload_traffic(name: str) -> Traffic:
    """A workload (a name, ``spec:...`` or ``traffic:FILE``) as traffic: its shapes with their weights."""
    w = get_workload(name)
    return Traffic(tuple((s.spec, s.weight) for s in w.shapes), f"workload {name}")


def uniform_traffic(specs: list[str], source: str) -> Traffic:
    return Traffic(tuple((s, 1.0) for s in dict.fromkeys(specs)), source)


__all__ = ["MAX_BYTES", "MAX_SHAPES", "TRAFFIC_KIND", "Traffic", "load_traffic", "uniform_traffic",
           "workload_traffic"]
