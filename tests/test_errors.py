"""Each error class survives to_wire/from_wire with errno, sqlstate and msg."""

import pymysql
import pytest

import client
from client import errors

CLASSES = [
    client.Error,
    client.InterfaceError,
    client.DatabaseError,
    client.DataError,
    client.OperationalError,
    client.IntegrityError,
    client.InternalError,
    client.ProgrammingError,
    client.NotSupportedError,
    client.BrokerUnavailable,
    client.PoolTimeout,
    client.QueryTimeout,
    client.OutcomeUnknown,
]


@pytest.mark.parametrize("cls", CLASSES)
def test_error_survives_the_wire(cls):
    err = errors.from_wire(errors.to_wire(cls(1062, "Duplicate entry", "23000")))
    assert type(err) is cls
    assert (err.errno, err.msg, err.sqlstate) == (1062, "Duplicate entry", "23000")


def test_broker_conditions_are_operational_errors():
    for cls in (
        client.BrokerUnavailable,
        client.PoolTimeout,
        client.QueryTimeout,
        client.OutcomeUnknown,
    ):
        assert issubclass(cls, client.OperationalError)
        assert issubclass(cls, client.DatabaseError)


def test_unknown_class_name_becomes_internal_error():
    err = errors.from_wire(["Bogus", 5, "odd", None])
    assert type(err) is client.InternalError
    assert err.errno == 5
    assert type(errors.from_wire("not a list")) is client.InternalError


def test_pymysql_error_keeps_class_and_values():
    try:
        pymysql.err.raise_mysql_exception(
            b"\xff\x26\x04#23000Duplicate entry '1' for key 'PRIMARY'"
        )
    except pymysql.MySQLError as exc:
        err = errors.from_pymysql(exc)
    assert type(err) is client.IntegrityError
    assert err.errno == 1062
    assert err.sqlstate == "23000"
    assert err.msg == "Duplicate entry '1' for key 'PRIMARY'"
    assert err.args == (1062, "Duplicate entry '1' for key 'PRIMARY'")
