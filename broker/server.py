"""The I/O thread: owns the ROUTER socket, routes to workers, queues, deadlines, pins.

One thread multiplexes the ROUTER socket, every MySQL socket and a wake-up
pipe (signals, connector results) in one epoll `Poller`. Measured on 2 cores, this
beat an I/O thread handing requests to pymysql worker threads by about 2x: the
GIL and per-query thread hand-offs, not MySQL, were the ceiling.

The loop decodes only the request envelope, never rows: SQL arrives rendered,
results leave as MySQL's own packets. Invariants:

- a worker runs one command at a time and is held by exactly one of: its
  pool's idle list, the request it runs, a `Pin`, or its reset;
- a request is answered exactly once; a reply for a peer that vanished is
  dropped and counted;
- a statement is never re-sent after it may have reached MySQL;
- nothing here blocks: connects and KILL QUERY run in `Connector` threads.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from broker import __version__
from broker.config import (
    Config,
    ConfigError,
    PoolConfig,
    keep_restart_keys,
    needs_restart,
)
from broker.connector import (
    KILL_CONNECT_TIMEOUT,
    Connector,
    Outcome,
    setup_statements,
)
from broker.ipc import (
    Listener,
    Peer,
    listen_unix,
    open_files,
    open_files_limit,
    raise_open_files_limit,
)
from broker.loops import LoopSlot
from broker.metrics import BrokerMetrics, Exporter
from broker.pinlimit import OPENS_PIN, PinLimits, effective_cap
from broker.poller import POLLIN, POLLOUT, Poller
from broker.pool import MAX_QUEUE, Pool
from broker.readsplit import ReadSplit
from broker.request import (
    PeerId,
    Pin,
    Request,
    begin_statements,
    check_body,
    start_by,
)
from broker.systemd import Notifier
from broker.worker import (
    COM_PING,
    COM_QUERY,
    COM_RESET_CONNECTION,
    State,
    Worker,
    error_from_packets,
)
from client import errors
from client.wire import statement
from client.wire.mysql import IN_TRANS
from client.wire.protocol import (
    INFO_CHARSET,
    INFO_MAX_MESSAGE_BYTES,
    INFO_SERVER_STATUS,
    INFO_SERVER_VERSION,
    Op,
    ProtocolError,
    Status,
    decode_request,
    encode_reply,
    peek_req_id,
)

log = logging.getLogger(__name__)

TICK = 0.02  # seconds between deadline checks: the precision of timeouts
JANITOR_EVERY = 0.5  # seconds between upkeep passes (recycling, idle pins)
PING_AFTER_IDLE = 5.0  # health-check a connection idle longer than this before use
# Pipeline a read only behind one sent this recently: one that has run longer
# may be slow, and whatever waits behind it on its connection waits as long.
PIPELINE_WINDOW = 0.002
MAX_PIPED_BYTES = 65536  # longer statements gain nothing from sharing a trip
ROUTER_BATCH = 256  # requests taken per wake-up before MySQL sockets get a turn
HARD_LIMIT_FACTOR = 4  # libzmq drops (unanswered) frames over this x max_message_bytes
ENDED_PINS_KEPT = 4096  # remember why recent pins ended, to say so to late users
_UNCOUNTED = frozenset({Op.PING, Op.STATS, Op.CANCEL})  # never refused: liveness
_INTERRUPTED = frozenset({1317, 1028})  # "query execution was interrupted", "aborted"


def _may_write(req: Request) -> bool:
    """Whether a request's statement may change data (so a cancel must wait)."""
    return req.op in (Op.EXECUTEMANY, Op.COMMIT) or (
        req.op == Op.QUERY and not statement.is_read(req.body)
    )


def _pipeable(req: Request) -> bool:
    """Whether a request is a plain read that may wait behind another on a connection.

    Its result does not depend on what ran before it on the connection, it
    leaves nothing behind for what runs after, and repeating it is harmless
    (see `Server._query_done`: a read hit by a KILL QUERY meant for the one
    ahead of it runs again).
    """
    body = req.body
    return (
        req.op == Op.QUERY
        and len(body) < MAX_PIPED_BYTES
        and statement.is_read(body)
        and statement.leaves_session_clean(body)
    )


def _runnable() -> int | None:
    """Return how many threads on the host are runnable now (this one included).

    None when /proc/loadavg cannot be read: not Linux, or hidden (systemd's
    ProcSubset=pid).
    """
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _database_error(err: Exception) -> errors.Error:
    """Return a client error for a failed connect (a pymysql error, usually)."""
    code = err.args[0] if err.args and isinstance(err.args[0], int) else 2003
    msg = err.args[1] if len(err.args) > 1 else str(err)
    return errors.OperationalError(code, f"cannot reach MySQL: {msg}")


