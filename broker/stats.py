"""What `broker status`, systemd's STATUS= and the metrics exporter are told.

`Report` assembles the `stats` reply from the pools, pins and counters as
plain values; nothing here changes what it reads. With several loops
(`broker.processes`) each loop publishes its own part every upkeep pass and the
one asked adds up the others'.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from broker import __version__
from broker.config import Config
from broker.dispatch import Dispatch
from broker.ipc import open_files, open_files_limit
from broker.metrics import BrokerMetrics, Exporter
from broker.pinlimit import effective_cap
from broker.processes import LoopSlot
from broker.readsplit import ReadSplit

log = logging.getLogger(__name__)


class Report:
    """The broker's figures, for `stats`, STATUS= and the exporter."""

    def __init__(
        self,
        config: Config,
        dispatch: Dispatch,
        readsplit: ReadSplit,
        metrics: BrokerMetrics,
        refused: Callable[[], int],
        loop: LoopSlot | None,
    ) -> None:
        self.config = config  # replaced on reload
        self._dispatch = dispatch
        self._readsplit = readsplit
        self._metrics = metrics
        self._refused = refused  # clients refused at the open files limit
        self._loop = loop
        self._exporter: Exporter | None = None

    def start_exporter(self, address: str) -> None:
        """Serve Prometheus metrics on address (host:port)."""
        self._exporter = Exporter(address)
        log.info("metrics on http://%s/metrics", address)

    def close(self) -> None:
        """Stop the exporter, if any."""
        if self._exporter is not None:
            self._exporter.close()

    def publish(self) -> None:
        """Hand the latest figures to the sibling loops and the exporter."""
        if self._loop is not None:
            self._loop.publish(self.own())
        if self._exporter is not None:
            self._exporter.update(self.stats())

    def status_line(self) -> str:
        """Return a one-line summary for systemd's STATUS= and logs."""
        parts = []
        for pool in self._dispatch.pools.values():
            state = (
                "unreachable"
                if pool.failing
                else f"{len(pool.backends)}/{pool.config.max_size} conns"
            )
            parts.append(f"{pool.name}: {state}, {len(pool.queue)} waiting")
        return "; ".join(parts) + f"; {len(self._dispatch.pins)} pinned"

    def stats(self) -> dict[str, Any]:
        """Return everything `broker status` shows, as plain values."""
        own = self.own()
        return own if self._loop is None else self._loop.whole(own)

    def own(self) -> dict[str, Any]:
        """Return this loop's figures alone."""
        now = time.monotonic()
        dispatch = self._dispatch
        pools = {name: pool.snapshot() for name, pool in dispatch.pools.items()}
        self._readsplit.add_stats(pools)
        pins = dispatch.pins
        return {
            "version": __version__,
            "pid": os.getpid(),
            "endpoints": list(self.config.broker.endpoint),
            "draining": dispatch.draining,
            "busy_poll_us": self.config.broker.busy_poll_us,
            "open_files": open_files(),
            "open_files_limit": open_files_limit(),
            "refused_at_fd_limit": self._refused(),
            **self._metrics.snapshot(),
            "pools": pools,
            "pins": [pin.snapshot(now) for pin in pins.open.values()],
            "pins_per_client": pins.limits.snapshot(
                {
                    name: effective_cap(p.config.max_pins_per_client, p.config.max_size)
                    for name, p in dispatch.pools.items()
                }
            ),
        }
