"""Read/write split: where a ``replica=True`` read runs, and read-your-writes.

`ReadSplit` holds each pool's replicas and decides, for every
`Op.QUERY_REPLICA` and `Op.STREAM_OPEN_REPLICA`, which server runs it. It
then hands the request to `Dispatch.acquire` on the chosen pool,
so queueing, pipelining, deadlines and pins are the primary's code.

- ``replica=True`` allows, never demands: a statement that is not provably a
  plain read (`statement.replica_safe`), or a read with no eligible replica,
  runs on the primary. The reply says which server ran it (`Status.SERVED`).
- Read-your-writes: primary connections report each write's GTID in its OK
  packet (`broker.gtid`); `_learn` keeps the latest per client process
  (``req.client``: host and pid on ipc, the socket on tcp) and per pool
  ("host": every process of this broker's host). A read that must see a
  position goes to a replica known to have applied it, or waits there with
  ``MASTER_GTID_WAIT`` for up to ``replica_wait_timeout``, or, failing both,
  runs on the primary. The position is recorded before the write's reply
  leaves, so any read sent after that reply sees it.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from broker import gtid
from broker.backend import Backend
from broker.config import Config, PoolConfig
from broker.connector import Connector, Outcome
from broker.dispatch import Dispatch
from broker.pool import Pool
from broker.replica import Replica, State
from client import errors
from client.wire import statement
from client.wire.mysql import COM_QUERY
from client.wire.protocol import SERVED_BY_PRIMARY, Op

if TYPE_CHECKING:
    from broker.request import Request

log = logging.getLogger(__name__)

MAX_CLIENTS = 65536  # client positions kept per pool; older ones fold into a floor
WAIT_MARGIN = 0.05  # s of a read's deadline kept for the read after a GTID wait


class ReplicaSet:
    """The replicas of one pool, and the write positions read-your-writes needs."""

    def __init__(self, primary: Pool, replicas: list[Replica]) -> None:
        self.primary = primary
        self.replicas = replicas
        self.host: gtid.Position = {}  # every write through this broker
        self.clients: collections.OrderedDict[Any, gtid.Position] = (
            collections.OrderedDict()
        )
        # Positions of clients forgotten to bound memory: a client without an
        # entry must see at least this, so forgetting never breaks the promise.
        self.floor: gtid.Position = {}
        self.fallbacks = 0  # replica=True reads the primary served
        self.learned = 0  # write GTIDs learned from OK packets

    def need(self, req: Request) -> gtid.Position | None:
        """Return the position a read must see under read_your_writes, or None."""
        mode = self.primary.config.read_your_writes
        if mode == "off":
            return None
        if mode == "host":
            return self.host or None
        pos = self.clients.get(req.client)
        return pos or self.floor or None

    def learn(self, client: Any, pos: gtid.Position) -> None:
        """Record a committed write's GTID for its client and for the host."""
        self.learned += 1
        gtid.advance(self.host, pos)
        if client is None:
            return
        mine = self.clients.get(client)
        if mine is None:
            mine = self.clients[client] = {}
            if len(self.clients) > MAX_CLIENTS:
                _, oldest = self.clients.popitem(last=False)
                gtid.advance(self.floor, oldest)
        else:
            self.clients.move_to_end(client)
        gtid.advance(mine, pos)


