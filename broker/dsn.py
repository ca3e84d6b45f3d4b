"""DSNs and passwords: parse a pool's DSN, strip its password, read a password file.

Invariants a reader needs first:

- An error about a DSN names the part at fault, never the whole string: it may
  hold a password. `strip_password` is the only form of a DSN fit for logs.
- A replica DSN carries no password of its own: replicas use the pool's.
"""

from __future__ import annotations

import math
import os
import urllib.parse

from pymysql.charset import charset_by_name

from broker.settings import error, suggest

DSN_SCHEMES = ("mysql", "mariadb")
MAX_CONNECT_TIMEOUT = 31536000.0  # pymysql refuses anything above one year
DEFAULT_CONNECT_TIMEOUT = 10.0  # pymysql's own default
DEFAULT_CHARSET = "utf8mb4"
DSN_PARAMS = ("charset", "connect_timeout", "unix_socket")
# Settings that belong inside the DSN, for a hint when they appear as pool keys.
DSN_PARTS = ("host", "port", "user", "database", "unix_socket", "charset")


def parse_dsn(key: str, dsn: str) -> dict:
    """Split ``mysql://user:password@host:port/database?params`` into parts.

    Error messages name only the part at fault: the DSN may hold a password.
    """
    try:
        split = urllib.parse.urlsplit(dsn)
    except ValueError:
        raise error(key, "is not a URL (a [ without its ]?)") from None
    if split.scheme not in DSN_SCHEMES:
        shown = split.scheme or dsn.partition(":")[0][:20]
        raise error(
            key, f"must start with mysql:// or mariadb://, got {shown + '://'!r}"
        )
    # An unescaped @ : / ? or # in a password moves the rest of it into the path,
    # query or fragment; say so without echoing any of it.
    if ("@" in dsn and "@" not in split.netloc) or split.fragment:
        raise error(
            key,
            "is malformed; percent-encode special characters (@ : / ? #) "
            "in the user and password",
        )
    try:
        port = split.port
    except ValueError:
        raise error(key, "port must be a number from 1 to 65535") from None
    database = urllib.parse.unquote(split.path.lstrip("/")) or None
    if database is not None and "/" in database:
        raise error(key, f"database name must not contain '/', got {database!r}")
    params = _params(key, split.query)
    charset = _charset(key, params)
    connect_timeout = _connect_timeout(key, params)
    unix_socket = params.get("unix_socket")
    if unix_socket == "":
        raise error(key, "unix_socket must be a path, got ''")
    host = split.hostname
    if not host and not unix_socket:
        raise error(key, "needs a host (mysql://user@HOST/db) or ?unix_socket=PATH")
    user = split.username
    password = split.password
    return {
        "host": host,
        "port": port or 3306,
        "user": urllib.parse.unquote(user) if user else None,
        "password": urllib.parse.unquote(password) if password is not None else None,
        "database": database,
        "unix_socket": unix_socket,
        "charset": charset,
        "connect_timeout": connect_timeout,
    }


def _params(key: str, query: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=bool(query)
        )
    except ValueError:
        raise error(key, "query string is malformed") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in DSN_PARAMS:
            raise error(
                key,
                f"unknown parameter {name!r}{suggest(name, DSN_PARAMS)};"
                f" known: {', '.join(DSN_PARAMS)}",
            )
        if name in params:
            raise error(key, f"parameter {name!r} given twice")
        params[name] = value
    return params


def _charset(key: str, params: dict[str, str]) -> str:
    charset = params.get("charset", DEFAULT_CHARSET)
    if charset_by_name(charset) is None:
        raise error(key, f"unknown charset {charset!r}")
    return charset


def _connect_timeout(key: str, params: dict[str, str]) -> float:
    if "connect_timeout" not in params:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        timeout = float(params["connect_timeout"])
    except ValueError:
        timeout = math.nan
    if not 0 < timeout <= MAX_CONNECT_TIMEOUT:
        raise error(
            key,
            "connect_timeout must be seconds > 0 and <= 31536000, "
            f"got {params['connect_timeout']!r}",
        )
    return timeout


def parse_replica_dsn(key: str, dsn: str) -> dict:
    """Check one entry of ``replicas``: a DSN without a password of its own."""
    parts = parse_dsn(key, dsn)
    if parts["password"] is not None:
        raise error(
            key,
            "a replica DSN must not contain a password: replicas use the pool's "
            "user and password (dsn, password_file or $BROKER_PASSWORD)",
        )
    return parts


def strip_password(dsn: str) -> str:
    """Return the DSN without any password, for logs and messages."""
    split = urllib.parse.urlsplit(dsn)
    userinfo, at, hostport = split.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hostport}" if at and user else hostport
    return urllib.parse.urlunsplit(split._replace(netloc=netloc))


def has_password(dsn: str) -> bool:
    """Return whether the DSN carries a password."""
    try:
        return urllib.parse.urlsplit(dsn).password is not None
    except ValueError:
        return False  # not a URL: PoolConfig reports that, without echoing it


def read_password(key: str, path: str, base: str) -> tuple[str, str]:
    """Return the resolved path and the stripped contents of a password file."""
    full = os.path.join(base, path)
    try:
        with open(full, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as err:
        raise error(key, f"cannot read {full}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise error(key, f"{full} is not UTF-8 text") from err
    if not secret:
        raise error(key, f"{full} is empty")
    return full, secret
