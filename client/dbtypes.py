"""PEP 249 type objects and constructors of `client.dbapi`, over pymysql's codes.

A type code in ``cursor.description`` is pymysql's FIELD_TYPE number and
compares equal to the object of its kind.
"""

from __future__ import annotations

import datetime
import time

import pymysql
from pymysql.constants import FIELD_TYPE

# pymysql's own sets, completed with the codes MySQL 5+ reports (NEWDECIMAL, JSON).
DBAPISet = pymysql.DBAPISet
STRING = DBAPISet(
    [
        FIELD_TYPE.ENUM,
        FIELD_TYPE.SET,
        FIELD_TYPE.STRING,
        FIELD_TYPE.VAR_STRING,
        FIELD_TYPE.VARCHAR,
        FIELD_TYPE.JSON,
    ]
)
BINARY = DBAPISet(
    [
        FIELD_TYPE.BLOB,
        FIELD_TYPE.LONG_BLOB,
        FIELD_TYPE.MEDIUM_BLOB,
        FIELD_TYPE.TINY_BLOB,
        FIELD_TYPE.BIT,
        FIELD_TYPE.GEOMETRY,
    ]
)
NUMBER = DBAPISet(
    [
        FIELD_TYPE.DECIMAL,
        FIELD_TYPE.NEWDECIMAL,
        FIELD_TYPE.DOUBLE,
        FIELD_TYPE.FLOAT,
        FIELD_TYPE.INT24,
        FIELD_TYPE.LONG,
        FIELD_TYPE.LONGLONG,
        FIELD_TYPE.SHORT,
        FIELD_TYPE.TINY,
        FIELD_TYPE.YEAR,
    ]
)
DATE = DBAPISet([FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE])
TIME = DBAPISet([FIELD_TYPE.TIME])
TIMESTAMP = DBAPISet([FIELD_TYPE.TIMESTAMP, FIELD_TYPE.DATETIME])
DATETIME = TIMESTAMP
ROWID = DBAPISet()  # MySQL has no row id type

# Type constructors (PEP 249).
Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:
    """Return the local date of a Unix timestamp."""
    return datetime.date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:
    """Return the local time of day of a Unix timestamp."""
    return datetime.time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:
    """Return the local date and time of a Unix timestamp."""
    return datetime.datetime(*time.localtime(ticks)[:6])