class ReadSplit:
    """Every pool's replicas, their checks, and the routing of replica reads."""

    def __init__(
        self, config: Config, connector: Connector, dispatch: Dispatch
    ) -> None:
        self._dispatch = dispatch
        self._connector = connector
        self.sets: dict[str, ReplicaSet] = {}
        for name, cfg in config.pools.items():
            if cfg.replicas:
                replicas = [Replica(rc, connector) for rc in cfg.replica_configs()]
                self.sets[name] = ReplicaSet(dispatch.pools[name], replicas)

    def pools(self) -> list[Pool]:
        """Return every replica's pool, for the broker's upkeep loops."""
        return [r.pool for rs in self.sets.values() for r in rs.replicas]

    def pool_for(self, config: PoolConfig | None) -> Pool | None:
        """Return the replica pool a connection was opened for, if it was."""
        rs = self.sets.get(config.name) if config is not None else None
        if rs is not None:
            for replica in rs.replicas:
                if replica.dsn == config.dsn:  # type: ignore[union-attr]
                    return replica.pool
        return None

    def reroute(self, pool: Pool) -> bool:
        """Send the reads queued on an unreachable replica to the primary instead.

        Returns whether pool is a replica's; they were never sent, so moving
        them is safe.
        """
        for rs in self.sets.values():
            for replica in rs.replicas:
                if replica.pool is pool:
                    while pool.queue:
                        replica.fallbacks += 1
                        self._fallback(pool.dequeue(), rs)
                    return True
        return False

    def start(self) -> None:
        """Open replica connections and start the lag checks."""
        for rs in self.sets.values():
            for replica in rs.replicas:
                replica.pool.open_if_needed()
                replica.start(self._connector.report)

    def close(self) -> None:
        """Stop the lag checks (their threads exit within a check timeout)."""
        for rs in self.sets.values():
            for replica in rs.replicas:
                replica.stop()

    def adopt(self, backend: Backend) -> None:
        """Have a new primary connection report its writes' GTIDs here."""
        rs = self.sets.get(backend.pool.config.name)
        if rs is not None and backend.pool is rs.primary:
            backend.on_state_change = functools.partial(self._learn, rs)

    def _learn(self, rs: ReplicaSet, backend: Backend, data: bytes) -> None:
        pos = gtid.last_gtid(data)
        if pos is None:
            return
        req = backend.request
        if req is None and backend.pin is not None:
            req = backend.pin.request
        rs.learn(req.client if req is not None else None, pos)

    def checked(self, outcome: Outcome) -> None:
        """Apply a lag check the monitor thread reported."""
        replica, check = outcome.tag
        rs = self.sets.get(outcome.pool)
        if rs is None or replica not in rs.replicas:
            return  # from a replica a reload removed
        replica.checked(check, primary_down=rs.primary.failing)

    def reload(self, new: Config) -> None:
        """Apply changed replica settings; a changed replicas list needs a restart."""
        for name, rs in self.sets.items():
            cfg = new.pools.get(name)
            if cfg is None:
                for replica in rs.replicas:
                    replica.pool.retired = True
                    replica.stop()
                continue
            if cfg.replicas != tuple(r.dsn for r in rs.replicas):
                log.warning(
                    "reload: pools.%s.replicas changed but needs a restart; "
                    "keeping the old list",
                    name,
                )
                continue
            for replica, rc in zip(rs.replicas, cfg.replica_configs(), strict=True):
                if rc.connect_args() != replica.pool.config.connect_args() or (
                    rc.init_sql != replica.pool.config.init_sql
                ):
                    replica.pool.generation += 1
                replica.pool.config = rc
        for name, cfg in new.pools.items():
            if cfg.replicas and name not in self.sets:
                log.warning("reload: pools.%s.replicas added but needs a restart", name)

    def add_stats(self, pools: dict[str, dict[str, Any]]) -> None:
        """Add each pool's replicas to its part of `broker status`."""
        for name, rs in self.sets.items():
            if name in pools:
                pools[name]["replicas"] = [r.snapshot() for r in rs.replicas]
                pools[name]["replica_fallbacks"] = rs.fallbacks
                pools[name]["read_your_writes"] = rs.primary.config.read_your_writes
                pools[name]["gtids_learned"] = rs.learned

    # Routing ----------------------------------------------------------------

    def route(self, req: Request) -> None:
        """Run a replica=True read on an eligible replica, else on the primary."""
        stream = req.op == Op.STREAM_OPEN_REPLICA
        req.op = Op.STREAM_OPEN if stream else Op.QUERY
        pool = req.pool
        rs = self.sets.get(pool.config.name) if pool is not None else None
        sql = req.body[0] if stream else req.body
        if rs is None or not statement.replica_safe(sql):
            self._primary(req)
            return
        need = rs.need(req)
        best = covered = None
        best_load = covered_load = 0
        # The primary lost: a replica's next check may not have seen it yet.
        orphaned = rs.primary.failing
        for replica in rs.replicas:
            if replica.pool.failing or not (
                replica.state is State.SERVING or (orphaned and replica.survivor)
            ):
                continue
            load = len(replica.pool.queue) - replica.pool.idle
            if best is None or load < best_load:
                best, best_load = replica, load
            if (
                need
                and gtid.covers(replica.position, need)
                and (covered is None or load < covered_load)
            ):
                covered, covered_load = replica, load
        if best is None:
            for replica in rs.replicas:
                replica.fallbacks += 1
            self._fallback(req, rs)
            return
        if need is None or covered is not None:
            target = covered or best
            target.reads += 1
            req.pool = target.pool
            req.served_by = target.served_by
            self._dispatch.acquire(req)
            return
        self._wait(req, rs, best, need)

    def _primary(self, req: Request) -> None:
        req.served_by = SERVED_BY_PRIMARY
        self._dispatch.acquire(req)

    def _fallback(self, req: Request, rs: ReplicaSet) -> None:
        rs.fallbacks += 1
        req.pool = rs.primary
        self._primary(req)

    def _wait(
        self, req: Request, rs: ReplicaSet, replica: Replica, need: gtid.Position
    ) -> None:
        """Wait on a replica connection until it has applied need, then read there."""
        now = time.monotonic()
        wait = min(
            replica.pool.config.replica_wait_timeout,
            req.deadline - now - WAIT_MARGIN,
        )
        # Held for req, so a deadline or a cancel finds it (KILL QUERY).
        backend = replica.pool.take_idle(req) if wait > 0 else None
        if backend is None:  # no time to wait, or no idle connection to wait on
            replica.fallbacks += 1
            self._fallback(req, rs)
            return
        replica.ryw_waits += 1
        req.pool = replica.pool
        req.served_by = replica.served_by
        sql = f"SELECT MASTER_GTID_WAIT('{gtid.to_text(need)}', {wait:.3f})"
        backend.send(
            COM_QUERY + sql.encode(),
            functools.partial(self._waited, rs, replica, need),
            req.deadline,
        )

    def _waited(
        self,
        rs: ReplicaSet,
        replica: Replica,
        need: gtid.Position,
        backend: Backend,
        data: bytes | None,
        err: errors.Error | None,
    ) -> None:
        dispatch = self._dispatch
        req = backend.request
        if err is not None:
            backend.pool.detach(backend)
            dispatch.lost(backend, None, err)
            if req is not None:  # the read itself was never sent
                replica.fallbacks += 1
                self._fallback(req, rs)
            return
        if req is None:  # answered meanwhile (deadline, cancel); a KILL is coming
            dispatch.after_command(backend)
            return
        if not backend.scanner.error and gtid.first_value(data or b"") == b"0":
            gtid.advance(replica.position, need)
            replica.reads += 1
            dispatch.start(backend, req)  # still held for req: the read goes next
            return
        replica.ryw_timeouts += 1
        replica.fallbacks += 1
        backend.pool.detach(backend)
        dispatch.release(backend)
        self._fallback(req, rs)
