"""The per-client cap on pinned connections: a pool's ``max_pins_per_client``.

A transaction, session or stream holds one MySQL connection until it ends, so
one process that leaks them (DB-API connections left open, say) would take the
whole pool, and every other process would get PoolTimeout. Here each client
process may hold at most ``max_pins_per_client`` pins of a pool at once; an
opening request past that is refused at once, before it queues.

The cap a pool applies is ``min(max_pins_per_client, max_size - 1)``: one
client always leaves a connection for the others. A pool of one connection
has nothing to leave, so it has no cap (a second pin waits in the queue as
before), and 0 means no cap. A client process is the (host, pid) the ipc
socket announced, else the (host, pid) the request reports, else the peer.
A pin counts from the request that opens it until it ends; an opening request
answered without a pin (refused, failed, timed out) gives its place back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client import errors
from client.wire.protocol import Op

if TYPE_CHECKING:
    from broker.request import Pin, Request

OPENS_PIN = frozenset({Op.BEGIN, Op.SESSION_OPEN, Op.STREAM_OPEN})


def effective_cap(max_pins_per_client: int, max_size: int) -> int:
    """Return the pins one client may hold in a pool; 0 for no cap."""
    if not max_pins_per_client or max_size < 2:
        return 0
    return min(max_pins_per_client, max_size - 1)


def _who(req: Request) -> dict:
    body = req.body
    who = body[2] if req.op == Op.STREAM_OPEN else body.get("who")
    return who if isinstance(who, dict) else {}


class PinLimits:
    """Counts of held and opening pins per (pool, client process)."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, Any], int] = {}
        self._who: dict[tuple[str, Any], dict] = {}
        self._opening: dict[Request, tuple[str, Any]] = {}
        self._pins: dict[int, tuple[str, Any]] = {}

    def take(self, req: Request) -> errors.Error | None:
        """Count an opening request in; return the refusal when over the cap."""
        pool = req.pool
        assert pool is not None  # noqa: S101  _handle resolved it
        who = _who(req)
        peer = req.peer
        client = getattr(peer, "client", None)
        if client is None and "pid" in who:
            client = (who.get("host"), who.get("pid"))
        key = (pool.name, client if client is not None else peer)
        held = self._held.get(key, 0)
        cap = effective_cap(pool.config.max_pins_per_client, pool.config.max_size)
        if cap and held >= cap:
            return errors.OperationalError(
                errors.ER_TOO_MANY_PINS,
                f"pool {pool.name}: pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')} already holds {held} transactions, "
                f"sessions or streams (max_pins_per_client = "
                f"{pool.config.max_pins_per_client}, max_size = "
                f"{pool.config.max_size}); end one first, or raise "
                "max_pins_per_client",
            )
        self._held[key] = held + 1
        self._who.setdefault(key, who)
        self._opening[req] = key
        return None

    def pinned(self, req: Request, pin: Pin) -> None:
        """Move an opening request's place to the pin it opened."""
        key = self._opening.pop(req, None)
        if key is not None:
            self._pins[pin.id] = key

    def answered(self, req: Request) -> None:
        """Give back the place of an opening request answered without a pin."""
        if self._opening:
            key = self._opening.pop(req, None)
            if key is not None:
                self._drop(key)

    def ended(self, pin: Pin) -> None:
        """Give back the place of a pin that ended."""
        key = self._pins.pop(pin.id, None)
        if key is not None:
            self._drop(key)

    def _drop(self, key: tuple[str, Any]) -> None:
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
            self._who.pop(key, None)

    def snapshot(self, caps: dict[str, int]) -> list[dict[str, Any]]:
        """Return pins held per client and pool, as `broker status` shows them."""
        out = []
        for key, held in sorted(self._held.items(), key=lambda kv: -kv[1]):
            who = self._who.get(key, {})
            out.append(
                {
                    "pool": key[0],
                    "pid": who.get("pid"),
                    "host": who.get("host"),
                    "program": who.get("program"),
                    "name": who.get("name"),
                    "pins": held,
                    "max": caps.get(key[0], 0),
                }
            )
        return out
