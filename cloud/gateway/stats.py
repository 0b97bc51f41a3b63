"""The gateway's own counters (requests, 429s, 401s, latency), in Prometheus text format."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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
