"""Counters and latency windows; the `stats` reply that `broker status` prints.

Counting sits on the hot path, so it is plain attribute increments and one
deque append per request; percentiles are computed only when someone asks.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterator
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
        self.expired_unread = 0  # read after the client's deadline: never started
        self.slow_kills = 0  # KILL QUERY answered after more than kill_grace
        self.dropped_confirmed = 0  # dropped mid-statement, then seen gone
        self.predecessor_killed = 0  # a dead broker's statements killed at start
        self.opened = 0  # connections opened, first ones included
        self.connect_failures = 0
        self.lost = 0  # connections that died under or between requests
        self.recycled = 0  # closed by max_lifetime, max_uses, idle_timeout, reload
        self.resets = 0
        self.pings = 0  # health checks before handing out an idle connection
        self.pipelined = 0  # reads sent behind another on a busy connection
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


class Exporter:
    """Serves the latest stats snapshot as Prometheus metrics over HTTP.

    The HTTP server runs in its own thread; the I/O loop hands it a fresh
    snapshot every upkeep pass (an atomic reference swap), so a scrape never
    reads state the loop is changing.
    """

    def __init__(self, address: str) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        host, _, port = address.rpartition(":")
        self._snapshot: dict[str, Any] = {}
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._server, self._thread = start_http_server(
            int(port),
            addr=host.strip("[]"),
            registry=registry,
        )

    def update(self, stats: dict[str, Any]) -> None:
        """Publish a new snapshot (the `stats` dict)."""
        self._snapshot = stats

    def collect(self) -> Any:
        """Yield metric families for the latest snapshot (prometheus_client API)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._snapshot
        if not stats:
            return
        info = GaugeMetricFamily("broker_info", "Broker version.", labels=["version"])
        info.add_metric([stats["version"]], 1)
        yield info
        yield GaugeMetricFamily(
            "broker_uptime_seconds", "Seconds since start.", stats["uptime_s"]
        )
        for key, help_text in (
            ("requests", "Requests received."),
            ("bad_requests", "Requests refused as malformed or misaddressed."),
            ("dropped_frames", "Frames dropped unanswered."),
        ):
            yield CounterMetricFamily(f"broker_{key}", help_text, stats[key])
        conns = GaugeMetricFamily(
            "broker_pool_connections",
            "MySQL connections by state.",
            labels=["pool", "state"],
        )
        gauges = {
            "waiting": GaugeMetricFamily(
                "broker_pool_waiting_requests",
                "Requests queued for a connection.",
                labels=["pool"],
            ),
            "max_size": GaugeMetricFamily(
                "broker_pool_max_connections", "The pool's max_size.", labels=["pool"]
            ),
        }
        latency = GaugeMetricFamily(
            "broker_pool_latency_seconds",
            "Request latency in the broker over a recent window.",
            labels=["pool", "quantile"],
        )
        counters = {
            key: CounterMetricFamily(f"broker_pool_{key}", help_text, labels=["pool"])
            for key, help_text in _POOL_COUNTERS.items()
        }
        for name, pool in stats["pools"].items():
            for state in ("idle", "busy", "pinned", "opening"):
                conns.add_metric([name, state], pool[state])
            for key, family in gauges.items():
                family.add_metric([name], pool[key])
            for key, counter in counters.items():
                counter.add_metric([name], pool[key])
            for q in ("p50", "p99"):
                latency.add_metric([name, f"0.{q[1:]}"], pool["latency_ms"][q] / 1000)
        yield conns
        yield from gauges.values()
        yield latency
        yield from counters.values()
        yield from _replica_families(stats)
        pins = GaugeMetricFamily("broker_pins", "Open pins by kind.", labels=["kind"])
        kinds = collections.Counter(pin["kind"] for pin in stats["pins"])
        for kind in ("transaction", "session", "stream"):
            pins.add_metric([kind], kinds[kind])
        yield pins

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


_POOL_COUNTERS = {
    "served": "Requests answered with a result or MySQL's own error.",
    "failed": "Requests answered with a broker-side error.",
    "sql_errors": "MySQL error packets forwarded.",
    "query_timeouts": "Statements cancelled or never sent at their deadline.",
    "pool_timeouts": "Requests refused after queue_timeout.",
    "opened": "MySQL connections opened.",
    "connect_failures": "Failed attempts to open a MySQL connection.",
    "lost": "MySQL connections that died.",
    "recycled": "MySQL connections closed by lifetime, uses, idle time or reload.",
    "resets": "Session resets (COM_RESET_CONNECTION).",
    "pings": "Health checks of idle connections.",
    "pipelined": "Reads sent behind another read on a busy connection.",
    "abandoned": "Pins (transactions, sessions, streams) freed after going silent.",
}


_REPLICA_COUNTERS = {
    "reads": "replica=True reads sent to the replica.",
    "fallbacks": "replica=True reads the primary served while this replica could not.",
    "ryw_waits": "Reads that first waited for the replica to apply a write.",
    "ryw_timeouts": "Such waits that timed out; the primary served the read.",
}


def _replica_families(stats: dict[str, Any]) -> Iterator[Any]:
    """Yield the per-replica metric families of a stats snapshot."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["pool", "replica"]
    state = GaugeMetricFamily(
        "broker_replica_state",
        "1 for the replica's state: serving, lagging or down.",
        labels=[*labels, "state"],
    )
    lag = GaugeMetricFamily(
        "broker_replica_lag_seconds",
        "Seconds_Behind_Master at the last check (NaN when NULL).",
        labels=labels,
    )
    conns = GaugeMetricFamily(
        "broker_replica_connections", "Open connections to the replica.", labels=labels
    )
    counters = {
        key: CounterMetricFamily(f"broker_replica_{key}", text, labels=labels)
        for key, text in _REPLICA_COUNTERS.items()
    }
    for name, pool in stats["pools"].items():
        for r in pool.get("replicas", ()):
            key = [name, r["address"]]
            for s in ("serving", "lagging", "down"):
                state.add_metric([*key, s], 1 if r["state"] == s else 0)
            lag.add_metric(key, math.nan if r["lag_s"] is None else r["lag_s"])
            conns.add_metric(key, r["connections"])
            for k, family in counters.items():
                family.add_metric(key, r[k])
    yield from (state, lag, conns, *counters.values())