class Server:
    """The broker's event loop and everything it routes."""

    def __init__(
        self,
        config: Config,
        reload: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        loop: LoopSlot | None = None,
    ) -> None:
        self.config = config
        self._reload_config = reload
        self._loop_slot = loop  # one of several loops (`[broker] loops`), or None
        self.notifier = loop.notifier() if loop else (notifier or Notifier())
        self.metrics = BrokerMetrics()
        self._ctx = zmq.Context(io_threads=1)
        self.router = self._ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(
            zmq.MAXMSGSIZE, config.broker.max_message_bytes * HARD_LIMIT_FACTOR
        )
        self.poller = Poller()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, POLLIN)
        self.connector = Connector(self._wake_w)
        self.pools: dict[str, Pool] = {
            name: Pool(cfg, self.connector) for name, cfg in config.pools.items()
        }
        self.readsplit = ReadSplit(self)  # replicas: lag checks, read routing
        self._workers: dict[int, Worker] = {}
        self.pins: dict[int, Pin] = {}
        self.pin_limits = PinLimits()  # max_pins_per_client
        self._inflight: dict[
            Any, int
        ] = {}  # requests per client process, until answered
        self._ended: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._exporter: Exporter | None = None
        self._curve = False
        self._auth: Any = None  # the ZAP handler thread, with CurveZMQ
        self._listeners: dict[int, Listener] = {}
        self._peers: dict[int, Peer] = {}
        self._stop = False
        self.draining = False
        self._drain_deadline = 0.0
        self._ready = False
        self._exit_code = 0
        self._next_tick = 0.0
        self._spare_cpu = True  # busy polling only takes a CPU nobody else wants
        self._cpus = len(os.sched_getaffinity(0))
        self._load_unknown_said = False
        self._next_janitor = 0.0
        self._handlers: dict[int, Callable[[Request], None]] = {
            Op.PING: self._op_ping,
            Op.HELLO: self._op_hello,
            Op.STATS: self._op_stats,
            Op.CANCEL: self._op_cancel,
            Op.QUERY: self._op_acquire,
            Op.EXECUTEMANY: self._op_acquire,
            Op.BEGIN: self._op_acquire,
            Op.SESSION_OPEN: self._op_acquire,
            Op.STREAM_OPEN: self._op_acquire,
            Op.QUERY_REPLICA: self.readsplit.route,
            Op.STREAM_OPEN_REPLICA: self.readsplit.route,
        }

    # Setup and teardown ---------------------------------------------------------

    def bind(self, listening: dict[str, socket.socket] | None = None) -> None:
        """Listen on every endpoint: ipc natively, anything else on the ROUTER.

        ``listening`` holds ipc sockets bound by the parent of several loops;
        tcp endpoints and the metrics exporter then belong to loop 0 alone.
        """
        first = self._loop_slot is None or self._loop_slot.index == 0
        if first:
            self._secure_router()
        soft, hard = raise_open_files_limit()
        log.info("open files limit %d (hard %d): about that many clients", soft, hard)
        for endpoint in self.config.broker.endpoint:
            if endpoint.startswith("ipc://"):
                path = endpoint[len("ipc://") :]
                inherited = (listening or {}).get(path)
                sock = inherited or listen_unix(
                    path,
                    self.config.broker.socket_mode,
                    self.config.broker.socket_group,
                )
                listener = Listener(path, sock, self.poller, owner=inherited is None)
                self._listeners[listener.fd] = listener
            elif not first:
                continue
            else:
                self.router.bind(endpoint)
                if self.router not in self.poller:
                    # Polled only when bound: zmq_poll on a libzmq socket costs
                    # more per wake-up than on a plain file descriptor.
                    self.poller.register(self.router, POLLIN)
            log.info("listening on %s", endpoint)
        if self.config.broker.metrics_address and first:
            self._exporter = Exporter(self.config.broker.metrics_address)
            log.info("metrics on http://%s/metrics", self.config.broker.metrics_address)

    def _secure_router(self) -> None:
        """Make the ROUTER a CurveZMQ server when keys are configured."""
        cfg = self.config.broker
        if cfg.curve_secret_key is None:
            for endpoint in cfg.endpoint:
                if endpoint.startswith("tcp://") and cfg.allow_insecure_tcp:
                    log.warning(
                        "%s serves plain tcp (allow_insecure_tcp): anyone who reaches "
                        "it can run SQL as the pools' users",
                        endpoint,
                    )
            return
        from zmq.auth import load_certificate
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = load_certificate(cfg.curve_secret_key)
        if secret is None:
            raise OSError(f"{cfg.curve_secret_key} holds no secret key")
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("broker.zap"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=cfg.curve_authorized_keys)
        self.router.curve_secretkey = secret
        self.router.curve_publickey = public
        self.router.curve_server = True
        self._curve = True
        log.info(
            "tcp endpoints use CurveZMQ; authorised keys in %s",
            cfg.curve_authorized_keys,
        )

    def start_pools(self) -> None:
        """Open every pool's min_size connections in the background.

        First each pool kills what a dead predecessor left running on its
        account (`broker.reaper`), so the two never hold more than max_size.
        """
        for pool in self.pools.values():
            pool.sweeping = True
            self.connector.sweep(pool.config)
        self.readsplit.start()

    def _all_pools(self) -> list[Pool]:
        """Return the configured pools and their replicas' pools."""
        return [*self.pools.values(), *self.readsplit.pools()]

    def close(self) -> None:
        """Close every connection and socket, and remove ipc socket files."""
        self.readsplit.close()
        for worker in list(self._workers.values()):
            worker.close()
        self._workers.clear()
        for peer in list(self._peers.values()):
            peer.close()
        for listener in self._listeners.values():
            listener.close()
        if self._exporter is not None:
            self._exporter.close()
        self.connector.shutdown()
        if self._auth is not None:
            self._auth.stop()
        self.router.close(linger=0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.poller.close()
        self.notifier.close()

    # The loop -------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT and the drain after it; return the exit code."""
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._exit_code

    @staticmethod
    def _on_signal(signum: int, frame: object) -> None:
        # Signal handler: do nothing here. The wake-up fd carries the signal
        # number to the loop, which acts on it outside the handler.
        return

    def _loop(self) -> None:
        poll = self.poller.poll
        router = self.router
        workers, peers = self._workers, self._peers
        events: list = []
        while not self._stop:
            # Spin only while traffic flows: after a wake-up that brought events.
            spin = self.config.broker.busy_poll_us if events and self._spare_cpu else 0
            events = poll(0 if spin else TICK * 1000)
            if spin and not events:
                events = self._busy_poll(spin / 1e6) or poll(TICK * 1000)
            for sock, event in events:
                if sock is router:
                    self._drain_router()
                elif (peer := peers.get(sock)) is not None:
                    if event & POLLOUT:
                        peer.flush()
                    if event & POLLIN and not peer.closed:
                        peer.on_readable()
                elif (worker := workers.get(sock)) is not None:
                    if event & POLLOUT:
                        worker.flush()
                    if event & POLLIN and worker.state is not State.CLOSED:
                        worker.on_readable()
                elif sock == self._wake_r:
                    self._on_wake()
                elif (listener := self._listeners.get(sock)) is not None:
                    self._accept(listener)
            now = time.monotonic()
            if now >= self._next_tick:
                self._tick(now)

    def _busy_poll(self, seconds: float) -> list:
        """Poll without sleeping for a while; return what arrived (or []).

        Going to sleep and being woken costs a few tens of µs on a VM each
        time, and under steady traffic the next request or MySQL response
        is usually that close. sched_yield lets any runnable process have
        the CPU first, so the spin only uses time nobody else wants.
        """
        poll, clock, yield_cpu = self.poller.poll, time.perf_counter, os.sched_yield
        until = clock() + seconds
        while clock() < until:
            yield_cpu()
            if events := poll(0):
                return events
        return []

    def _accept(self, listener: Listener) -> None:
        limit = self.config.broker.max_message_bytes * HARD_LIMIT_FACTOR
        for conn in listener.accept():
            peer = Peer(
                conn, self.poller, self._on_peer_message, limit, self._forget_peer
            )
            if not peer.closed:
                self._peers[peer.fd] = peer

    def _forget_peer(self, peer: Peer) -> None:
        if self._peers.get(peer.fd) is peer:
            del self._peers[peer.fd]

    def _on_peer_message(
        self, peer: Peer, frame: bytes | None, problem: str | None
    ) -> None:
        if problem is None:
            self._handle(peer, frame)  # type: ignore[arg-type]
        elif frame is None:
            self.metrics.dropped_frames += 1  # protocol broken: the peer is dropped
        else:
            self._refuse(peer, frame, problem)

    def _drain_router(self) -> None:
        router = self.router
        recv = router.recv
        for _ in range(ROUTER_BATCH):
            if not router.getsockopt(zmq.EVENTS) & POLLIN:
                return
            peer = recv()
            key = None
            if self._curve:
                message = recv(copy=False)
                frame, key = message.bytes, message.get("User-Id")
            else:
                frame = recv()
            if router.getsockopt(zmq.RCVMORE):
                while router.getsockopt(zmq.RCVMORE):
                    recv()
                self._refuse(peer, frame, "a request must be a single frame")
                continue
            self._handle(peer, frame, key)

    # Requests ---------------------------------------------------------------------

    def _handle(self, peer: PeerId, frame: bytes, key: str | None = None) -> None:
        """Decode and route one request; key is the CurveZMQ client key (tcp)."""
        self.metrics.requests += 1
        if len(frame) > self.config.broker.max_message_bytes:
            self._refuse(
                peer,
                frame,
                f"request of {len(frame)} bytes exceeds max_message_bytes "
                f"({self.config.broker.max_message_bytes})",
                errors.ER_TOO_LARGE,
            )
            return
        try:
            req_id, op, pool_name, timeout, pin, body, until = decode_request(frame)
        except ProtocolError as err:
            self._refuse(peer, frame, str(err))
            return
        pool = None
        owner = (peer.client or peer) if type(peer) is Peer else key
        if pin:
            pin_obj = self.pins.get(pin)
            if pin_obj is not None and pin_obj.owner not in (None, owner):
                pin_obj = None  # someone else's: answered as unknown below
            pool = pin_obj.pool if pin_obj is not None else None
        elif op not in (Op.PING, Op.STATS, Op.CANCEL):
            pool = self.pools.get(pool_name)
            allowed = pool.config.allowed_keys if pool is not None else ()
            if allowed and type(peer) is not Peer and key not in allowed:
                self.metrics.bad_requests += 1
                denied = errors.ProgrammingError(
                    errors.ER_UNKNOWN_POOL,
                    f"this client's key may not use pool {pool_name!r} (allowed_keys)",
                )
                self._send(peer, req_id, Status.ERROR, errors.to_wire(denied))
                return
            if pool is None or pool.retired:
                self.metrics.bad_requests += 1
                self._send(
                    peer,
                    req_id,
                    Status.ERROR,
                    errors.to_wire(
                        errors.ProgrammingError(
                            errors.ER_UNKNOWN_POOL,
                            f"unknown pool {pool_name!r}; the broker has "
                            f"{', '.join(sorted(self.pools))}",
                        )
                    ),
                )
                return
        req = Request(peer, req_id, op, pool, pin, body)
        req.owner = owner
        limit = pool.config.query_timeout if pool is not None else timeout
        req.timeout = min(timeout, limit)
        req.deadline = req.received + req.timeout
        if not start_by(req, until, type(peer) is Peer) and pool is not None:
            self._expired_unread(req)
            return
        problem = check_body(op, pin, body)
        if problem:
            self._fail(req, errors.InterfaceError(errors.ER_BAD_REQUEST, problem))
            self.metrics.bad_requests += 1
            return
        if op not in _UNCOUNTED and not self._count_in(req):
            return
        if op in OPENS_PIN and not pin:
            refusal = self.pin_limits.take(req)
            if refusal is not None:
                self._fail(req, refusal)
                return
        if pin:
            self._op_pinned(req)
        else:
            self._handlers[op](req)

    def _expired_unread(self, req: Request) -> None:
        """Refuse a request read after its client's deadline: never start it."""
        req.pool.metrics.expired_unread += 1
        log.debug(  # a stopped broker wakes to many: the counter tells it
            "pool %s: request %d of op %s read after its caller's deadline; not run",
            req.pool.name,
            req.req_id,
            Op(req.op).name,
        )
        self._fail(
            req,
            errors.QueryTimeout(
                errors.ER_QUERY_TIMEOUT,
                "the request's deadline passed before the broker read it "
                "(was the broker stopped?); the statement was not run",
            ),
        )

    def _count_in(self, req: Request) -> bool:
        """Count a request against its client's in-flight limit; refuse the excess."""
        peer = req.peer
        client = (peer.client or peer) if type(peer) is Peer else peer
        count = self._inflight.get(client, 0)
        limit = self.config.broker.max_inflight_per_client
        if limit and count >= limit:
            who = (
                f"pid {client[1]} on {client[0]}"
                if type(client) is tuple
                else "this client"
            )
            self._fail(
                req,
                errors.OperationalError(
                    errors.ER_TOO_MANY_INFLIGHT,
                    f"{who} already has {count} requests running or queued "
                    f"(max_inflight_per_client = {limit}); refused",
                ),
            )
            return False
        self._inflight[client] = count + 1
        req.client = client
        return True

    def _refuse(
        self,
        peer: PeerId,
        frame: bytes,
        problem: str,
        code: int = errors.ER_BAD_REQUEST,
    ) -> None:
        """Answer a request the protocol cannot accept, or drop it if it names no id."""
        req_id = peek_req_id(frame)
        if req_id is None:
            self.metrics.dropped_frames += 1
            log.debug("dropped a frame of %d bytes: %s", len(frame), problem)
            return
        self.metrics.bad_requests += 1
        self._send(
            peer,
            req_id,
            Status.ERROR,
            errors.to_wire(errors.InterfaceError(code, problem)),
        )

    def _send(self, peer: PeerId, req_id: int, status: int, body: Any) -> None:
        if type(peer) is Peer:
            if peer.closed:
                self.metrics.dropped_frames += 1
            else:
                peer.write_frame(encode_reply(req_id, status, body))
            return
        try:
            self.router.send(peer, zmq.SNDMORE | zmq.NOBLOCK)
            self.router.send(encode_reply(req_id, status, body), zmq.NOBLOCK)
        except zmq.ZMQError:
            # ROUTER_MANDATORY: the peer is gone or not reading. Count it.
            self.metrics.dropped_frames += 1

    def _answer(self, req: Request, status: int, body: Any) -> None:
        """Send a request's one reply, and count it out of its client's in-flight."""
        self.pin_limits.answered(req)
        client = req.client
        if client is not None:
            req.client = None
            left = self._inflight[client] - 1
            if left:
                self._inflight[client] = left
            else:
                del self._inflight[client]
        self._send(req.peer, req.req_id, status, body)

    def _reply(self, req: Request, status: int, body: Any) -> None:
        if req.served_by is not None:  # a replica op: say which server ran it
            status, body = Status.SERVED, [req.served_by, status, body]
        self._answer(req, status, body)
        if req.pool is not None:
            req.pool.metrics.latencies.append(time.monotonic() - req.received)
            req.pool.metrics.served += 1

    def _fail(self, req: Request, err: errors.Error) -> None:
        self._answer(req, Status.ERROR, errors.to_wire(err))
        if req.pool is not None:
            req.pool.metrics.failed += 1

    def _op_ping(self, req: Request) -> None:
        self._answer(req, Status.VALUE, __version__)

    def _op_stats(self, req: Request) -> None:
        self._answer(req, Status.VALUE, self.stats())

    def _op_cancel(self, req: Request) -> None:
        """Cancel the sender's running request whose id the body names (KILL QUERY)."""
        target = req.body
        for worker in self._workers.values():
            running = worker.request
            if running is None and worker.pin is not None:
                running = worker.pin.request
            if (
                running is not None
                and running.req_id == target
                and running.peer == req.peer
            ):
                self._cancel(worker, time.monotonic(), "cancelled by the client")
                self._answer(req, Status.VALUE, True)
                return
            for piped in worker.piped:
                if piped.req_id == target and piped.peer == req.peer:
                    if not piped.cancelled:
                        self._drop_piped(piped, "cancelled by the client")
                    self._answer(req, Status.VALUE, True)
                    return
        for pool in self._all_pools():
            for queued in pool.queue:
                if queued.req_id == target and queued.peer == req.peer:
                    # Still waiting for a connection: it must never be sent.
                    pool.queue.remove(queued)
                    self._fail(
                        queued,
                        errors.QueryTimeout(
                            errors.ER_QUERY_TIMEOUT,
                            "statement cancelled by the client before it was sent",
                        ),
                    )
                    self._answer(req, Status.VALUE, True)
                    return
        self._answer(req, Status.VALUE, False)

    def _op_hello(self, req: Request) -> None:
        pool = req.pool
        assert pool is not None  # noqa: S101  _handle resolved it
        if pool.info is None:
            self._op_acquire(req)  # learn the server's status from a connection
            return
        self._answer(req, Status.VALUE, self._pool_info(pool))

    def _pool_info(self, pool: Pool) -> dict[str, Any]:
        info = pool.info or {}
        return {
            INFO_CHARSET: pool.config.charset,
            INFO_SERVER_STATUS: info.get("server_status", 0),
            INFO_SERVER_VERSION: info.get("server_version", ""),
            INFO_MAX_MESSAGE_BYTES: self.config.broker.max_message_bytes,
        }

    def _op_acquire(self, req: Request) -> None:
        """Give the request a free worker, or queue it."""
        pool = req.pool
        assert pool is not None  # noqa: S101
        if self.draining:
            self.metrics.refused_draining += 1
            self._fail(
                req,
                errors.BrokerUnavailable(
                    errors.ER_BROKER_UNAVAILABLE,
                    "broker is shutting down; retry on its successor",
                ),
            )
            return
        if pool.failing:
            if pool.connect_now(time.monotonic()):
                pool.queue.append(req)  # answered by the connect's outcome
                return
            self._fail(req, _database_error(pool.last_error))  # type: ignore[arg-type]
            return
        worker = pool.check_out()
        if worker is not None:
            self._start(worker, req)
            return
        if pool.config.pipeline_depth > 1:
            req.pipeable = _pipeable(req)
            if req.pipeable and not pool.queue:
                worker = self._pipeline_target(pool)
                if worker is not None:
                    self._pipe(worker, req)
                    return
        if len(pool.queue) >= MAX_QUEUE:
            pool.metrics.pool_timeouts += 1
            self._fail(
                req,
                errors.PoolTimeout(
                    errors.ER_POOL_TIMEOUT,
                    f"pool {pool.name}: {MAX_QUEUE} requests already wait",
                ),
            )
        else:
            pool.queue.append(req)
            pool.open_if_needed()  # room for one more now that it waits

    def _pipeline_target(self, pool: Pool) -> Worker | None:
        """Return the busy connection with the fewest reads behind a fresh read."""
        room = pool.config.pipeline_depth - 1
        fresh = time.monotonic() - PIPELINE_WINDOW
        best = None
        for worker in pool.workers:
            if (
                worker.pipe_ok
                and worker.request is not None
                and not worker.cancelling
                and worker.head_since >= fresh
                and len(worker.piped) < room
                and (best is None or len(worker.piped) < len(best.piped))
            ):
                best = worker
        return best

    def _pipe(self, worker: Worker, req: Request) -> None:
        worker.pipe(COM_QUERY + req.body, req)
        worker.pool.metrics.pipelined += 1

    def _fill_pipeline(self, worker: Worker) -> None:
        """Send the plain reads at the head of the queue behind the one just sent."""
        queue = worker.pool.queue
        room = worker.pool.config.pipeline_depth - 1
        while queue and queue[0].pipeable and len(worker.piped) < room:
            req = queue.popleft()
            if time.monotonic() < req.deadline:
                self._pipe(worker, req)
            else:
                self._timeout_unsent(req)

    def _start(self, worker: Worker, req: Request) -> None:
        """Run req on a checked-out worker, health-checking it first if it sat idle."""
        now = time.monotonic()
        if now >= req.deadline:
            self._timeout_unsent(req)
            self._release(worker)
            return
        worker.request = req
        if now - worker.last_used > PING_AFTER_IDLE:
            worker.pool.metrics.pings += 1
            worker.send(COM_PING, self._pinged, req.deadline)
            return
        self._begin_work(worker, req)

    def _pinged(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = worker.request
        worker.request = None
        pool = worker.pool
        if err is not None or worker.scanner.error:
            # The statement was never sent, so the request may wait for another.
            log.warning(
                "pool %s: connection %d failed its health check; replacing it",
                pool.name,
                worker.thread_id,
            )
            pool.metrics.lost += 1
            self._forget(worker)
            if req is not None:
                pool.queue.appendleft(req)
                self._dispatch(pool)
            return
        if req is None or req.cancelled:  # cancelled while pinging: never sent
            if req is not None:
                worker.request = None
                self._fail(
                    req,
                    errors.QueryTimeout(
                        errors.ER_QUERY_TIMEOUT,
                        f"statement cancelled: {req.cancelled}; it was not sent",
                    ),
                )
            self._after_command(worker)
            return
        self._begin_work(worker, req)

    def _begin_work(self, worker: Worker, req: Request) -> None:
        op = req.op
        worker.request = req
        if op == Op.QUERY:
            if worker.pool.config.pipeline_depth > 1 and req.pipeable is None:
                req.pipeable = _pipeable(req)
            if not req.pipeable and not statement.leaves_session_clean(req.body):
                worker.dirty = True
            worker.send(COM_QUERY + req.body, self._query_done, req.deadline)
            if req.pipeable:
                worker.pipe_ok = True
                self._fill_pipeline(worker)
        elif op == Op.EXECUTEMANY:
            if not all(map(statement.leaves_session_clean, req.body)):
                worker.dirty = True
            worker.send(COM_QUERY + req.body[0], self._batch_done, req.deadline)
        elif op == Op.HELLO:
            worker.request = None
            self._answer(req, Status.VALUE, self._pool_info(worker.pool))
            self._release(worker)
        elif op == Op.BEGIN:
            req.steps = begin_statements(req.body)
            first = req.body.get("sql")
            if first:
                req.steps.append(first)  # the transaction's first statement, same trip
                if not statement.leaves_session_clean(first):
                    worker.dirty = True
            worker.send(COM_QUERY + req.steps[0], self._begin_done, req.deadline)
        elif op == Op.SESSION_OPEN:
            worker.request = None
            pin = self._pin(worker, "session", req, req.body.get("who"))
            self._answer(req, Status.VALUE, pin.id)
        elif op == Op.STREAM_OPEN:
            sql, chunk_rows, who = req.body
            pin = self._pin(worker, "stream", req, who)
            worker.state = State.BUSY
            worker.request = None
            pin.request = req
            worker.send(COM_QUERY + sql, self._stream_chunk, req.deadline, chunk_rows)
        elif op in (Op.COMMIT, Op.ROLLBACK):
            worker.send(
                COM_QUERY + (b"COMMIT" if op == Op.COMMIT else b"ROLLBACK"),
                self._end_done,
                req.deadline,
            )

    # Command completions --------------------------------------------------------

    def _query_done(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = worker.request
        worker.request = None
        if err is not None:
            self._lost(worker, req, err)
            return
        if req is not None and req.bystander and self._interrupted(worker, data):
            # A KILL QUERY meant for the read ahead of it landed on it: run it again.
            req.bystander = False
            worker.pool.queue.appendleft(req)
        elif req is not None and not self._answer_cancelled(worker, req, data, 0):
            if worker.scanner.error:
                worker.pool.metrics.sql_errors += 1
            self._reply(req, Status.PACKETS, data)
        if worker.pin is None and worker.scanner.status & IN_TRANS:
            worker.dirty = True  # an unpinned BEGIN: roll it back before reuse
        if worker.piped:
            self._next_piped(worker)
            return
        self._after_command(worker)

    def _next_piped(self, worker: Worker) -> None:
        """Make the next piped read the one whose response comes next."""
        req = worker.piped.popleft()
        worker.cancel_started = 0.0  # the cancelled statement, if any, has ended
        # One answered while it waited runs unwanted: its deadline (passed) kills it.
        worker.request = None if req.cancelled else req
        worker.deadline = req.deadline

    def _drop_piped(self, req: Request, why: str) -> None:
        """Answer a piped read now; the response it still gets is thrown away."""
        req.cancelled = why
        req.pool.metrics.query_timeouts += 1  # type: ignore[union-attr]
        self._fail(
            req,
            errors.QueryTimeout(
                errors.ER_QUERY_TIMEOUT,
                f"statement cancelled: {why} while it waited behind another "
                "statement on its MySQL connection",
            ),
        )

    @staticmethod
    def _interrupted(worker: Worker, data: bytes | None) -> bool:
        """Whether the response is MySQL's "interrupted": a KILL QUERY landed on it."""
        return (
            worker.scanner.error
            and data is not None
            and error_from_packets(data).errno in _INTERRUPTED
        )

    def _batch_done(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = self._next_step(worker, err)
        if req is None:
            return
        req.replies.append(data)  # type: ignore[arg-type]
        req.index += 1
        if req.cancelled and not self._answer_cancelled(
            worker, req, data, req.index - 1
        ):
            if not worker.scanner.error and req.index < len(req.body):
                # Stopped between statements: what ran is known, the rest never will.
                worker.request = None
                self._fail(
                    req,
                    errors.OutcomeUnknown(
                        errors.ER_OUTCOME_UNKNOWN,
                        f"statement cancelled: {req.cancelled}; {req.index} of "
                        f"{len(req.body)} statements were applied, the rest not sent",
                    ),
                )
                self._after_command(worker)
                return
        elif req.cancelled:
            worker.request = None
            self._after_command(worker)
            return
        if worker.scanner.error or req.index == len(req.body):
            worker.request = None
            if worker.scanner.error:
                worker.pool.metrics.sql_errors += 1
            self._reply(req, Status.BATCH, req.replies)
            self._after_command(worker)
            return
        worker.send(COM_QUERY + req.body[req.index], self._batch_done, req.deadline)

    def _answer_cancelled(
        self, worker: Worker, req: Request, data: bytes | None, applied: int
    ) -> bool:
        """Answer a cancelled write whose statement MySQL interrupted; else False.

        A write that completed before the KILL landed gets its real result
        from the caller; one MySQL interrupted was not applied (QueryTimeout),
        except a COMMIT or a batch with statements behind it (OutcomeUnknown).
        """
        if not req.cancelled or not self._interrupted(worker, data):
            return False
        worker.request = None
        message = f"statement cancelled: {req.cancelled}"
        if req.op == Op.COMMIT:
            err: errors.Error = errors.OutcomeUnknown(
                errors.ER_OUTCOME_UNKNOWN, message + "; the commit may or may not stand"
            )
        elif applied:
            err = errors.OutcomeUnknown(
                errors.ER_OUTCOME_UNKNOWN,
                f"{message}; {applied} of {len(req.body)} statements were applied",
            )
        else:
            err = errors.QueryTimeout(
                errors.ER_QUERY_TIMEOUT, message + "; it was not applied"
            )
        self._fail(req, err)
        return True

    def _next_step(
        self, worker: Worker, err: errors.Error | None, dirty: bool = False
    ) -> Request | None:
        """Return the request a multi-statement command goes on with, or None.

        None when the connection died (the request is answered) or the request
        was cancelled meanwhile (the worker is freed; dirty when half-done
        work may stay in the session).
        """
        req = worker.request
        if err is not None:
            worker.request = None
            self._lost(worker, req, err)
            return None
        if req is None:
            worker.dirty = worker.dirty or dirty
            self._after_command(worker)
        return req

    def _begin_done(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = self._next_step(worker, err, dirty=True)
        if req is None:
            return
        first = req.body.get("sql")
        if worker.scanner.error and not (first and req.index == len(req.steps) - 1):
            worker.request = None
            worker.dirty = True
            self._fail(req, error_from_packets(data))  # type: ignore[arg-type]
            self._release(worker)
            return
        req.index += 1
        if req.index < len(req.steps):
            worker.send(
                COM_QUERY + req.steps[req.index], self._begin_done, req.deadline
            )
            return
        worker.request = None
        pin = self._pin(worker, "transaction", req, req.body.get("who"))
        # With a first statement, its result (or MySQL's error for it) comes
        # along; the transaction is open either way, as MySQL leaves it.
        self._reply(req, Status.VALUE, [pin.id, data] if first else pin.id)

    def _end_done(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        req = worker.request
        worker.request = None
        pin = worker.pin
        if err is not None:
            self._lost(worker, req, err)
            return
        if req is not None and not self._answer_cancelled(worker, req, data, 0):
            self._reply(req, Status.PACKETS, data)
        if worker.scanner.status & IN_TRANS or worker.scanner.error:
            worker.dirty = True
        if pin is not None:
            self._unpin(pin, "ended by commit or rollback")

    def _stream_chunk(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        pin = worker.pin
        if err is not None:
            req = pin.request if pin else None
            if pin:
                pin.request = None
            self._lost(worker, req, err)
            return
        done = worker.scanner.done
        req = pin.request
        pin.request = None
        pin.last_active = time.monotonic()
        if done:
            pin.done = True
        if req is not None:
            if worker.scanner.error:
                worker.pool.metrics.sql_errors += 1
            self._reply(req, Status.CHUNK, [pin.id, done, data])
        if done:
            self._unpin(pin, "stream finished")
        else:
            worker.deadline = 0.0  # paused: the pin's idle timeout applies now

    def _drained(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        """Discard the rest of a closed stream's result."""
        if err is not None:
            self._lost(worker, None, err)
            return
        worker.dirty = True
        self._release(worker)

    def _after_command(self, worker: Worker) -> None:
        """Return a worker whose command ended to its pin, or to the pool."""
        if worker.cancelling or worker.state is State.CLOSED:
            return  # the kill's outcome will call back here
        pin = worker.pin
        if pin is None:
            self._release(worker)
            return
        worker.state = State.PINNED
        if pin.pending is not None:
            req, pin.pending = pin.pending, None
            self._op_pinned(req)

    def _lost(self, worker: Worker, req: Request | None, err: errors.Error) -> None:
        """Answer the request a dead connection took with it, and forget the worker."""
        pool = worker.pool
        pool.metrics.lost += 1
        pin = worker.pin
        if req is not None:
            log.warning(
                "pool %s: request %d of op %s was on connection %d when it died",
                pool.name,
                req.req_id,
                Op(req.op).name,
                worker.thread_id,
            )
            if req.op == Op.QUERY and statement.is_read(req.body):
                self._fail(req, err)
            elif req.op in (Op.QUERY, Op.EXECUTEMANY, Op.COMMIT):
                self._fail(
                    req,
                    errors.OutcomeUnknown(
                        errors.ER_OUTCOME_UNKNOWN,
                        f"{err.msg}; the statement may or may not have been applied",
                    ),
                )
            else:
                self._fail(req, err)
        for piped in worker.piped:
            if not piped.cancelled:
                self._fail(piped, err)  # plain reads: nothing was written
        worker.piped.clear()
        if pin is not None:
            self._end_pin(
                pin, "its MySQL connection was lost (MySQL rolled back any transaction)"
            )
        self._forget(worker)

    def _closed_while_free(self, worker: Worker) -> None:
        """Forget a worker that died with no command running (idle, pinned, ...)."""
        self._lost(
            worker,
            None,
            errors.OperationalError(errors.CR_SERVER_LOST, "connection lost"),
        )

    # Pins ----------------------------------------------------------------------------

    def _pin(self, worker: Worker, kind: str, req: Request, who: Any) -> Pin:
        pin_id = secrets.randbits(63) or 1  # a capability: unguessable
        pin = Pin(pin_id, kind, worker, who, req.owner)
        worker.pin = pin
        worker.state = State.PINNED
        self.pins[pin_id] = pin
        self.pin_limits.pinned(req, pin)
        return pin

    def _end_pin(self, pin: Pin, reason: str) -> None:
        self.pins.pop(pin.id, None)
        self.pin_limits.ended(pin)
        self._ended[pin.id] = reason
        if len(self._ended) > ENDED_PINS_KEPT:
            self._ended.popitem(last=False)
        if pin.pending is not None:
            self._fail(
                pin.pending,
                errors.OperationalError(
                    errors.ER_BAD_PIN, f"this {pin.kind} ended: {reason}"
                ),
            )
            pin.pending = None
        pin.worker.pin = None

    def _unpin(self, pin: Pin, reason: str, reset: bool = False) -> None:
        worker = pin.worker
        self._end_pin(pin, reason)
        if reset or pin.kind == "session":
            worker.dirty = True
        self._release(worker)

    def _op_pinned(self, req: Request) -> None:
        pin = self.pins.get(req.pin)
        if pin is not None and pin.owner not in (None, req.owner):
            pin = None
        if pin is None:
            why = self._ended.get(req.pin, "unknown pin")
            self._fail(
                req,
                errors.OperationalError(
                    errors.ER_BAD_PIN, f"transaction, session or stream is gone: {why}"
                ),
            )
            return
        op, kind, worker = req.op, pin.kind, pin.worker
        allowed = {
            "transaction": (Op.QUERY, Op.EXECUTEMANY, Op.COMMIT, Op.ROLLBACK),
            "session": (Op.QUERY, Op.EXECUTEMANY, Op.SESSION_CLOSE),
            "stream": (Op.STREAM_NEXT, Op.STREAM_CLOSE),
        }[kind]
        if op not in allowed:
            self._fail(
                req,
                errors.InterfaceError(
                    errors.ER_BAD_REQUEST,
                    f"op {Op(op).name} does not apply to a {kind}",
                ),
            )
            return
        pin.last_active = time.monotonic()
        if kind == "stream":
            self._stream_op(pin, req)
            return
        if worker.running or worker.cancelling:
            if pin.pending is None and worker.cancelling:
                pin.pending = req
            else:
                self._fail(
                    req,
                    errors.InterfaceError(
                        errors.ER_BAD_REQUEST,
                        f"a statement is already running in this {kind}",
                    ),
                )
            return
        if op == Op.SESSION_CLOSE:
            self._answer(req, Status.VALUE, None)
            self._unpin(pin, "session closed")
            return
        worker.state = State.BUSY
        self._begin_work(worker, req)

    def _stream_op(self, pin: Pin, req: Request) -> None:
        worker = pin.worker
        if req.op == Op.STREAM_CLOSE:
            self._answer(req, Status.VALUE, None)
            self._close_stream(pin, "stream closed by the client")
            return
        if pin.request is not None or not worker.paused:
            self._fail(
                req,
                errors.InterfaceError(
                    errors.ER_BAD_REQUEST,
                    "a chunk of this stream is already on its way",
                ),
            )
            return
        pin.request = req
        worker.deadline = req.deadline
        worker.resume()

    def _close_stream(self, pin: Pin, reason: str) -> None:
        """End a stream mid-result: KILL QUERY, and discard what is still coming."""
        worker = pin.worker
        if pin.request is not None:
            self._fail(
                pin.request,
                errors.OperationalError(errors.ER_BAD_PIN, f"stream ended: {reason}"),
            )
            pin.request = None
        self._end_pin(pin, reason)
        self._cancel(worker, time.monotonic())
        worker.drain(self._drained)

    # Releasing, resetting, recycling -----------------------------------------------

    def _release(self, worker: Worker) -> None:
        """Hand a free worker to the next waiting request, or back to the pool."""
        if worker.state is State.CLOSED or worker.running or worker.cancelling:
            return
        worker.pin = None
        pool = worker.pool
        if pool.needs_recycling(worker, time.monotonic()):
            pool.metrics.recycled += 1
            log.info(
                "pool %s: recycling connection %d after %d uses",
                pool.name,
                worker.thread_id,
                worker.uses,
            )
            self._forget(worker)
            return
        if worker.dirty:
            self._reset(worker)
            return
        while pool.queue:
            req = pool.queue.popleft()
            if time.monotonic() < req.deadline:
                worker.state = State.BUSY
                self._start(worker, req)
                return
            self._timeout_unsent(req)
        pool.check_in(worker)

    def _reset(self, worker: Worker) -> None:
        """Clear session state: COM_RESET_CONNECTION, then the setup statements."""
        worker.state = State.RESETTING
        worker.dirty = False
        worker.pool.metrics.resets += 1
        steps = [COM_RESET_CONNECTION] + [
            COM_QUERY + sql.encode() for sql in setup_statements(worker.pool.config)
        ]
        worker.request = None
        worker.reset_steps = steps
        worker.send(steps[0], self._reset_step)

    def _reset_step(
        self, worker: Worker, data: bytes | None, err: errors.Error | None
    ) -> None:
        if err is not None:
            self._lost(worker, None, err)
            return
        steps = worker.reset_steps
        if worker.scanner.error:
            # No COM_RESET_CONNECTION (old server) or a failing init_sql: a fresh
            # connection is the only state we can vouch for.
            log.warning(
                "pool %s: reset of connection %d failed (%s); replacing it",
                worker.pool.name,
                worker.thread_id,
                error_from_packets(data),  # type: ignore[arg-type]
            )
            self._forget(worker)
            return
        steps.pop(0)
        if steps:
            worker.send(steps[0], self._reset_step)
            return
        self._release(worker)

    def _forget(self, worker: Worker) -> None:
        pool = worker.pool
        self._workers.pop(worker.fd, None)
        pool.forget(worker)
        self._dispatch(pool)

    def _dispatch(self, pool: Pool) -> None:
        """Start queued requests on idle workers (opening more if allowed)."""
        while pool.queue:
            worker = pool.check_out()
            if worker is None:
                return
            self._release(worker)

    def _timeout_unsent(self, req: Request) -> None:
        if req.pool is not None:
            req.pool.metrics.query_timeouts += 1
        self._fail(
            req,
            errors.QueryTimeout(
                errors.ER_QUERY_TIMEOUT,
                f"deadline of {req.timeout:.3f} s passed while waiting for a "
                "connection; "
                "the statement was not sent",
            ),
        )

    # Deadlines and cancellation ------------------------------------------------------

    def _cancel(self, worker: Worker, now: float, reason: str = "") -> None:
        """Stop the statement a worker runs: answer its caller and KILL QUERY."""
        if worker.cancelling:
            return
        worker.cancelling = True
        worker.cancel_started = now
        worker.deadline = 0.0  # one KILL per statement; kill_grace covers the rest
        for piped in worker.piped:
            piped.bystander = True  # the KILL may land on it if the head just ended
        pin = worker.pin
        req = worker.request
        if req is None and pin is not None and pin.kind == "stream":
            req, pin.request = pin.request, None
        log.info(
            "pool %s: cancelling the statement on connection %d (%s); KILL QUERY",
            worker.pool.name,
            worker.thread_id,
            reason or "deadline passed",
        )
        if req is not None:
            worker.pool.metrics.query_timeouts += 1
            why = reason or f"deadline of {req.timeout:.3f} s passed"
            if _may_write(req):
                # Whether it was applied is known once MySQL answers: the reply
                # waits for that (bounded by kill_grace), never guesses.
                req.cancelled = why
            else:
                worker.request = None
                self._fail(
                    req,
                    errors.QueryTimeout(
                        errors.ER_QUERY_TIMEOUT,
                        f"statement cancelled: {why} (KILL QUERY sent)",
                    ),
                )
        self.connector.kill(
            worker.pool.name,
            worker.config.connect_args(),
            worker.thread_id,
            worker,
        )

    def _killed(self, outcome: Outcome) -> None:
        worker: Worker = outcome.tag
        if worker.state is State.CLOSED:
            return
        worker.cancelling = False
        if outcome.error is not None:
            log.warning(
                "pool %s: KILL QUERY %d failed: %s",
                worker.pool.name,
                worker.thread_id,
                outcome.error,
            )
            self._drop(worker, "could not cancel its statement")
            return
        took = time.monotonic() - worker.cancel_started
        if took > worker.pool.config.kill_grace:
            worker.pool.metrics.slow_kills += 1
            log.info(
                "pool %s: KILL QUERY %d took %.1f s",
                worker.pool.name,
                worker.thread_id,
                took,
            )
        if not worker.running:
            worker.dirty = worker.dirty or worker.pin is None
            self._after_command(worker)
        else:
            worker.cancel_started = time.monotonic()  # kill_grace from here

    def _drop(self, worker: Worker, reason: str) -> None:
        """Drop a connection whose statement would not stop; it counts until gone."""
        worker.pool.drop(worker.thread_id, worker.config.connect_args())
        worker.lost(reason)

    def _tick(self, now: float) -> None:
        self._next_tick = now + TICK
        if self.config.broker.busy_poll_us:
            runnable = _runnable()
            self._spare_cpu = runnable is None or runnable <= self._cpus
            if runnable is None and not self._load_unknown_said:
                self._load_unknown_said = True
                log.warning(
                    "busy_poll_us: /proc/loadavg is not readable (systemd "
                    "ProcSubset=pid hides it), so the loop spins whatever the "
                    "other load; see Throughput options in deploy/README.md"
                )
        for worker in list(self._workers.values()):
            if worker.cancel_started and (worker.cancelling or worker.running):
                # The grace runs from MySQL's answer to the KILL: a slow KILL
                # must not turn a statement it does stop into OutcomeUnknown.
                grace = worker.pool.config.kill_grace
                if worker.cancelling:
                    grace += KILL_CONNECT_TIMEOUT
                if now - worker.cancel_started > grace and not worker.paused:
                    self._drop(worker, "cancelled statement did not stop")
            elif worker.deadline and now >= worker.deadline and worker.running:
                self._cancel(worker, now)
            for piped in worker.piped:
                if now >= piped.deadline and not piped.cancelled:
                    self._drop_piped(piped, f"deadline of {piped.timeout:.3f} s passed")
        for pool in self._all_pools():
            pool.expire_queue(now, self._expire)
        for listener in self._listeners.values():
            listener.resume(now)
        if now >= self._next_janitor:
            self._next_janitor = now + JANITOR_EVERY
            self._janitor(now)
        self.notifier.watchdog(now)
        if self.draining and (now >= self._drain_deadline or self._idle_for_exit()):
            self._stop = True

    def _expire(self, req: Request, why: str) -> None:
        if why == "query":
            self._timeout_unsent(req)
            return
        if why == "unreachable":  # a connect it prompted is still hanging
            self._fail(req, _database_error(req.pool.last_error))
            return
        pool = req.pool
        pool.metrics.pool_timeouts += 1
        self._fail(
            req,
            errors.PoolTimeout(
                errors.ER_POOL_TIMEOUT,
                f"pool {pool.name}: no connection free within queue_timeout "
                f"({pool.config.queue_timeout:g} s; max_size {pool.config.max_size})",
            ),
        )

    def _janitor(self, now: float) -> None:
        """Periodic upkeep: recycle idle connections, free silent pins, refill."""
        for pool in self._all_pools():
            for worker in pool.idle_to_close(now):
                pool.metrics.recycled += 1
                self._forget(worker)
            pool.open_if_needed(now)
        for pin in list(self.pins.values()):
            limit = pin.pool.config.transaction_idle_timeout
            busy = pin.worker.running and not pin.worker.paused
            if not busy and now - pin.last_active > limit:
                pin.pool.metrics.abandoned += 1
                who = pin.who
                log.warning(
                    "pool %s: %s of pid %s on %s silent for %.0f s; "
                    "rolling back and freeing it",
                    pin.pool.name,
                    pin.kind,
                    who.get("pid"),
                    who.get("host"),
                    now - pin.last_active,
                )
                reason = (
                    f"silent for over transaction_idle_timeout ({limit:g} s); "
                    "rolled back"
                )
                if pin.kind == "stream" and not pin.done:
                    self._close_stream(pin, reason)
                else:
                    self._unpin(pin, reason, reset=True)
        for pool in self.pools.values():
            pool.retry_reaps(now)
        self.connector.close_idle_sides()
        if self._loop_slot is not None:
            self._loop_slot.publish(self._own_stats())
        if self._exporter is not None:
            self._exporter.update(self.stats())
        if not self._ready and all(
            len(p.workers) >= p.config.min_size or p.last_error is not None
            for p in self.pools.values()
        ):
            self._ready = True
            self.notifier.ready(self.status_line())
            log.info("ready: %s", self.status_line())
        elif self._ready and self.notifier.enabled:
            self.notifier.status(self.status_line())

    # Connector outcomes, signals, reload, drain ------------------------------------

    def _on_wake(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            data = b""
        for byte in set(data):
            if byte in (signal.SIGTERM, signal.SIGINT):
                self._begin_drain(signal.Signals(byte).name)
            elif byte == signal.SIGHUP:
                self.reload()
        results = self.connector.results
        while results:
            outcome = results.popleft()
            if outcome.kind == "kill":
                self._killed(outcome)
            elif outcome.kind == "check":
                self.readsplit.checked(outcome)
            elif outcome.kind == "open":
                self._opened(outcome)
            elif (pool := self.pools.get(outcome.pool)) is not None:
                pool.reaper_done(outcome)

    def _opened(self, outcome: Outcome) -> None:
        pool = self.readsplit.pool_for(outcome.tag) or self.pools.get(outcome.pool)
        if pool is None:
            if outcome.conn is not None:
                outcome.conn.close()
            return
        if outcome.conn is None:
            pool.open_failed(outcome.error)  # type: ignore[arg-type]
            if pool.failing and not self.readsplit.reroute(pool):
                err = _database_error(outcome.error)  # type: ignore[arg-type]
                while pool.queue:
                    self._fail(pool.queue.popleft(), err)
            return
        worker = Worker(pool.name, outcome.conn, self.poller)
        worker.pool = pool
        worker.config = outcome.tag  # what it was opened with: KILL goes there
        worker.on_closed = self._closed_while_free
        self.readsplit.adopt(worker)
        self._workers[worker.fd] = worker
        pool.opened(worker)
        opened_with: PoolConfig = outcome.tag
        if (
            opened_with.connect_args() != pool.config.connect_args()
            or opened_with.init_sql != pool.config.init_sql
        ):
            pool.metrics.recycled += 1  # a reload replaced its settings meanwhile
            self._forget(worker)
            return
        self._release(worker)

    def _begin_drain(self, why: str) -> None:
        if self.draining:
            return
        self.draining = True
        self._drain_deadline = time.monotonic() + self.config.broker.drain_timeout
        log.info(
            "%s: draining (%d statements running, %d pins open; at most %g s)",
            why,
            sum(w.running for w in self._workers.values()),
            len(self.pins),
            self.config.broker.drain_timeout,
        )
        self.notifier.stopping("draining")

    def _idle_for_exit(self) -> bool:
        return (
            not self.pins
            and not any(
                w.running or w.state is State.RESETTING for w in self._workers.values()
            )
            and not any(p.queue for p in self._all_pools())
        )

    def reload(self) -> None:
        """Re-read the config; apply what can change live; keep the old if invalid."""
        if self._reload_config is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload_config()
        except ConfigError as err:
            log.error("reload rejected, keeping the running config: %s", err)
            self.notifier.ready(self.status_line())
            return
        for key in needs_restart(self.config, new):
            log.warning(
                "reload: %s changed but needs a restart; keeping the old value", key
            )
        new = keep_restart_keys(self.config, new)
        logging.getLogger().setLevel(new.broker.log_level.upper())
        # New connections take the new size limit; existing ones keep theirs.
        self.router.setsockopt(
            zmq.MAXMSGSIZE, new.broker.max_message_bytes * HARD_LIMIT_FACTOR
        )
        for name, cfg in new.pools.items():
            pool = self.pools.get(name)
            if pool is not None and pool.retired:
                pool.retired = False  # back in the config
                pool.generation += 1  # its old connections were on their way out
            if pool is None:
                self.pools[name] = Pool(cfg, self.connector)
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
        for name, pool in self.pools.items():
            if name not in new.pools:
                pool.retired = True
                log.info(
                    "reload: pool %s removed; closing its connections as they free",
                    name,
                )
        self.readsplit.reload(new)
        self.config = new
        for pool in self._all_pools():
            for worker in pool.idle_to_close(time.monotonic()):
                pool.metrics.recycled += 1
                self._forget(worker)
            pool.open_if_needed()
            self._dispatch(pool)
        log.info("reload: applied (%s)", self.status_line())
        self.notifier.ready(self.status_line())

    # Reporting ---------------------------------------------------------------------

    def status_line(self) -> str:
        """Return a one-line summary for systemd's STATUS= and logs."""
        parts = []
        for pool in self.pools.values():
            state = (
                "unreachable"
                if pool.failing
                else f"{len(pool.workers)}/{pool.config.max_size} conns"
            )
            parts.append(f"{pool.name}: {state}, {len(pool.queue)} waiting")
        return "; ".join(parts) + f"; {len(self.pins)} pinned"

    def stats(self) -> dict[str, Any]:
        """Return everything `broker status` shows, as plain values."""
        own = self._own_stats()
        return own if self._loop_slot is None else self._loop_slot.whole(own)

    def _own_stats(self) -> dict[str, Any]:
        now = time.monotonic()
        pools = {name: pool.snapshot() for name, pool in self.pools.items()}
        self.readsplit.add_stats(pools)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "endpoints": list(self.config.broker.endpoint),
            "draining": self.draining,
            "busy_poll_us": self.config.broker.busy_poll_us,
            "open_files": open_files(),
            "open_files_limit": open_files_limit(),
            "refused_at_fd_limit": sum(x.refused for x in self._listeners.values()),
            **self.metrics.snapshot(),
            "pools": pools,
            "pins": [pin.snapshot(now) for pin in self.pins.values()],
            "pins_per_client": self.pin_limits.snapshot(
                {
                    name: effective_cap(p.config.max_pins_per_client, p.config.max_size)
                    for name, p in self.pools.items()
                }
            ),
        }
