"""SQLAlchemy's dialect compliance suite through mysql+broker (tests/sqla_suite).

The suite runs in a pytest of its own (SQLAlchemy's plugin owns that session)
against a real broker on this test's database. Every failure must be one of
`BROKER_FAILURES`, each a thing a broker cannot do, with its reason; the
README lists them. ``BROKER_SQLA_DRIVER=pymysql`` runs the same suite through
mysql+pymysql on the same server instead, for comparison.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parent / "sqla_suite"
SCHEMAS = ("test_schema", "test_schema_2")  # SQLAlchemy's names for cross-schema tests

_TEMP = (
    "a temporary table lives in one MySQL session; through the broker a session "
    "lasts one transaction, and the suite creates the table in one and reflects "
    "it in the next (with mysql+pymysql, QueuePool hands back the same session)"
)
_SS = (
    "the suite recognises a server-side cursor by driver name (pymysql, mysqldb, "
    "...; its own TODO says third-party dialects cannot pass); mysql+broker's "
    "stream_results does use client.dbapi.SSCursor (test_sqlalchemy.py shows it)"
)
# Tests that fail through the broker, and why a broker cannot pass them: test
# ids without the class's "_<dialect>+<driver>_<version>" suffix.
BROKER_FAILURES: dict[str, str] = {
    "ComponentReflectionTest::test_get_temp_table_columns": _TEMP,
    "ComponentReflectionTest::test_get_temp_table_indexes": _TEMP,
    "ComponentReflectionTest::test_get_temp_table_unique_constraints": _TEMP,
    "ComponentReflectionTest::test_reflect_table_temp_table": _TEMP,
    "ServerSideCursorsTest::test_conn_option": _SS,
    "ServerSideCursorsTest::test_ss_cursor_status": _SS,
}


def _run_suite(url: str) -> tuple[dict[str, int], list[str], str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(SUITE / "pytest.ini"),
            "--rootdir",
            str(SUITE),
            str(SUITE),
            "--dburi",
            url,
        ],
        capture_output=True,
        text=True,
        cwd=SUITE,
        timeout=600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    found = re.findall(r"^.*\d+ passed.* in [\d.]+s.*$", out, re.MULTILINE)
    summary = found[-1] if found else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", summary)}
    failed = [
        re.sub(r"_[a-z]+\+\w+_[\d_]+::", "::", name.split("[")[0])
        for name in re.findall(r"^(?:FAILED|ERROR) \S+?::(\S+)", out, re.MULTILINE)
    ]
    return counts, failed, out


@pytest.fixture
def schemas(mysql_server):
    conn = mysql_server.admin()
    try:
        for name in SCHEMAS:
            conn.query(f"DROP DATABASE IF EXISTS `{name}`")
            conn.query(f"CREATE DATABASE `{name}`")
        yield
    finally:
        for name in SCHEMAS:
            conn.query(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sqlalchemy_compliance_suite(make_broker, mysql_server, database, schemas):
    driver = os.environ.get("BROKER_SQLA_DRIVER", "broker")
    if driver == "pymysql":
        password = urllib.parse.quote(mysql_server.password, safe="")
        url = (
            f"mysql+pymysql://{mysql_server.user}:{password}@{mysql_server.host}:"
            f"{mysql_server.port}/{database}?charset=utf8mb4"
        )
    else:
        b = make_broker(max_size=8, max_pins_per_client=0, queue_timeout=30)
        url = f"mysql+broker:///?endpoint={b.endpoint}&timeout=60"
    counts, failed, out = _run_suite(url)
    print(f"{driver}: {counts}")
    print("\n".join(sorted(set(failed))))
    assert counts.get("passed", 0) > 500, out[-5000:]
    if driver == "broker":
        unexpected = sorted(set(failed) - set(BROKER_FAILURES))
        assert not unexpected, "\n".join(unexpected) + "\n" + out[-5000:]
