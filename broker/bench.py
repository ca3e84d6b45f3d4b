"""`broker bench`: load through the broker beside direct pymysql, interleaved.

A *cell* is one scenario at one client count N. Each cell forks N client
processes per run, once through the broker ("broker") and once with a pymysql
connection per process ("direct"), for `--rounds` rounds that alternate which
side goes first (broker, direct, direct, broker, ...). On a small, noisy
machine only figures taken this way, side by side in one run, are compared.

This module is the command; its parts are `broker.bench_settings` (scenarios,
flags), `broker.bench_setup` (sandbox, fixture, the broker it starts through
`broker.launch`), `broker.bench_run` (one forked run and its CPU and
context-switch counters), `broker.bench_table` (cells, progress, the table)
and `broker.bench_replica` (the replica scenario).

Invariants a reader needs first:

- A child process never returns into the parent's code: it leaves with
  ``os._exit()``, so no atexit hook (the sandbox's) and no finaliser runs in it.
- Every wait is bounded: children must be ready, run and report within
  deadlines and are killed otherwise. Ctrl-C or SIGTERM kills them, stops the
  broker and the sandbox this bench started, and removes its temporary directory.
- All processes share CLOCK_MONOTONIC, so the one start time the parent sends
  lines the children up; nothing measured includes connecting or warming up.
- Fixture tables are named ``bench_*`` and are dropped afterwards; with
  ``--dsn`` they live in that DSN's database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys

from broker.bench_settings import BenchError, add_arguments, settings_from
from broker.bench_setup import set_up
from broker.bench_table import Progress, cells, format_table
from broker.ipc import raise_open_files_limit

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table (or JSON) and return an exit code."""
    try:
        settings = settings_from(args)
    except BenchError as err:
        print(f"broker bench: {err}", file=sys.stderr)
        return 2
    # Each direct client is a MySQL socket and each child a pipe here: 512
    # clients need more than a shell's 1024 descriptors.
    raise_open_files_limit()
    # SIGTERM takes the Ctrl-C path, so the children, broker and sandbox stop too.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    if "replica" in settings.scenarios:
        from broker import bench_replica

        try:
            return bench_replica.main(settings, args.json)
        finally:
            signal.signal(signal.SIGTERM, previous)
    progress = Progress()
    try:
        with contextlib.ExitStack() as cleanup:
            target, about = set_up(settings, cleanup)
            rows = list(cells(settings, target, progress))
    except KeyboardInterrupt:
        progress.finish()
        print("broker bench: interrupted", file=sys.stderr)
        return 130
    except BenchError as err:
        progress.finish()
        print(f"broker bench: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.finish()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, about))
    return 0
