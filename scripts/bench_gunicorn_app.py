"""The WSGI app `scripts/bench_gunicorn.py` serves: one point select per request.

``BENCH_DRIVER`` picks how a gunicorn worker reaches MySQL, so the four arms
differ in nothing else: ``broker`` (client.query), ``direct`` (one pymysql
connection per worker), ``dbutils`` (DBUtils PooledDB, its defaults) and
``sqlalchemy`` (a QueuePool engine, its defaults). Each pool is made lazily
in the worker that uses it, after the fork, as their documentation asks;
the broker's client needs no such care.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from typing import Any

SQL = "SELECT id, name, balance FROM bench_accounts WHERE id = %s"
DRIVER = os.environ.get("BENCH_DRIVER", "broker")
ROWS = int(os.environ.get("BENCH_ROWS", "10000"))
_connect_args: dict[str, Any] = {
    "unix_socket": os.environ.get("BENCH_UNIX_SOCKET") or None,
    "host": os.environ.get("BENCH_HOST", "127.0.0.1"),
    "port": int(os.environ.get("BENCH_PORT", "3306")),
    "user": os.environ.get("BENCH_USER", "root"),
    "password": os.environ.get("BENCH_PASSWORD", ""),
    "database": os.environ.get("BENCH_DATABASE", "broker"),
    "autocommit": True,
}
_made: dict[str, Any] = {}  # per worker process: the pid it was made in, and it


def _mine(make: Callable[[], Any]) -> Any:
    """Return this process's pool or connection, made on first use after fork."""
    if _made.get("pid") != os.getpid():
        _made.update(pid=os.getpid(), it=make())
    return _made["it"]


def _query(key: int) -> tuple:
    if DRIVER == "broker":
        import client

        return client.query(SQL, (key,)).rows[0]
    if DRIVER == "direct":
        import pymysql

        conn = _mine(lambda: pymysql.connect(**_connect_args))
        with conn.cursor() as cur:
            cur.execute(SQL, (key,))
            return cur.fetchone()
    if DRIVER == "dbutils":
        import pymysql
        from dbutils.pooled_db import PooledDB

        pool = _mine(lambda: PooledDB(pymysql, **_connect_args))
        conn = pool.connection()
        try:
            with conn.cursor() as cur:
                cur.execute(SQL, (key,))
                return cur.fetchone()
        finally:
            conn.close()  # back to the pool
    if DRIVER == "sqlalchemy":
        import sqlalchemy

        def engine() -> Any:
            args = {k: v for k, v in _connect_args.items() if v is not None}
            args.pop("autocommit")
            return sqlalchemy.create_engine("mysql+pymysql://", connect_args=args)

        with _mine(engine).connect() as conn:
            return tuple(conn.exec_driver_sql(SQL, (key,)).one())
    raise RuntimeError(f"unknown BENCH_DRIVER {DRIVER!r}")


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """Answer each request with one row looked up by a random primary key."""
    key = random.randint(1, ROWS)  # noqa: S311 - load, not keys
    row = _query(key)
    if row[0] != key:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [f"asked for {key}, got {row[0]}\n".encode()]
    body = f"{row[0]} {row[1]} {row[2]}\n".encode()
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    )
    return [body]
