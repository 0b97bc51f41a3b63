"""The gateway's own counters (requests, 429s, 401s, latency), in Prometheus text format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.gateway.pool import Replica

__all__ = ["GatewayStats"]


@dataclass(slots=True)
class GatewayStats:
    """The gateway's own counters, exposed at /gateway/metrics."""

    responses: Counter[int] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    unauthorized: int = 0
    upstream_requests: int = 0
    latency_sum_s: float = 0.0
    latency_count: int = 0

    def render(self, in_flight: int, *, load_stale: bool = False, poll_failures: int = 0) -> str:
        lines = ["# TYPE tandem_gateway_responses_total counter"]
        lines += [
            f'tandem_gateway_responses_total{{status="{s}"}} {n}'
            for s, n in sorted(self.responses.items())
        ]
        lines.append("# TYPE tandem_gateway_rejected_total counter")
        lines += [
            f'tandem_gateway_rejected_total{{reason="{r}"}} {n}'
            for r, n in sorted(self.rejected.items())
        ]
        lines += [
            "# TYPE tandem_gateway_unauthorized_total counter",
            f"tandem_gateway_unauthorized_total {self.unauthorized}",
            "# TYPE tandem_gateway_upstream_requests_total counter",
            f"tandem_gateway_upstream_requests_total {self.upstream_requests}",
            "# TYPE tandem_gateway_in_flight gauge",
            f"tandem_gateway_in_flight {in_flight}",
            "# TYPE tandem_gateway_engine_load_stale gauge",
            f"tandem_gateway_engine_load_stale {int(load_stale)}",
            "# TYPE tandem_gateway_metrics_poll_failures_total counter",
            f"tandem_gateway_metrics_poll_failures_total {poll_failures}",
            "# TYPE tandem_gateway_latency_seconds summary",
            f"tandem_gateway_latency_seconds_sum {self.latency_sum_s:.6f}",
            f"tandem_gateway_latency_seconds_count {self.latency_count}",
        ]
        return "\n".join(lines) + "\n"

    def render_replicas(self, replicas: Sequence[Replica], *, queued: int = 0) -> str:
        """Each replica's state (serving, warming, down), load and returns after a restart."""
        lines = [
            "# TYPE tandem_gateway_queued gauge",
            f"tandem_gateway_queued {queued}",
            "# TYPE tandem_gateway_replica_up gauge",
        ]
        for index, r in enumerate(replicas):
            labels = f'replica="{index}",url="{r.url or "-"}",state="{r.state}"'
            lines.append(f"tandem_gateway_replica_up{{{labels}}} {int(r.state == 'serving')}")
        for metric, value in (
            ("replica_waiting", lambda r: r.load.waiting),
            ("replica_running", lambda r: r.load.running),
            ("replica_kv_cache_usage", lambda r: r.load.kv_cache_usage),
            ("replica_returns_total", lambda r: r.returns),
        ):
            lines.append(f"# TYPE tandem_gateway_{metric} gauge")
            lines += [
                f'tandem_gateway_{metric}{{replica="{i}"}} {value(r):g}'
                for i, r in enumerate(replicas)
            ]
        return "\n".join(lines) + "\n"
