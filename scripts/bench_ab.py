#!/usr/bin/env python3
"""`broker bench` from two checkouts, interleaved: is a change faster, or noise?

    python3 scripts/bench_ab.py BEFORE_DIR AFTER_DIR [--rounds 4]
        [--cells point:16,select1:1] [--duration 6]

Each directory is a checkout with its own ``.venv`` (``./dev test --version``
makes one). Every round runs each cell once from each side, alternating which
side goes first, each run a fresh `broker bench --json` (its own sandbox and
broker). Speed varies up to 2x within minutes on a shared VM, so only figures
taken this way compare; the table shows medians and [min-max] per side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

FIGURES = (
    ("ratio", "ratio"),
    ("qps_broker", "q/s broker"),
    ("broker_cpu_us", "broker µs/q"),
    ("client_cpu_broker_us", "client µs/q"),
    ("mysql_cpu_broker_us", "MySQL µs/q"),
    ("p50_broker_ms", "p50 ms"),
    ("switches_broker", "cs/q"),
)


def _run(checkout: str, scenario: str, clients: str, duration: float) -> dict | None:
    argv = [f"{checkout}/.venv/bin/broker", "bench", "--scenarios", scenario]
    argv += ["--clients", clients, "--duration", str(duration), "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=checkout)  # noqa: S603
    try:
        return json.loads(out.stdout)[0]
    except (ValueError, IndexError):
        print(f"{checkout}: {scenario} N={clients} failed:\n{out.stderr[-600:]}")
        return None


def _cell(rows: list[dict], key: str) -> str:
    values = [row[key] for row in rows if row.get(key) is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def main() -> int:
    """Run the rounds; print each run as it ends, then the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cells", default="point:16,select1:1")
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args()
    sides = {"before": args.before, "after": args.after}
    cells = [tuple(cell.split(":")) for cell in args.cells.split(",")]
    got: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
        for side in order:
            for scenario, clients in cells:
                row = _run(sides[side], scenario, clients, args.duration)
                if row is not None:
                    got.setdefault((scenario + ":" + clients, side), []).append(row)
                    print(
                        f"round {round_ + 1} {side} {scenario} N={clients}: "
                        f"ratio {row['ratio']:.2f}, broker "
                        f"{row['broker_cpu_us']:.1f} µs/q",
                        flush=True,
                    )
    for scenario, clients in cells:
        print(f"\n{scenario} N={clients}, medians [min-max] of {args.rounds} rounds")
        for key, label in FIGURES:
            cells_ = [
                _cell(got.get((f"{scenario}:{clients}", s), []), key) for s in sides
            ]
            print(f"  {label:12s} before {cells_[0]:24s} after {cells_[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
