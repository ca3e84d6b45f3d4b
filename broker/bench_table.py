"""The cells of `broker bench`, their progress line and the table they make.

A *cell* is one scenario at one client count N: `--rounds` runs per side,
alternating which side goes first (broker, direct, direct, broker, ...), so
machine noise falls on both. Its row holds both sides' figures side by side.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from broker.bench_run import Job, RunResult, measure
from broker.bench_settings import ROW_SCENARIOS, SINGLE_CLIENT, Settings
from broker.bench_setup import Target, broker_stats
from broker.metrics import percentile


def side_figures(side: str, results: list[RunResult]) -> dict:
    """Return one side's throughput, latency percentiles, errors and sample count."""
    ordered = sorted(lat for r in results for lat in r.latencies)
    return {
        f"qps_{side}": sum(r.rate for r in results) / len(results),
        f"p50_{side}_ms": percentile(ordered, 0.50) * 1000,
        f"p99_{side}_ms": percentile(ordered, 0.99) * 1000,
        f"errors_{side}": sum(r.errors for r in results),
        f"samples_{side}": len(ordered),
    }


def _cell(
    settings: Settings,
    target: Target,
    scenario: str,
    n: int,
    progress: Progress,
    label: str,
) -> dict:
    """Run one scenario at n clients, both sides, interleaved; return its row."""
    seconds = settings.duration / settings.rounds
    runs: dict[str, list[RunResult]] = {"broker": [], "direct": []}
    for round_ in range(settings.rounds):
        order = ("broker", "direct") if round_ % 2 == 0 else ("direct", "broker")
        for side in order:
            progress.update(f"{label}: {side}, round {round_ + 1}/{settings.rounds}")
            job = Job(scenario, side, seconds, target, settings)
            runs[side].append(measure(job, n))
    row: dict = {
        "scenario": scenario,
        "clients": n,
        "unit": "rows/s" if scenario in ROW_SCENARIOS else "queries/s",
    }
    for side, results in runs.items():
        row.update(side_figures(side, results))
        first_error = next((r.first_error for r in results if r.first_error), None)
        if first_error:
            progress.note(
                f"{label}: {row[f'errors_{side}']} {side} errors, first: {first_error}"
            )
    qps_direct = row["qps_direct"]
    row["ratio"] = row["qps_broker"] / qps_direct if qps_direct else None
    row["conns_broker"] = broker_stats(target.client, target.pool)["size"]
    row["conns_direct"] = n
    per = 1000 if scenario in ROW_SCENARIOS else 1  # µs per 1,000 rows, or per query
    row["broker_cpu_us"] = per_unit(
        [r.cpu_seconds for r in runs["broker"]], runs["broker"], per
    )
    for side, results in runs.items():
        row[f"client_cpu_{side}_us"] = per_unit(
            [r.client_cpu_seconds for r in results], results, per
        )
        row[f"mysql_cpu_{side}_us"] = per_unit(
            [r.mysql_cpu_seconds for r in results], results, per
        )
        parts = [row[f"client_cpu_{side}_us"], row[f"mysql_cpu_{side}_us"]]
        if side == "broker":
            parts.append(row["broker_cpu_us"])
        row[f"cpu_{side}_us"] = None if None in parts else sum(parts)
        row[f"switches_{side}"] = per_unit(
            [r.host_switches for r in results], results, per, scale=1
        )
    row["switches_broker_own"] = per_unit(
        [r.broker_switches for r in runs["broker"]], runs["broker"], per, scale=1
    )
    return row


def per_unit(
    amounts: list[float | None],
    results: list[RunResult],
    per: int,
    scale: float = 1e6,
) -> float | None:
    """Return amounts per query (per 1,000 rows when per is 1000), or None if unknown.

    CPU seconds become µs (scale 1e6); counts such as context switches stay counts.
    """
    units = sum(r.units for r in results)
    if not units or None in amounts:
        return None
    return sum(amounts) / units * scale * per  # type: ignore[arg-type]


