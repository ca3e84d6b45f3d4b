"""Lifecycle keys: min_size kept warm, max_uses, max_lifetime, idle_timeout."""

import time


def test_min_size_connections_are_opened_at_start(make_broker):
    b = make_broker(min_size=3, max_size=5)
    assert b.client().stats()["pools"]["default"]["size"] >= 3


def test_max_uses_recycles_the_connection(make_broker):
    b = make_broker(max_size=1, max_uses=3)
    c = b.client()
    ids = [c.query("SELECT CONNECTION_ID()").scalar() for _ in range(7)]
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] != ids[2]
    assert ids[3] == ids[4] == ids[5]
    assert c.stats()["pools"]["default"]["recycled"] >= 2


def test_max_lifetime_recycles_between_statements(make_broker):
    b = make_broker(max_size=1, max_lifetime=1)
    c = b.client()
    first = c.query("SELECT CONNECTION_ID()").scalar()
    assert (
        c.query("SELECT SLEEP(1.2), CONNECTION_ID()").rows[0][1] == first
    )  # never under one
    time.sleep(0.1)
    assert c.query("SELECT CONNECTION_ID()").scalar() != first


def test_idle_connections_above_min_size_are_closed(make_broker):
    b = make_broker(min_size=0, max_size=2, idle_timeout=0.5)
    c = b.client()
    assert c.query("SELECT 1").scalar() == 1
    deadline = time.monotonic() + 5
    while c.stats()["pools"]["default"]["size"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.stats()["pools"]["default"]["size"] == 0
    assert c.query("SELECT 2").scalar() == 2
