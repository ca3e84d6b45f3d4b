"""`broker bench --scenarios replica`: reads with one replica beside the primary alone.

The bench starts its own pair of sandbox servers (a primary with a binary
log, and a GTID replica of it) and one broker with two pools on the same
primary: ``alone`` (no replicas) and ``split`` (the replica in ``replicas``).
N clients run the point scenario with ``replica=True`` against each pool in
turn, alternating which goes first over --rounds, as the other cells do. On
one host the replica adds no CPU, only a second server to spread reads over:
the figure says what the broker's routing costs and what a second server's
lock and buffer-pool work buys, not what a replica on its own machine gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

import client
from broker.bench_run import Job, RunResult, measure
from broker.bench_settings import BenchError, Settings, pool_config
from broker.bench_setup import Target, make_fixture, pool_keys, start_broker
from broker.bench_table import Progress, per_unit, side_figures
from broker.sandbox import PRIMARY_OPTIONS, REPLICA_OPTIONS, Sandbox, SandboxError
from client.wire.protocol import SERVED_BY_PRIMARY

SIDES = ("alone", "split")  # the pools: primary only, primary + one replica
SERVING_TIMEOUT = 30.0


def main(settings: Settings, as_json: bool) -> int:
    """Run the replica cells; print the table (or JSON) and return an exit code."""
    if settings.dsn or settings.endpoint:
        print(
            "broker bench: --scenarios replica starts its own primary, replica "
            "and broker; leave out --dsn and --endpoint",
            file=sys.stderr,
        )
        return 2
    progress = Progress()
    try:
        with contextlib.ExitStack() as cleanup:
            targets, about = _set_up(settings, cleanup)
            rows = [_cell(settings, targets, n, progress) for n in settings.clients]
    except KeyboardInterrupt:
        progress.finish()
        print("broker bench: interrupted", file=sys.stderr)
        return 130
    except (BenchError, SandboxError) as err:
        progress.finish()
        print(f"broker bench: {err}", file=sys.stderr)
        return 1
    progress.finish()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(about)
    print(
        f"{'N':>3}  {'qps alone':>10}  {'qps split':>10}  {'ratio':>6}  "
        f"{'p50 alone ms':>12}  {'p50 split ms':>12}  {'broker µs/q alone':>17}  "
        f"{'split':>6}  {'on replica':>10}"
    )
    for r in rows:
        cpu = [
            "-" if r[f"broker_us_{side}"] is None else f"{r[f'broker_us_{side}']:.0f}"
            for side in SIDES
        ]
        print(
            f"{r['clients']:>3}  {r['qps_alone']:>10,.0f}  {r['qps_split']:>10,.0f}  "
            f"{r['ratio']:>6.2f}  {r['p50_alone_ms']:>12.3f}  "
            f"{r['p50_split_ms']:>12.3f}  {cpu[0]:>17}  {cpu[1]:>6}  "
            f"{r['replica_share']:>10.0%}"
        )
    return 0


def _set_up(
    settings: Settings, cleanup: contextlib.ExitStack
) -> tuple[dict[str, Target], str]:
    tmp = tempfile.mkdtemp(prefix="broker-bench-")
    cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
    primary = Sandbox(os.path.join(tmp, "primary"), options=PRIMARY_OPTIONS)
    replica = Sandbox(os.path.join(tmp, "replica"), options=REPLICA_OPTIONS)
    for server in (primary, replica):
        cleanup.callback(server.stop)
        server.start()
    replica.replicate(primary)
    connect_args = pool_config(primary.dsn(), None).connect_args()
    version = make_fixture(connect_args, settings)
    endpoint = f"ipc://{tmp}/bench.sock"
    pool = pool_keys(primary.dsn(), settings)
    pools = {"alone": pool, "split": dict(pool, replicas=[replica.dsn()])}
    proc = start_broker(tmp, endpoint, pools, settings, cleanup)
    targets = {}
    for side in SIDES:
        c = client.Client(
            endpoint=endpoint, timeout=settings.timeout, pool=side, replica=True
        )
        targets[side] = Target(c, connect_args, proc.pid, primary.pid, side)
    _wait_serving(targets["split"].client)
    about = (
        f"broker bench: {version}, primary 127.0.0.1:{primary.port} and replica "
        f"127.0.0.1:{replica.port} on this host; broker pid {proc.pid}, pools "
        f"'alone' (primary only) and 'split' (one replica), max_size "
        f"{settings.max_size} each; point reads with replica=True; "
        f"{os.cpu_count()} CPUs; {settings.rounds} x "
        f"{settings.duration / settings.rounds:g} s per side per cell, interleaved"
    )
    return targets, about


def _wait_serving(c: client.Client) -> None:
    deadline = time.monotonic() + SERVING_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(client.BrokerUnavailable):
            if c.query("SELECT 1").served_by != SERVED_BY_PRIMARY:
                return
        time.sleep(0.1)
    raise BenchError(f"the replica did not serve within {SERVING_TIMEOUT:g} s")


def _split_reads(c: client.Client) -> tuple[int, int]:
    """Return (reads the replica ran, statements the primary ran) in pool split."""
    pool = c.stats()["pools"]["split"]
    return pool["replicas"][0]["reads"], pool["served"]


def _cell(
    settings: Settings,
    targets: dict[str, Target],
    n: int,
    progress: Progress,
) -> dict:
    """Run point reads at n clients on both pools, interleaved; return the row."""
    seconds = settings.duration / settings.rounds
    runs: dict[str, list[RunResult]] = {side: [] for side in SIDES}
    before = _split_reads(targets["split"].client)
    for round_ in range(settings.rounds):
        for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
            progress.update(f"replica N={n}: {side}, round {round_ + 1}")
            job = Job("point", "broker", seconds, targets[side], settings)
            runs[side].append(measure(job, n))
    row: dict = {"scenario": "replica", "clients": n}
    for side, results in runs.items():
        row.update(side_figures(side, results))
        row[f"broker_us_{side}"] = per_unit(
            [r.cpu_seconds for r in results], results, 1
        )
    after = _split_reads(targets["split"].client)
    on_replica, on_primary = after[0] - before[0], after[1] - before[1]
    total = on_replica + on_primary
    row["replica_share"] = on_replica / total if total else 0.0
    row["ratio"] = row["qps_split"] / row["qps_alone"] if row["qps_alone"] else 0.0
    progress.cell_done(
        f"replica N={n}: alone {row['qps_alone']:,.0f}, split "
        f"{row['qps_split']:,.0f} queries/s ({row['ratio']:.2f}x)"
    )
    return row