def cells(settings: Settings, target: Target, progress: Progress) -> Iterator[dict]:
    """Yield one row per (scenario, client count), in the order given."""
    cells = [
        (scenario, n)
        for scenario in settings.scenarios
        for n in ((1,) if scenario in SINGLE_CLIENT else settings.clients)
    ]
    for i, (scenario, n) in enumerate(cells, 1):
        label = f"[{i}/{len(cells)}] {scenario} N={n}"
        row = _cell(settings, target, scenario, n, progress, label)
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        progress.cell_done(
            f"{label}: broker {row['qps_broker']:,.0f}, direct "
            f"{row['qps_direct']:,.0f} {row['unit']} ({ratio})"
        )
        yield row


class Progress:
    """One status line on stderr: redrawn in place on a terminal, else one per cell."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._shown = 0  # width of the line on screen, to blank it when redrawn

    def update(self, text: str) -> None:
        """Show what runs now (on a terminal only)."""
        if self._tty:
            sys.stderr.write("\r" + text.ljust(self._shown))
            sys.stderr.flush()
            self._shown = len(text)

    def cell_done(self, text: str) -> None:
        """Show a finished cell's figures."""
        if self._tty:
            self.update(text)
        else:
            print(f"broker bench: {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """Print a line that stays, such as a warning."""
        self.finish()
        print(f"broker bench: {text}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """End the redrawn line, if any."""
        if self._tty and self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = 0


COLUMNS = (
    # header, row key, format
    ("scenario", "scenario", "{}"),
    ("N", "clients", "{}"),
    ("qps broker", "qps_broker", "{:,.0f}"),
    ("qps direct", "qps_direct", "{:,.0f}"),
    ("ratio", "ratio", "{:.2f}"),
    ("p50 broker ms", "p50_broker_ms", "{:.3f}"),
    ("p50 direct ms", "p50_direct_ms", "{:.3f}"),
    ("p99 broker ms", "p99_broker_ms", "{:.3f}"),
    ("p99 direct ms", "p99_direct_ms", "{:.3f}"),
    ("conns broker", "conns_broker", "{}"),
    ("conns direct", "conns_direct", "{}"),
    ("broker µs/q", "broker_cpu_us", "{:,.0f}"),
    ("all µs/q broker", "cpu_broker_us", "{:,.0f}"),
    ("all µs/q direct", "cpu_direct_us", "{:,.0f}"),
    ("cs/q broker", "switches_broker", "{:.2f}"),
    ("cs/q direct", "switches_direct", "{:.2f}"),
    ("broker cs/q", "switches_broker_own", "{:.2f}"),
)


def format_table(rows: list[dict], about: str = "") -> str:
    """Return the rows as an aligned table, with what was measured around it."""
    cells = [
        [
            fmt.format(row[key]) if row[key] is not None else "-"
            for _, key, fmt in COLUMNS
        ]
        for row in rows
    ]
    widths = [
        max(len(header), *(len(line[i]) for line in cells))
        for i, (header, _, _) in enumerate(COLUMNS)
    ]

    def line(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    out = [about] if about else []
    out.append(line([header for header, _, _ in COLUMNS]))
    out += [line(values) for values in cells]
    out.append(
        "all µs/q: CPU time of clients, broker and MySQL together per query "
        "(- when MySQL is not on this host)"
    )
    out.append(
        "cs/q: context switches on the whole host per query, each side; "
        "broker cs/q: the broker's own"
    )
    if any(row["scenario"] in ROW_SCENARIOS for row in rows):
        out.append(
            "range, stream: qps is rows/s and µs/q is per 1,000 rows; "
            "stream runs one client"
        )
    if any(row["scenario"] == "txn" for row in rows):
        out.append("txn: qps and µs/q count whole transactions")
    return "\n".join(out)
