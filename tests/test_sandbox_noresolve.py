"""The sandbox initialises and serves on a host whose name nothing resolves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# In a new UTS and mount namespace: an unknown hostname, and an /etc/hosts with
# no entries at all (so not even 'localhost' resolves), as on a minimal system.
NO_RESOLVE = """
set -e
empty=$(mktemp)
mount --bind "$empty" /etc/hosts
hostname "sandbox-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \\n')"
if getent hosts "$(hostname)" || getent hosts localhost; then
    echo "name resolution still works" >&2
    exit 3
fi
exec "$@"
"""

START_AND_QUERY = """
import sys
from broker.sandbox import Sandbox
import pymysql
sandbox = Sandbox(sys.argv[1])
sandbox.start()
try:
    conn = pymysql.connect(host=sandbox.host, port=sandbox.port, user=sandbox.user,
                           password=sandbox.password, database="broker")
    with conn.cursor() as cur:
        cur.execute("SELECT @@skip_name_resolve, 6 * 7")
        print(cur.fetchone())
    conn.close()
finally:
    sandbox.stop()
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--uts", "--mount", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare --uts --mount")
def test_sandbox_starts_without_name_resolution(tmp_path):
    proc = subprocess.run(
        [
            "unshare",
            "--uts",
            "--mount",
            "sh",
            "-c",
            NO_RESOLVE,
            "sh",
            sys.executable,
            "-c",
            START_AND_QUERY,
            str(tmp_path / "sandbox"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=110,
        check=False,
    )
    log = tmp_path / "sandbox" / "mysqld.log"
    detail = proc.stderr[-3000:] + (log.read_text()[-2000:] if log.exists() else "")
    assert proc.returncode == 0, detail
    assert proc.stdout.strip().splitlines()[-1] == "(1, 42)"
