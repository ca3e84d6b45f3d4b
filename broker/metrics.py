"""Counters and latency windows; the `stats` reply that `broker status` prints.

Counting sits on the hot path, so it is plain attribute increments and one
deque append per request; percentiles are computed only when someone asks.
"""

from __future__ import annotations

import collections
import time
from typing import Any

LATENCY_WINDOW = 4096  # recent requests the percentiles are taken over


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the value at fraction (0..1) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


class PoolMetrics:
    """What one pool has done since the broker started."""

    def __init__(self) -> None:
        self.served = 0  # requests answered with a result (or MySQL's own error)
        self.failed = 0  # requests answered with a broker-side error
        self.sql_errors = 0  # MySQL error packets forwarded
        self.query_timeouts = 0
        self.pool_timeouts = 0
        self.opened = 0  # connections opened, first ones included
        self.connect_failures = 0
        self.lost = 0  # connections that died under or between requests
        self.recycled = 0  # closed by max_lifetime, max_uses, idle_timeout, reload
        self.resets = 0
        self.pings = 0  # health checks before handing out an idle connection
        self.abandoned = 0  # pins freed after transaction_idle_timeout
        self.latencies: collections.deque[float] = collections.deque(
            maxlen=LATENCY_WINDOW
        )

    def snapshot(self) -> dict[str, Any]:
        """Return the counters and latency percentiles as plain values."""
        ordered = sorted(self.latencies)
        counters = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        return {
            **counters,
            "latency_ms": {
                "p50": round(percentile(ordered, 0.50) * 1000, 3),
                "p99": round(percentile(ordered, 0.99) * 1000, 3),
                "samples": len(ordered),
            },
        }


class BrokerMetrics:
    """What the broker as a whole has seen, apart from any pool."""

    def __init__(self) -> None:
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.requests = 0
        self.bad_requests = 0  # answered with InterfaceError/ProgrammingError
        self.dropped_frames = 0  # too broken to answer, or for a vanished peer
        self.refused_draining = 0

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as plain values."""
        return {
            "requests": self.requests,
            "bad_requests": self.bad_requests,
            "dropped_frames": self.dropped_frames,
            "refused_draining": self.refused_draining,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "started": self.started,
        }
