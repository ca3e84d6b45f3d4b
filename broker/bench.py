"""`broker bench`: load through the broker beside direct pymysql (being written)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add bench's flags to its subparser."""
    parser.add_argument("--dsn", help="MySQL to measure against")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark."""
    raise SystemExit("broker bench: not written yet")
