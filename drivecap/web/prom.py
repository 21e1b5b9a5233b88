"""``/metrics``: per-stage latency and counters in the Prometheus text format (prometheus_client's exposition).

Stages are summaries with p50/p95 quantiles over the whole run (the recorder keeps every sample), plus
``_count`` and ``_sum``; the pipeline's counters and the server's own (clients, frames sent, dropped per
client) are counters and gauges. A private registry per server: nothing global, two servers in one process
(tests) do not see each other's figures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from drivecap.metrics import LatencyRecorder, percentile

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(text: str) -> str:
    """A counter name made a valid Prometheus name part (letters, digits, underscores)."""
    return _NAME_OK.sub("_", text).strip("_") or "unnamed"


class _DrivecapCollector(Collector):
    def __init__(self, metrics: LatencyRecorder, extra: Callable[[], dict[str, Any]]) -> None:
        self.metrics = metrics
        self.extra = extra

    def collect(self) -> Iterable[Metric]:
        stages = Metric(
            "drivecap_stage_latency_milliseconds",
            "Per-stage latency of the pipeline and the web server over the run (ms)",
            "summary",
        )
        for stage in sorted(self.metrics.stages()):
            data = self.metrics.samples(stage)
            if not data:
                continue
            for q in (0.5, 0.95):
                stages.add_sample(
                    "drivecap_stage_latency_milliseconds",
                    {"stage": stage, "quantile": str(q)},
                    percentile(data, q * 100),
                )
            stages.add_sample("drivecap_stage_latency_milliseconds_count", {"stage": stage}, len(data))
            stages.add_sample("drivecap_stage_latency_milliseconds_sum", {"stage": stage}, sum(data))
        yield stages
        counts = self.metrics.summary()["counters"]
        assert isinstance(counts, dict)
        pipe = CounterMetricFamily("drivecap_pipeline_events", "Pipeline event counters", labels=["name"])
        for name, value in sorted(counts.items()):
            pipe.add_metric([metric_name(name)], float(value))
        yield pipe
        ex = self.extra()
        for key, value in sorted(ex.get("counters", {}).items()):
            c = CounterMetricFamily(f"drivecap_web_{key}", f"web server: {key.replace('_', ' ')}")
            c.add_metric([], float(value))
            yield c
        for key, value in sorted(ex.get("gauges", {}).items()):
            g = GaugeMetricFamily(f"drivecap_web_{key}", f"web server: {key.replace('_', ' ')}")
            g.add_metric([], float(value))
            yield g
        per = GaugeMetricFamily(
            "drivecap_web_client_dropped_frames",
            "Frames a connected client missed because a newer one replaced them (newest wins)",
            labels=["client", "kind"],
        )
        for cid, kind, dropped in ex.get("clients", []):
            per.add_metric([str(cid), kind], float(dropped))
        yield per


def render(metrics: LatencyRecorder, extra: Callable[[], dict[str, Any]]) -> bytes:
    """The exposition text of one scrape."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_DrivecapCollector(metrics, extra))
    return generate_latest(reg)
