"""multiprocessing.Pool and ProcessPoolExecutor on the broker, any start method.

``python -m examples.pool_app METHOD`` (fork, spawn or forkserver) uses the
default client in the parent, then runs `work` in 4 processes of a
`multiprocessing.Pool` and of a `concurrent.futures.ProcessPoolExecutor`.
Nothing is passed to the children and no initializer is needed: under fork a
child notices the new pid and opens its own ZeroMQ socket; under spawn and
forkserver it imports `client` afresh and finds ``$BROKER_ENDPOINT`` itself.
Prints one JSON line: the parent's pid and each task's (pid, value).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys

import client


def work(n: int) -> tuple[int, int]:
    """Return this process's pid and n squared, computed by MySQL in a transaction."""
    with client.transaction() as tx:
        value = tx.query("SELECT %s * %s", (n, n)).scalar()
    return os.getpid(), int(value)


def main(method: str) -> None:
    """Query in the parent, then in two kinds of process pool."""
    client.query("SELECT 1")  # the default client exists before the children
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(4) as pool:
        by_pool = pool.map(work, range(20))
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as executor:
        by_executor = list(executor.map(work, range(20)))
    print(json.dumps({"parent": os.getpid(), "pool": by_pool, "executor": by_executor}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fork")
