"""SIGHUP: re-read the config and apply what can change while running.

An invalid new config is rejected whole and the running one kept. Keys that
need a restart (`broker.config.needs_restart`) are logged and keep their
running values. Pool sizes and timeouts apply at once; changed connection
settings (DSN, password, init_sql) replace connections as they come free; a
removed pool finishes what it runs and closes; a new one opens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from broker.config import Config, ConfigError, keep_restart_keys, needs_restart
from broker.connector import Connector
from broker.dispatch import Dispatch
from broker.frontend import Frontend
from broker.pool import Pool
from broker.readsplit import ReadSplit
from broker.systemd import Notifier

log = logging.getLogger(__name__)


class Reloader:
    """Applies a re-read config to the running pools, frontend and replicas."""

    def __init__(
        self,
        load: Callable[[], Config] | None,
        notifier: Notifier,
        connector: Connector,
        frontend: Frontend,
        dispatch: Dispatch,
        readsplit: ReadSplit,
    ) -> None:
        self._load = load
        self._notifier = notifier
        self._connector = connector
        self._frontend = frontend
        self._dispatch = dispatch
        self._readsplit = readsplit

    def reload(self, running: Config) -> Config:
        """Return the config to run from now on: the new one, or running if invalid."""
        if self._load is None:
            return running
        status_line = self._frontend.report.status_line
        self._notifier.reloading()
        try:
            new = self._load()
        except ConfigError as err:
            log.error("reload rejected, keeping the running config: %s", err)
            self._notifier.ready(status_line())
            return running
        for key in needs_restart(running, new):
            log.warning(
                "reload: %s changed but needs a restart; keeping the old value", key
            )
        new = keep_restart_keys(running, new)
        logging.getLogger().setLevel(new.broker.log_level.upper())
        # New connections take the new size limit; existing ones keep theirs.
        self._frontend.set_max_message_bytes(new.broker.max_message_bytes)
        self._apply_pools(new)
        self._readsplit.reload(new)
        self._frontend.config = self._frontend.report.config = new
        dispatch = self._dispatch
        for pool in dispatch.all_pools():
            for backend in pool.idle_to_close(time.monotonic()):
                pool.metrics.recycled += 1
                dispatch.forget(backend)
            pool.open_if_needed()
            dispatch.serve_queue(pool)
        log.info("reload: applied (%s)", status_line())
        self._notifier.ready(status_line())
        return new

    def _apply_pools(self, new: Config) -> None:
        pools = self._dispatch.pools
        for name, cfg in new.pools.items():
            pool = pools.get(name)
            if pool is not None and pool.retired:
                pool.retired = False  # back in the config
                pool.generation += 1  # its old connections were on their way out
            if pool is None:
                pools[name] = Pool(cfg, self._connector)
                log.info("reload: new pool %s", name)
                continue
            if (
                cfg.connect_args() != pool.config.connect_args()
                or cfg.init_sql != pool.config.init_sql
            ):
                pool.generation += 1  # replace connections as they come free
                pool.info = None
                log.info(
                    "reload: pool %s connection settings changed; "
                    "replacing connections",
                    name,
                )
            pool.config = cfg
        for name, pool in pools.items():
            if name not in new.pools:
                pool.retired = True
                log.info(
                    "reload: pool %s removed; closing its connections as they free",
                    name,
                )
