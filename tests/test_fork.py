"""A Client used in the parent keeps working in forked children and threads."""

import multiprocessing
import os
import threading

import pytest

import client

QUERIES = 300


def _echo_many(c: client.Client, tag: str, count: int = QUERIES) -> tuple[int, int]:
    """Run count queries that echo unique values; return (mismatches, errors)."""
    mismatches = errors = 0
    for i in range(count):
        token = f"{tag}-{i}"
        try:
            got = c.query("SELECT %s, %s", (token, i)).rows
        except client.Error:
            errors += 1
            continue
        if got != [(token, i)]:
            mismatches += 1
    return mismatches, errors


_shared: client.Client | None = None


def _child(tag: str) -> tuple[int, int]:
    return _echo_many(_shared, tag)


def test_client_survives_fork_in_multiprocessing_and_raw_fork(broker):
    global _shared
    _shared = broker.client()
    assert _echo_many(_shared, "parent", 20) == (0, 0)

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(16) as pool:
        results = pool.map(_child, [f"mp{n}" for n in range(16)])
    assert results == [(0, 0)] * 16

    pids = []
    for n in range(8):
        pid = os.fork()
        if pid == 0:
            try:
                code = 0 if _echo_many(_shared, f"fork{n}") == (0, 0) else 1
            except BaseException:
                code = 2
            os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0] * 8
    assert _echo_many(_shared, "parent-after", 50) == (0, 0)
    _shared.close()


def test_threads_share_one_client(broker):
    c = broker.client()
    results = []

    def run(n: int) -> None:
        results.append(_echo_many(c, f"thread{n}"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(0, 0)] * 8


def test_transaction_is_bound_to_its_process_and_thread(broker):
    c = broker.client()
    with c.transaction() as tx:
        tx.query("SELECT 1")
        errors = []

        def other_thread() -> None:
            try:
                tx.query("SELECT 2")
            except client.InterfaceError as err:
                errors.append(err)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1
        assert "belongs to pid" in errors[0].msg
        pid = os.fork()
        if pid == 0:
            try:
                tx.query("SELECT 3")
                os._exit(1)
            except client.InterfaceError:
                os._exit(0 if c.query("SELECT 4").scalar() == 4 else 3)
            except BaseException:
                os._exit(2)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert tx.query("SELECT 5").scalar() == 5


@pytest.mark.timeout(60)
def test_late_reply_is_never_taken_for_the_next_answer(broker):
    c = broker.client()
    with pytest.raises(client.QueryTimeout):
        c.query("SELECT SLEEP(2), 'late'", timeout=0.3)
    for i in range(20):
        assert c.query("SELECT %s", (i,)).scalar() == i
