"""Requests in, replies out: the ROUTER and ipc peers, decoding, admission.

The frontend owns the client side of the broker: the libzmq ROUTER (tcp, and
CurveZMQ), the native ipc listeners and their peers, the decoding of each
request's envelope (never its rows), and whether a request is let in at all:
size, pool, allowed keys, the caller's deadline, the body, the per-client
in-flight limit and pin caps. PING, HELLO, STATS and CANCEL are answered
here; everything else goes down to `Dispatch` (or `ReadSplit` for replica
reads). Invariants:

- every request decoded is answered exactly once, through `answer` (the
  `Sink` each `Request` carries), which also counts it out of its client's
  in-flight number;
- a reply for a peer that vanished is dropped and counted, never raised;
- PING, STATS and CANCEL are never refused by the in-flight limit: they are
  how a caller learns the broker is alive.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from broker import __version__
from broker.config import Config
from broker.dispatch import Dispatch
from broker.ipc import Listener, Peer, listen_unix, raise_open_files_limit
from broker.metrics import BrokerMetrics
from broker.pinlimit import OPENS_PIN
from broker.poller import POLLIN, Poller
from broker.pool import Pool
from broker.processes import LoopSlot
from broker.readsplit import ReadSplit
from broker.request import PeerId, Request, check_body, start_by
from broker.stats import Report
from client import errors
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

ROUTER_BATCH = 256  # requests taken per wake-up before MySQL sockets get a turn
HARD_LIMIT_FACTOR = 4  # libzmq drops (unanswered) frames over this x max_message_bytes
_UNCOUNTED = frozenset({Op.PING, Op.STATS, Op.CANCEL})  # never refused: liveness


class Frontend:
    """The client side: sockets, decoding, admission, and the one reply per request."""

    def __init__(
        self,
        config: Config,
        poller: Poller,
        dispatch: Dispatch,
        readsplit: ReadSplit,
        metrics: BrokerMetrics,
        loop: LoopSlot | None,
    ) -> None:
        self.config = config  # replaced on reload
        self._poller = poller
        self._dispatch = dispatch
        self._pools = dispatch.pools  # the same dict: reload edits it in place
        self._open_pins = dispatch.pins.open
        self._pin_limits = dispatch.pins.limits
        self.metrics = metrics
        self._loop = loop
        self._ctx = zmq.Context(io_threads=1)
        self.router = self._ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.set_max_message_bytes(config.broker.max_message_bytes)
        self._curve = False
        self._auth: Any = None  # the ZAP handler thread, with CurveZMQ
        self.listeners: dict[int, Listener] = {}
        self.peers: dict[int, Peer] = {}
        self._inflight: dict[Any, int] = {}  # requests per client, until answered
        self.report = Report(
            config, dispatch, readsplit, metrics, self._refused_at_fd_limit, loop
        )
        self._handlers: dict[int, Callable[[Request], None]] = {
            Op.PING: self._op_ping,
            Op.HELLO: self._op_hello,
            Op.STATS: self._op_stats,
            Op.CANCEL: self._op_cancel,
            Op.QUERY: dispatch.acquire,
            Op.EXECUTEMANY: dispatch.acquire,
            Op.BEGIN: dispatch.acquire,
            Op.SESSION_OPEN: dispatch.acquire,
            Op.STREAM_OPEN: dispatch.acquire,
            Op.QUERY_REPLICA: readsplit.route,
            Op.STREAM_OPEN_REPLICA: readsplit.route,
        }

    # Sockets --------------------------------------------------------------------

    def bind(self, listening: dict[str, socket.socket] | None = None) -> None:
        """Listen on every endpoint: ipc natively, anything else on the ROUTER.

        ``listening`` holds ipc sockets bound by the parent of several loops;
        tcp endpoints and the metrics exporter then belong to loop 0 alone.
        """
        first = self._loop is None or self._loop.index == 0
        if first:
            self._secure_router()
        soft, hard = raise_open_files_limit()
        log.info("open files limit %d (hard %d): about that many clients", soft, hard)
        cfg = self.config.broker
        for endpoint in cfg.endpoint:
            if endpoint.startswith("ipc://"):
                path = endpoint[len("ipc://") :]
                inherited = (listening or {}).get(path)
                sock = inherited or listen_unix(path, cfg.socket_mode, cfg.socket_group)
                listener = Listener(path, sock, self._poller, owner=inherited is None)
                self.listeners[listener.fd] = listener
            elif not first:
                continue
            else:
                self.router.bind(endpoint)
                if self.router not in self._poller:
                    # Polled only when bound: zmq_poll on a libzmq socket costs
                    # more per wake-up than on a plain file descriptor.
                    self._poller.register(self.router, POLLIN)
            log.info("listening on %s", endpoint)
        if cfg.metrics_address and first:
            self.report.start_exporter(cfg.metrics_address)

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

    def set_max_message_bytes(self, limit: int) -> None:
        """Apply max_message_bytes to the ROUTER's new connections."""
        self.router.setsockopt(zmq.MAXMSGSIZE, limit * HARD_LIMIT_FACTOR)

    def close(self) -> None:
        """Close every peer, listener and the ROUTER; remove ipc socket files."""
        for peer in list(self.peers.values()):
            peer.close()
        for listener in self.listeners.values():
            listener.close()
        self.report.close()
        if self._auth is not None:
            self._auth.stop()
        self.router.close(linger=0)
        self._ctx.term()

    def resume(self, now: float) -> bool:
        """Let listeners paused at the open files limit accept again, when due.

        Return whether one is still paused.
        """
        paused = False
        for listener in self.listeners.values():
            paused = listener.resume(now) or paused
        return paused

    def _refused_at_fd_limit(self) -> int:
        return sum(x.refused for x in self.listeners.values())

    def accept(self, listener: Listener) -> None:
        """Take the connections waiting on an ipc listener as peers."""
        limit = self.config.broker.max_message_bytes * HARD_LIMIT_FACTOR
        for conn in listener.accept():
            peer = Peer(
                conn, self._poller, self._on_peer_message, limit, self._forget_peer
            )
            if not peer.closed:
                self.peers[peer.fd] = peer

    def _forget_peer(self, peer: Peer) -> None:
        if self.peers.get(peer.fd) is peer:
            del self.peers[peer.fd]

    def _on_peer_message(
        self, peer: Peer, frame: bytes | None, problem: str | None
    ) -> None:
        if problem is None:
            self._handle(peer, frame)  # type: ignore[arg-type]
        elif frame is None:
            self.metrics.dropped_frames += 1  # protocol broken: the peer is dropped
        else:
            self._refuse(peer, frame, problem)

    def drain_router(self) -> None:
        """Take the requests waiting on the ROUTER (up to ROUTER_BATCH)."""
        router = self.router
        recv = router.recv
        for _ in range(ROUTER_BATCH):
            if not router.getsockopt(zmq.EVENTS) & POLLIN:  # type: ignore[operator]
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
            self._handle(peer, frame, key)  # type: ignore[arg-type]

    # Requests -------------------------------------------------------------------

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
            pin_obj = self._open_pins.get(pin)
            if pin_obj is not None and pin_obj.owner not in (None, owner):
                pin_obj = None  # someone else's: answered as unknown below
            pool = pin_obj.pool if pin_obj is not None else None
        elif op not in _UNCOUNTED:
            pool = self._pools.get(pool_name)
            if (
                pool is None
                or pool.retired
                or (pool.config.allowed_keys and type(peer) is not Peer)
            ) and not self._pool_allowed(peer, req_id, pool_name, pool, key):
                return
        req = Request(peer, req_id, op, pool, pin, body, self)
        req.owner = owner
        limit = pool.config.query_timeout if pool is not None else timeout
        req.timeout = min(timeout, limit)
        req.deadline = req.received + req.timeout
        if not start_by(req, until, type(peer) is Peer) and pool is not None:
            self._expired_unread(req, pool)
            return
        problem = check_body(op, pin, body)
        if problem:
            req.fail(errors.InterfaceError(errors.ER_BAD_REQUEST, problem))
            self.metrics.bad_requests += 1
            return
        if op not in _UNCOUNTED and not self._count_in(req):
            return
        if op in OPENS_PIN and not pin:
            refusal = self._pin_limits.take(req)
            if refusal is not None:
                req.fail(refusal)
                return
        if pin:
            self._dispatch.pinned(req)
        else:
            self._handlers[op](req)

    def _pool_allowed(
        self,
        peer: PeerId,
        req_id: int,
        name: str,
        pool: Pool | None,
        key: str | None,
    ) -> bool:
        """Whether a request may use the pool it names; if not, answer why."""
        allowed = pool.config.allowed_keys if pool is not None else ()
        if allowed and type(peer) is not Peer and key not in allowed:
            self.metrics.bad_requests += 1
            denied = errors.ProgrammingError(
                errors.ER_UNKNOWN_POOL,
                f"this client's key may not use pool {name!r} (allowed_keys)",
            )
            self._send(peer, req_id, Status.ERROR, errors.to_wire(denied))
            return False
        if pool is None or pool.retired:
            self.metrics.bad_requests += 1
            unknown = errors.ProgrammingError(
                errors.ER_UNKNOWN_POOL,
                f"unknown pool {name!r}; the broker has "
                f"{', '.join(sorted(self._pools))}",
            )
            self._send(peer, req_id, Status.ERROR, errors.to_wire(unknown))
            return False
        return True

    @staticmethod
    def _expired_unread(req: Request, pool: Pool) -> None:
        """Refuse a request read after its client's deadline: never start it."""
        pool.metrics.expired_unread += 1
        log.debug(  # a stopped broker wakes to many: the counter tells it
            "pool %s: request %d of op %s read after its caller's deadline; not run",
            pool.name,
            req.req_id,
            Op(req.op).name,
        )
        req.fail(
            errors.QueryTimeout(
                errors.ER_QUERY_TIMEOUT,
                "the request's deadline passed before the broker read it "
                "(was the broker stopped?); the statement was not run",
            )
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
            req.fail(
                errors.OperationalError(
                    errors.ER_TOO_MANY_INFLIGHT,
                    f"{who} already has {count} requests running or queued "
                    f"(max_inflight_per_client = {limit}); refused",
                )
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
            self.router.send(peer, zmq.SNDMORE | zmq.NOBLOCK)  # type: ignore[arg-type]
            self.router.send(encode_reply(req_id, status, body), zmq.NOBLOCK)
        except zmq.ZMQError:
            # ROUTER_MANDATORY: the peer is gone or not reading. Count it.
            self.metrics.dropped_frames += 1

    def answer(self, req: Request, status: int, body: Any) -> None:
        """Send a request's one reply, and count it out of its client's in-flight."""
        self._pin_limits.answered(req)
        client = req.client
        if client is not None:
            req.client = None
            left = self._inflight[client] - 1
            if left:
                self._inflight[client] = left
            else:
                del self._inflight[client]
        self._send(req.peer, req.req_id, status, body)

    # The frontend's own ops -----------------------------------------------------

    def _op_ping(self, req: Request) -> None:
        self.answer(req, Status.VALUE, __version__)

    def _op_stats(self, req: Request) -> None:
        self.answer(req, Status.VALUE, self.report.stats())

    def _op_cancel(self, req: Request) -> None:
        """Cancel the sender's request whose id the body names (KILL QUERY)."""
        dispatch = self._dispatch
        found = dispatch.canceller.cancel_request(
            req.peer,
            req.body,
            dispatch.backends.values(),
            dispatch.all_pools(),
            time.monotonic(),
        )
        self.answer(req, Status.VALUE, found)

    def _op_hello(self, req: Request) -> None:
        pool = req.pool
        assert pool is not None  # noqa: S101  _handle resolved it
        if pool.info is None:
            self._dispatch.acquire(req)  # learn the server's status from a connection
            return
        self.answer(req, Status.VALUE, self.pool_info(pool))

    def pool_info(self, pool: Pool) -> dict[str, Any]:
        """Return what a HELLO reply says of pool's server and the broker."""
        info = pool.info or {}
        return {
            INFO_CHARSET: pool.config.charset,
            INFO_SERVER_STATUS: info.get("server_status", 0),
            INFO_SERVER_VERSION: info.get("server_version", ""),
            INFO_MAX_MESSAGE_BYTES: self.config.broker.max_message_bytes,
        }
