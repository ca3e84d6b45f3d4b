"""Each error class survives to_wire/from_wire with errno, sqlstate and msg."""

import pymysql
import pytest
from broker_fixtures import PEP249_ERRORS

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


@pytest.mark.parametrize("name", PEP249_ERRORS)
def test_each_class_is_also_the_pymysql_class_of_its_name(name):
    ours, theirs = getattr(client, name), getattr(pymysql.err, name)
    assert issubclass(ours, theirs)
    assert issubclass(ours, pymysql.MySQLError)


def test_pymysql_handlers_catch_client_errors_and_the_tree_is_unchanged():
    err = errors.from_wire(["IntegrityError", 1062, "Duplicate entry", "23000"])
    with pytest.raises(pymysql.err.IntegrityError) as caught:
        raise err
    assert caught.value is err
    assert (err.args, err.sqlstate, str(err)) == (
        (1062, "Duplicate entry"),
        "23000",
        "(1062, 'Duplicate entry')",
    )
    assert isinstance(client.PoolTimeout(), pymysql.err.OperationalError)
    assert not issubclass(client.IntegrityError, pymysql.err.OperationalError)
    assert not issubclass(client.InterfaceError, client.DatabaseError)
    assert client.IntegrityError.__mro__[1:3] == (client.DatabaseError, client.Error)
    assert errors.from_pymysql(err) is err


def test_pymysql_handler_catches_a_real_duplicate_key(db):
    db.query("CREATE TABLE u (id INT PRIMARY KEY)")
    db.query("INSERT INTO u VALUES (1)")
    with pytest.raises(pymysql.err.IntegrityError) as caught:
        db.query("INSERT INTO u VALUES (1)")
    assert type(caught.value) is client.IntegrityError
    assert caught.value.errno == 1062
