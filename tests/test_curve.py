"""tcp endpoints: CurveZMQ keys decide who is served; plain tcp stays on loopback."""

import socket
import subprocess
import sys

import pytest

import client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(directory, name):
    out = subprocess.run(
        [sys.executable, "-m", "broker", "keygen", str(directory), "--name", name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return directory / f"{name}.key", directory / f"{name}.key_secret"


@pytest.fixture
def keys(tmp_path):
    server = _keygen(tmp_path / "server", "server")
    known = _keygen(tmp_path / "clients", "known")
    other = _keygen(tmp_path / "clients", "other")
    authorised = tmp_path / "authorised"
    authorised.mkdir()
    (authorised / "known.key").write_bytes(known[0].read_bytes())
    return {"server": server, "known": known, "other": other, "dir": authorised}


def _curve_broker(make_broker, keys, **pool) -> str:
    """Start a broker with a CurveZMQ tcp endpoint; return the endpoint."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    make_broker(
        **pool,
        broker={
            "endpoint": [endpoint],
            "curve_secret_key": str(keys["server"][1]),
            "curve_authorized_keys": str(keys["dir"]),
        },
    )
    return endpoint


def _keyed(endpoint, keys, name, timeout=5):
    return client.Client(
        endpoint,
        timeout=timeout,
        server_key=str(keys["server"][0]),
        client_key=str(keys[name][1]),
    )


def test_curve_serves_a_known_key_and_refuses_an_unknown_one(make_broker, keys):
    endpoint = _curve_broker(make_broker, keys)
    known = _keyed(endpoint, keys, "known")
    assert known.query("SELECT 41 + 1").scalar() == 42
    stranger = _keyed(endpoint, keys, "other", timeout=1)
    with pytest.raises(client.BrokerUnavailable):
        stranger.query("SELECT 1")
    plain = client.Client(endpoint, timeout=1)
    with pytest.raises(client.BrokerUnavailable):
        plain.query("SELECT 1")
    for c in (known, stranger, plain):
        c.close()


def test_pool_allowed_keys_limit_which_clients_use_it(make_broker, keys):
    from zmq.auth import load_certificate

    other_public = load_certificate(str(keys["other"][0]))[0].decode()
    (keys["dir"] / "other.key").write_bytes(keys["other"][0].read_bytes())
    endpoint = _curve_broker(make_broker, keys, allowed_keys=[other_public])
    known = _keyed(endpoint, keys, "known")
    with pytest.raises(client.ProgrammingError, match="allowed_keys"):
        known.query("SELECT 1")
    other = _keyed(endpoint, keys, "other")
    assert other.query("SELECT 2").scalar() == 2
    known.close()
    other.close()


def test_plain_tcp_on_loopback_is_served(make_broker):
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    make_broker(broker={"endpoint": [endpoint]})
    with client.Client(endpoint, timeout=5) as c:
        assert c.query("SELECT 3").scalar() == 3


def test_plain_tcp_off_loopback_is_refused_at_start(broker_dir):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--dsn",
            "mysql://u@127.0.0.1/db",
            "--endpoint",
            f"tcp://0.0.0.0:{_free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "curve_secret_key" in out.stderr
    assert "allow_insecure_tcp" in out.stderr


def test_asyncio_client_reaches_a_curve_endpoint(make_broker, keys):
    import asyncio

    from client import aio

    endpoint = _curve_broker(make_broker, keys)

    async def main():
        known = aio.Client(
            endpoint,
            timeout=5,
            server_key=str(keys["server"][0]),
            client_key=str(keys["known"][1]),
        )
        assert (await known.query("SELECT 40 + 2")).scalar() == 42
        async with known.transaction() as tx:
            assert (await tx.query("SELECT 7")).scalar() == 7
        stranger = aio.Client(
            endpoint,
            timeout=1,
            server_key=str(keys["server"][0]),
            client_key=str(keys["other"][1]),
        )
        with pytest.raises(client.BrokerUnavailable):
            await stranger.query("SELECT 1")
        for c in (known, stranger):
            await c.close()

    asyncio.run(main())
