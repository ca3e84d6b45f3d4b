"""`broker bench` end to end: a real server, a real broker, tiny settings.

Nothing here judges speed; only that every cell is measured on both sides and
reported consistently, and that the bench leaves nothing behind.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--duration", "0.3", "--rows", "1000", "--stream-rows", "10000"]


def _bench(*args: str, tmpdir: Path | None = None, timeout: float = 50.0):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PYTHONPATH"] = str(ROOT)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [sys.executable, "-m", "broker", "bench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def _tables(direct) -> set[str]:
    with direct.cursor() as cur:
        cur.execute("SHOW TABLES")
        return {row[0] for row in cur.fetchall()}


@pytest.mark.timeout(60)
def test_bench_json_has_a_row_per_scenario_and_client_count(
    mysql_dsn, password_file, direct, broker_dir
):
    done = _bench(
        "--dsn",
        mysql_dsn,
        "--password-file",
        str(password_file),
        "--clients",
        "1,2",
        "--scenarios",
        "select1,point,stream",
        "--json",
        *TINY,
        tmpdir=broker_dir,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    # The stream runs one client whatever the ladder: it pins a connection.
    cells = [(r["scenario"], r["clients"]) for r in rows]
    assert cells == [
        ("select1", 1),
        ("select1", 2),
        ("point", 1),
        ("point", 2),
        ("stream", 1),
    ]
    for row in rows:
        assert row["qps_broker"] > 0, row
        assert row["qps_direct"] > 0, row
        assert row["ratio"] == pytest.approx(row["qps_broker"] / row["qps_direct"])
        assert row["errors_broker"] == row["errors_direct"] == 0, row
        assert 0 < row["p50_broker_ms"] <= row["p99_broker_ms"], row
        assert 0 < row["p50_direct_ms"] <= row["p99_direct_ms"], row
        assert 1 <= row["conns_broker"] <= 4, row
        assert row["conns_direct"] == row["clients"]
        assert row["broker_cpu_us"] is not None, row
        assert row["switches_broker"] > 0, row
        assert row["switches_direct"] > 0, row
        assert row["switches_broker_own"] > 0, row
        # The sandbox runs here: every process's CPU is counted, on both sides
        # (MySQL's in clock ticks, which a run this short may not reach).
        assert row["client_cpu_broker_us"] > 0
        assert row["client_cpu_direct_us"] > 0
        assert row["mysql_cpu_broker_us"] >= 0
        assert row["mysql_cpu_direct_us"] >= 0
        assert row["cpu_broker_us"] == pytest.approx(
            row["client_cpu_broker_us"]
            + row["mysql_cpu_broker_us"]
            + row["broker_cpu_us"]
        )
    assert {r["unit"] for r in rows if r["scenario"] == "stream"} == {"rows/s"}
    assert {r["unit"] for r in rows if r["scenario"] != "stream"} == {"queries/s"}
    # One progress line per cell when stderr is not a terminal.
    assert done.stderr.count("broker bench: [") == len(rows), done.stderr
    assert not _tables(direct) & {"bench_accounts", "bench_inserts"}
    assert list(broker_dir.iterdir()) == []


@pytest.mark.timeout(60)
def test_bench_prints_one_table_using_a_running_broker(
    make_broker, password_file, direct
):
    b = make_broker(max_size=2)
    done = _bench(
        "--endpoint",
        b.endpoint,
        "--password-file",
        str(password_file),
        "--clients",
        "2",
        "--scenarios",
        "insert,txn,range",
        *TINY,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("scenario"))
    assert lines[header].split("  ")[:3] == ["scenario", "N", "qps broker"]
    assert lines[header].endswith(
        "broker µs/q  all µs/q broker  all µs/q direct  cs/q broker  cs/q direct  "
        "broker cs/q"
    )
    body = [line.split() for line in lines[header + 1 : header + 4]]
    assert [(cols[0], cols[1]) for cols in body] == [
        ("insert", "2"),
        ("txn", "2"),
        ("range", "2"),
    ]
    assert all(cols[9] in ("1", "2") and cols[10] == "2" for cols in body), body
    assert all(float(cols[-3]) > 0 and float(cols[-1]) > 0 for cols in body), body
    assert lines[header + 4 :] == [
        "all µs/q: CPU time of clients, broker and MySQL together per query "
        "(- when MySQL is not on this host)",
        "cs/q: context switches on the whole host per query, each side; "
        "broker cs/q: the broker's own",
        "range, stream: qps is rows/s and µs/q is per 1,000 rows; "
        "stream runs one client",
        "txn: qps and µs/q count whole transactions",
    ]
    assert "pipeline_depth 1 busy_poll_us 0;" in lines[0]  # that broker's settings
    assert b.proc.poll() is None  # someone else's broker is left running


@pytest.mark.timeout(60)
def test_bench_without_dsn_runs_its_own_sandbox_and_cleans_up(broker_dir):
    done = _bench(
        "--clients",
        "1",
        "--scenarios",
        "point",
        "--json",
        *TINY,
        tmpdir=broker_dir,
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["scenario"] == "point"
    assert row["qps_broker"] > 0
    assert row["qps_direct"] > 0
    assert list(broker_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenarios", "point,nope"], "--scenarios: unknown nope"),
        (["--clients", "1,0"], "--clients"),
        (["--duration", "0"], "--duration: must be > 0"),
        (["--rows", "10"], "--rows: must be >= 1000"),
        (["--dsn", "mysql://u:secret@127.0.0.1/db"], "must not contain a password"),
        (["--dsn", "postgres://u@h/db"], "--dsn: must start with mysql://"),
    ],
)
def test_bench_refuses_bad_flags_before_starting_anything(args, message):
    done = _bench(*args, timeout=20)
    assert done.returncode == 2
    assert message in done.stderr
    assert "secret" not in done.stderr
    assert done.stdout == ""


@pytest.mark.timeout(120)
def test_bench_runs_its_own_sandbox_with_a_thread_pool(broker_dir):
    done = _bench(
        "--mysqld-thread-pool",
        "--clients",
        "2",
        "--scenarios",
        "select1",
        *TINY,
        tmpdir=broker_dir,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "(pool-of-threads)" in lines[0], lines[0]
    row = next(line.split() for line in lines if line.startswith("select1"))
    assert int(row[2].replace(",", "")) > 0
    assert int(row[3].replace(",", "")) > 0
    assert list(broker_dir.iterdir()) == []
