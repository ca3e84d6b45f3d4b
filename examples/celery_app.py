"""Celery prefork workers on the broker: ``celery -A examples.celery_app worker``.

Tasks call the module-level `client` functions; the default client made in
celery's master before it forks its pool works in every child (each opens its
own ZeroMQ socket), so no worker_process_init hook is needed. A worker killed
inside ``client.transaction()`` leaves nothing open: the broker rolls the
transaction back once it has been silent for the pool's
``transaction_idle_timeout``.

The transport is kombu's filesystem one, so this runs without a message
server: ``$CELERY_DATA_DIR`` (default $TMPDIR/celery-broker-example) holds the
queue and the results. Use your usual Redis or RabbitMQ URL in production;
nothing about the database side changes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from celery import Celery

import client

DATA_DIR = Path(
    os.environ.get("CELERY_DATA_DIR")
    or Path(tempfile.gettempdir()) / "celery-broker-example"
)
for sub in ("queue", "processed", "results", "control"):
    (DATA_DIR / sub).mkdir(parents=True, exist_ok=True)

app = Celery(
    "examples.celery_app",
    broker="filesystem://",
    backend=f"file://{DATA_DIR / 'results'}",
)
app.conf.broker_transport_options = {
    "data_folder_in": str(DATA_DIR / "queue"),
    "data_folder_out": str(DATA_DIR / "queue"),
    "processed_folder": str(DATA_DIR / "processed"),
    "control_folder": str(DATA_DIR / "control"),  # default: ./control
}
app.conf.broker_connection_retry_on_startup = True


@app.task
def transfer(src: int, dst: int, amount: int) -> dict:
    """Move amount between two accounts in one transaction; return the balances."""
    with client.transaction() as tx:
        tx.query("UPDATE accounts SET bal = bal - %s WHERE id = %s", (amount, src))
        tx.query("UPDATE accounts SET bal = bal + %s WHERE id = %s", (amount, dst))
        rows = tx.query("SELECT id, bal FROM accounts WHERE id IN (%s, %s)", (src, dst))
    return {"pid": os.getpid(), "balances": dict(rows.rows)}


@app.task
def total() -> int:
    """Return the sum of all balances (one plain query, no transaction)."""
    return int(client.query("SELECT SUM(bal) FROM accounts").scalar())


@app.task
def hold(account: int, seconds: float) -> None:
    """Change a balance in a transaction, then stall before committing."""
    with client.transaction() as tx:
        tx.query("UPDATE accounts SET bal = bal + 1000 WHERE id = %s", (account,))
        time.sleep(seconds)  # killed here in the recipe's test
