"""Configuration: defaults, precedence, validation messages, secrets kept out of logs.

No network and no real environment: every load() gets ``environ=`` explicitly.
"""

import dataclasses
import os
import textwrap

import pytest

from broker.config import (
    BrokerConfig,
    Config,
    ConfigError,
    PoolConfig,
    config_warnings,
    describe,
    load,
    needs_restart,
)
from client.wire.protocol import DEFAULT_ENDPOINT

SECRET = "s3cr3t-Pa55"  # noqa: S105  a marker to look for, not a credential
DSN = "mysql://app@127.0.0.1:3306/appdb"


def write_config(tmp_path, text, name="broker.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(tmp_path, text, **kwargs):
    kwargs.setdefault("environ", {})
    return load(write_config(tmp_path, text), **kwargs)


# -- defaults ---------------------------------------------------------------------


def test_defaults_without_any_input_make_a_sandbox_default_pool():
    config = load(environ={})
    assert config.sandbox is True
    assert config.source is None
    assert config.broker == BrokerConfig()
    assert config.broker.endpoint == (DEFAULT_ENDPOINT,)
    assert config.broker.socket_mode == 0o660
    assert config.broker.max_message_bytes == 16 * 1024 * 1024
    assert config.broker.drain_timeout == 30.0
    assert config.broker.metrics_address is None
    assert config.broker.log_level == "info"
    assert list(config.pools) == ["default"]
    pool = config.pools["default"]
    assert pool == PoolConfig(name="default", dsn="")
    assert (pool.min_size, pool.max_size, pool.max_uses) == (1, 10, 0)
    assert (pool.queue_timeout, pool.query_timeout) == (5.0, 30.0)
    assert (pool.max_lifetime, pool.idle_timeout) == (3600.0, 600.0)
    assert pool.transaction_idle_timeout == 60.0
    assert pool.init_sql == ()
    assert pool.read_only is False


def test_dsn_alone_is_enough_for_a_default_pool():
    config = load(dsn=DSN, environ={})
    assert config.sandbox is False
    args = config.pools["default"].connect_args()
    assert args == {
        "host": "127.0.0.1",
        "port": 3306,
        "user": "app",
        "password": None,
        "database": "appdb",
        "unix_socket": None,
        "charset": "utf8mb4",
        "connect_timeout": 10.0,
    }


def test_every_documented_key_is_accepted(tmp_path):
    (tmp_path / "pw").write_text(SECRET + "\n")
    config = load_text(
        tmp_path,
        f"""
        [broker]
        endpoint = "ipc:///run/broker/broker.sock"
        socket_mode = "0660"
        max_message_bytes = 16777216
        drain_timeout = 30
        metrics_address = "127.0.0.1:9187"
        log_level = "debug"

        [pools.default]
        dsn = "mysql://app@127.0.0.1:3306/appdb?charset=utf8mb4"
        password_file = "{tmp_path / "pw"}"
        min_size = 2
        max_size = 20
        queue_timeout = 5.0
        max_lifetime = 3600
        idle_timeout = 600
        max_uses = 1000
        init_sql = ["SET time_zone = '+00:00'"]
        query_timeout = 30
        transaction_idle_timeout = 60
        read_only = true

        [pools.reports]
        dsn = "mariadb://ro@replica/appdb?unix_socket=/run/mysqld/mysqld.sock"
        """,
    )
    assert config.sandbox is False
    assert config.broker.metrics_address == "127.0.0.1:9187"
    assert config.broker.log_level == "debug"
    default = config.pools["default"]
    assert (default.min_size, default.max_size, default.max_uses) == (2, 20, 1000)
    assert isinstance(default.max_lifetime, float)
    assert default.init_sql == ("SET time_zone = '+00:00'",)
    assert default.read_only is True
    assert default.password == SECRET
    reports = config.pools["reports"].connect_args()
    assert reports["unix_socket"] == "/run/mysqld/mysqld.sock"
    assert reports["user"] == "ro"
    assert reports["password"] is None


# -- precedence: defaults < file < environment < flags --------------------------


@pytest.fixture
def layered_file(tmp_path):
    return write_config(
        tmp_path,
        """
        [broker]
        endpoint = "ipc:///tmp/file.sock"
        log_level = "warning"

        [pools.default]
        dsn = "mysql://file@filehost/db"
        max_size = 3
        """,
    )


def test_file_overrides_defaults(layered_file):
    config = load(layered_file, environ={})
    assert config.source == str(layered_file)
    assert config.broker.endpoint == ("ipc:///tmp/file.sock",)
    assert config.broker.log_level == "warning"
    assert config.pools["default"].host == "filehost"
    assert config.pools["default"].max_size == 3


def test_environment_overrides_file(layered_file):
    environ = {
        "BROKER_ENDPOINT": "tcp://127.0.0.1:5555",
        "BROKER_LOG_LEVEL": "error",
        "BROKER_DSN": "mysql://env@envhost/db",
    }
    config = load(layered_file, environ=environ)
    assert config.broker.endpoint == ("tcp://127.0.0.1:5555",)
    assert config.broker.log_level == "error"
    pool = config.pools["default"]
    assert (pool.user, pool.host) == ("env", "envhost")
    assert pool.max_size == 3  # the rest of the table still comes from the file


def test_flags_override_environment(layered_file):
    environ = {
        "BROKER_ENDPOINT": "tcp://127.0.0.1:5555",
        "BROKER_LOG_LEVEL": "error",
        "BROKER_DSN": "mysql://env@envhost/db",
    }
    config = load(
        layered_file,
        dsn="mysql://flag@flaghost/db",
        endpoint="ipc:///tmp/flag.sock",
        log_level="DEBUG",
        environ=environ,
    )
    assert config.broker.endpoint == ("ipc:///tmp/flag.sock",)
    assert config.broker.log_level == "debug"
    assert config.pools["default"].host == "flaghost"


def test_broker_config_env_names_the_file(layered_file, tmp_path):
    config = load(environ={"BROKER_CONFIG": str(layered_file)})
    assert config.source == str(layered_file)
    other = write_config(tmp_path, "[pools.x]\ndsn = 'mysql://h/db'\n", "other.toml")
    config = load(other, environ={"BROKER_CONFIG": str(layered_file)})
    assert list(config.pools) == ["x"]


def test_empty_environment_variables_count_as_unset():
    config = load(
        environ={"BROKER_DSN": "", "BROKER_ENDPOINT": "", "BROKER_CONFIG": ""}
    )
    assert config.sandbox is True
    assert config.broker.endpoint == (DEFAULT_ENDPOINT,)


def test_dsn_flag_adds_default_pool_beside_file_pools(tmp_path):
    config = load_text(tmp_path, "[pools.reports]\ndsn = 'mysql://h/db'\n", dsn=DSN)
    assert sorted(config.pools) == ["default", "reports"]


# -- validation: every bad value names its key ------------------------------------

INVALID = [
    (
        "[pools.default]\nmax_size = 0",
        r"^pools\.default\.max_size: must be an integer >= 1, got 0$",
    ),
    ("[pools.default]\nmax_size = true", r"^pools\.default\.max_size: .* got True$"),
    ("[pools.default]\nmax_size = 2.5", r"^pools\.default\.max_size: .* got 2\.5$"),
    ("[pools.default]\nmin_size = -1", r"^pools\.default\.min_size: .* >= 0, got -1$"),
    (
        "[pools.default]\nmin_size = 5\nmax_size = 2",
        r"^pools\.default\.min_size: must be <= max_size \(2\), got 5$",
    ),
    ("[pools.default]\nmax_uses = '10'", r"^pools\.default\.max_uses: .* got '10'$"),
    (
        "[pools.default]\nqueue_timeout = -1",
        r"^pools\.default\.queue_timeout: .* >= 0, got -1$",
    ),
    (
        "[pools.default]\nidle_timeout = 'soon'",
        r"^pools\.default\.idle_timeout: .* got 'soon'$",
    ),
    (
        "[pools.default]\nmax_lifetime = 0",
        r"^pools\.default\.max_lifetime: .* > 0, got 0$",
    ),
    (
        "[pools.default]\nquery_timeout = inf",
        r"^pools\.default\.query_timeout: .* got inf$",
    ),
    (
        "[pools.default]\ntransaction_idle_timeout = nan",
        r"^pools\.default\.transaction_idle_timeout: .* got nan$",
    ),
    (
        "[pools.default]\nkill_grace = 0",
        r"^pools\.default\.kill_grace: .* > 0, got 0$",
    ),
    (
        "[pools.default]\ninit_sql = [1]",
        r"^pools\.default\.init_sql: must be a string or a list .* got \[1\]$",
    ),
    (
        "[pools.default]\ninit_sql = ['']",
        r"^pools\.default\.init_sql: must be a non-empty string, got ''$",
    ),
    (
        "[pools.default]\nread_only = 'yes'",
        r"^pools\.default\.read_only: must be true or false, got 'yes'$",
    ),
    (
        "[pools.default]\ndsn = ''",
        r"^pools\.default\.dsn: must be a non-empty string, got ''$",
    ),
    (
        "[pools.default]\ndsn = 'postgres://h/db'",
        r"^pools\.default\.dsn: must start with mysql:// or mariadb://, got 'postgres://'",
    ),
    (
        "[pools.default]\ndsn = 'mysql://h:70000/db'",
        r"^pools\.default\.dsn: port must be a number",
    ),
    (
        "[pools.default]\ndsn = 'mysql://h/db?ssl=1'",
        r"^pools\.default\.dsn: unknown parameter 'ssl'; known: charset, connect_tim",
    ),
    (
        "[pools.default]\ndsn = 'mysql://h/db?charset=utf8mb4&charset=latin1'",
        r"^pools\.default\.dsn: parameter 'charset' given twice$",
    ),
    (
        "[pools.default]\ndsn = 'mysql://h/db?charset=klingon'",
        r"^pools\.default\.dsn: unknown charset 'klingon'$",
    ),
    (
        "[pools.default]\ndsn = 'mysql://h/db?connect_timeout=0'",
        r"^pools\.default\.dsn: connect_timeout must be .* got '0'$",
    ),
    ("[pools.default]\ndsn = 'mysql:///db'", r"^pools\.default\.dsn: needs a host"),
    (
        "[pools.default]\ndsn = 'mysql://h/a/b'",
        r"^pools\.default\.dsn: database name must not contain '/'",
    ),
    (
        "[pools.default]\nmin_size = 1\n[pools.other]\nmax_size = 2\ndsn = 'mysql://h/db'",
        r"^pools\.default\.dsn: is required \(or --dsn / \$BROKER_DSN\)$",
    ),
    (
        "[pools.other]\nmax_size = 2\n[pools.x]\ndsn = 'mysql://h/db'",
        r"^pools\.other\.dsn: is required$",
    ),
    (
        "[pools.\"bad.name\"]\ndsn = 'mysql://h/db'",
        r"^pools\.bad\.name: pool name must match \[A-Za-z0-9_-\]\+, got 'bad\.name'",
    ),
    ("pools = 3", r"^pools: must be a set of \[pools\.NAME\] tables$"),
    ("[pools]\ndefault = 3", r"^pools\.default: must be a table"),
    ("broker = 'x'", r"^broker: must be a table"),
    (
        "[broker]\nendpoint = 'http://x'",
        r"^broker\.endpoint: must start with ipc://, tcp:// or inproc://, got 'http://x'$",
    ),
    ("[broker]\nendpoint = []", r"^broker\.endpoint: must name at least one endpoint"),
    (
        "[broker]\nendpoint = 5",
        r"^broker\.endpoint: must be a string or a list of strings, got 5$",
    ),
    (
        "[broker]\nendpoint = ['ipc:///a', 'ipc:///a']",
        r"^broker\.endpoint: lists an endpoint twice",
    ),
    (
        "[broker]\nendpoint = 'tcp://127.0.0.1'",
        r"^broker\.endpoint: must be tcp://HOST:PORT, got 'tcp://127\.0\.0\.1'$",
    ),
    (
        "[broker]\nendpoint = 'ipc://'",
        r"^broker\.endpoint: needs an address after ipc://",
    ),
    (
        "[broker]\nsocket_mode = 660",
        r"^broker\.socket_mode: must be a string of 3 or 4 octal digits .* got 660$",
    ),
    ("[broker]\nsocket_mode = '0990'", r"^broker\.socket_mode: .* got '0990'$"),
    ("[broker]\nsocket_mode = '0o660'", r"^broker\.socket_mode: .* got '0o660'$"),
    (
        "[broker]\nmax_message_bytes = 10",
        r"^broker\.max_message_bytes: must be an integer >= 1024, got 10$",
    ),
    (
        "[broker]\ndrain_timeout = -5",
        r"^broker\.drain_timeout: must be a number of seconds >= 0, got -5$",
    ),
    (
        "[broker]\nmetrics_address = '9187'",
        r"^broker\.metrics_address: must be \"HOST:PORT\", got '9187'$",
    ),
    (
        "[broker]\nmetrics_address = 'localhost:http'",
        r"^broker\.metrics_address: .* got 'localhost:http'$",
    ),
    (
        "[broker]\nbusy_poll_us = -1",
        r"^broker\.busy_poll_us: must be an integer >= 0, got -1$",
    ),
    (
        "[broker]\nbusy_poll_us = 500000",
        r"^broker\.busy_poll_us: must be at most 100000 \(µs\), got 500000$",
    ),
    (
        "[pools.default]\ndsn = 'mysql://u@h/db'\npipeline_depth = 0",
        r"^pools\.default\.pipeline_depth: must be an integer >= 1, got 0$",
    ),
    (
        "[broker]\nlog_level = 'loud'",
        r"^broker\.log_level: must be one of debug, info, warning, error, got 'loud'$",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_value_names_its_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_text(tmp_path, text + "\n")
    assert info.value.key is not None
    assert str(info.value).startswith(info.value.key)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[pools.default]\nmax_sise = 5",
            "pools.default.max_sise: unknown key (did you mean max_size?)",
        ),
        (
            "[broker]\nendpiont = 'ipc:///x'",
            "broker.endpiont: unknown key (did you mean endpoint?)",
        ),
        ("[pool.default]\nmax_size = 5", "pool: unknown key (did you mean pools?)"),
        (
            "endpoint = 'ipc:///x'",
            "endpoint: unknown key (it belongs in the [broker] table)",
        ),
        ("max_size = 5", "max_size: unknown key (it belongs in a [pools.NAME] table)"),
        (
            "[broker]\nmax_size = 5",
            "broker.max_size: unknown key (it belongs in a [pools.NAME] table)",
        ),
        (
            "[pools.default]\nhost = 'db'",
            "pools.default.host: unknown key (host goes in the dsn: mysql://user@host:port/database)",
        ),
        (
            "[pools.default]\npassword = 'x'",
            "pools.default.password: unknown key"
            " (use password_file or $BROKER_PASSWORD)",
        ),
        ("[pools.default]\nzzz = 1", "pools.default.zzz: unknown key"),
        ("[pools.default.extra]\nmax_size = 1", "pools.default.extra: unknown key"),
    ],
)
def test_unknown_key_is_named_with_a_suggestion(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text + "\n")
    assert str(info.value) == message


def test_error_says_which_variable_gave_the_value():
    with pytest.raises(
        ConfigError, match=r"^broker\.endpoint \(from \$BROKER_ENDPOINT\): "
    ):
        load(environ={"BROKER_ENDPOINT": "udp://x"})
    with pytest.raises(ConfigError, match=r"^broker\.endpoint \(from --endpoint\): "):
        load(endpoint="udp://x", environ={})
    with pytest.raises(
        ConfigError, match=r"^pools\.default\.dsn \(from \$BROKER_DSN\): "
    ):
        load(environ={"BROKER_DSN": "mysql://h/db?x=1"})
    with pytest.raises(
        ConfigError, match=r"^broker\.log_level \(from \$BROKER_LOG_LEVEL\): "
    ):
        load(environ={"BROKER_LOG_LEVEL": "chatty"})


def test_unreadable_or_invalid_config_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(
        ConfigError, match=r"^--config: cannot read .*nope\.toml: No such file"
    ):
        load(missing, environ={})
    with pytest.raises(
        ConfigError, match=r"^\$BROKER_CONFIG: cannot read .*nope\.toml"
    ):
        load(environ={"BROKER_CONFIG": str(missing)})
    bad = write_config(tmp_path, "[broker\n")
    with pytest.raises(ConfigError, match=r"broker\.toml: invalid TOML: "):
        load(bad, environ={})


# -- types, shapes and parsing ----------------------------------------------------


def test_durations_accept_integers_as_float_seconds(tmp_path):
    config = load_text(
        tmp_path, "[pools.default]\ndsn = 'mysql://h/db'\nqueue_timeout = 2\n"
    )
    assert config.pools["default"].queue_timeout == 2.0
    assert isinstance(config.pools["default"].queue_timeout, float)


def test_endpoint_accepts_a_string_or_a_list(tmp_path):
    one = load_text(tmp_path, "[broker]\nendpoint = 'tcp://127.0.0.1:5555'\n")
    assert one.broker.endpoint == ("tcp://127.0.0.1:5555",)
    many = load_text(
        tmp_path,
        "[broker]\nendpoint = ['ipc:///run/b.sock', 'tcp://[::1]:5555', 'inproc://t']\n",
    )
    assert many.broker.endpoint == (
        "ipc:///run/b.sock",
        "tcp://[::1]:5555",
        "inproc://t",
    )


@pytest.mark.parametrize(
    ("text", "mode"), [("0660", 0o660), ("600", 0o600), ("2770", 0o2770), ("0000", 0)]
)
def test_socket_mode_is_parsed_as_octal(tmp_path, text, mode):
    config = load_text(tmp_path, f"[broker]\nsocket_mode = '{text}'\n")
    assert config.broker.socket_mode == mode


def test_init_sql_accepts_one_string(tmp_path):
    config = load_text(
        tmp_path, "[pools.default]\ndsn = 'mysql://h/db'\ninit_sql = 'SET x = 1'\n"
    )
    assert config.pools["default"].init_sql == ("SET x = 1",)


def test_dsn_parts_are_parsed():
    pool = PoolConfig(
        name="p",
        dsn="mariadb://us%40er:p%3Aw%40d@[::1]:3307/my%20db?charset=latin1&connect_timeout=2.5",
    )
    assert pool.connect_args() == {
        "host": "::1",
        "port": 3307,
        "user": "us@er",
        "password": "p:w@d",
        "database": "my db",
        "unix_socket": None,
        "charset": "latin1",
        "connect_timeout": 2.5,
    }
    socket_only = PoolConfig(
        name="s", dsn="mysql://app@/db?unix_socket=/run/mysqld/mysqld.sock"
    )
    assert socket_only.host is None
    assert socket_only.unix_socket == "/run/mysqld/mysqld.sock"
    assert PoolConfig(name="n", dsn="mysql://h").database is None


def test_dataclasses_validate_direct_construction_and_replace():
    pool = PoolConfig(name="p", dsn=DSN)
    with pytest.raises(ConfigError, match=r"^pools\.p\.max_size: "):
        dataclasses.replace(pool, max_size=0)
    with pytest.raises(ConfigError, match=r"^pools\.p q: pool name"):
        PoolConfig(name="p q", dsn=DSN)
    with pytest.raises(ConfigError, match=r"^broker\.socket_mode: "):
        BrokerConfig(socket_mode=0o10000)
    with pytest.raises(ConfigError, match=r"^pools: "):
        Config(broker=BrokerConfig(), pools={})
    with pytest.raises(ConfigError, match=r"^pools\.a: holds the pool named 'b'"):
        Config(broker=BrokerConfig(), pools={"a": PoolConfig(name="b", dsn=DSN)})


def test_config_is_immutable():
    config = load(dsn=DSN, environ={})
    with pytest.raises(TypeError):
        config.pools["x"] = config.pools["default"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.broker.log_level = "debug"  # type: ignore[misc]


# -- passwords --------------------------------------------------------------------


def test_password_file_is_stripped(tmp_path):
    (tmp_path / "pw").write_text(f"  {SECRET}\n\n")
    config = load_text(
        tmp_path, f"[pools.default]\ndsn = '{DSN}'\npassword_file = 'pw'\n"
    )
    pool = config.pools["default"]
    assert pool.password == SECRET
    assert pool.connect_args()["password"] == SECRET
    assert pool.password_file == str(tmp_path / "pw")


def test_relative_password_file_resolves_against_credentials_directory(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mysql-password").write_text(SECRET)
    (tmp_path / "mysql-password").write_text("wrong")
    config = load_text(
        tmp_path,
        f"[pools.default]\ndsn = '{DSN}'\npassword_file = 'mysql-password'\n",
        environ={"CREDENTIALS_DIRECTORY": str(creds)},
    )
    assert config.pools["default"].password == SECRET
    assert config.pools["default"].password_file == str(creds / "mysql-password")


def test_relative_password_file_resolves_against_config_directory(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "pw").write_text(SECRET)
    config = load(
        write_config(sub, f"[pools.default]\ndsn = '{DSN}'\npassword_file = 'pw'\n"),
        environ={},
    )
    assert config.pools["default"].password == SECRET


def test_absolute_password_file_ignores_credentials_directory(tmp_path):
    (tmp_path / "pw").write_text(SECRET)
    config = load_text(
        tmp_path,
        f"[pools.default]\ndsn = '{DSN}'\npassword_file = '{tmp_path / 'pw'}'\n",
        environ={"CREDENTIALS_DIRECTORY": "/nonexistent"},
    )
    assert config.pools["default"].password == SECRET


def test_unreadable_password_file_names_key_and_os_error(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"^pools\.default\.password_file: cannot read .*missing: No such file",
    ):
        load_text(
            tmp_path, f"[pools.default]\ndsn = '{DSN}'\npassword_file = 'missing'\n"
        )
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(
        ConfigError, match=r"^pools\.default\.password_file: .*empty is empty$"
    ):
        load_text(
            tmp_path, f"[pools.default]\ndsn = '{DSN}'\npassword_file = 'empty'\n"
        )


def test_broker_password_applies_to_the_default_pool():
    config = load(dsn=DSN, environ={"BROKER_PASSWORD": SECRET})
    assert config.pools["default"].password == SECRET


def test_password_is_given_in_one_place_only(tmp_path):
    (tmp_path / "pw").write_text(SECRET)
    with_pw = "mysql://app:other@h/db"
    with pytest.raises(
        ConfigError, match=r"^pools\.default\.password_file: the dsn already"
    ):
        load_text(
            tmp_path, f"[pools.default]\ndsn = '{with_pw}'\npassword_file = 'pw'\n"
        )
    with pytest.raises(
        ConfigError, match=r"^\$BROKER_PASSWORD: .* from its password_file"
    ):
        load_text(
            tmp_path,
            f"[pools.default]\ndsn = '{DSN}'\npassword_file = 'pw'\n",
            environ={"BROKER_PASSWORD": SECRET},
        )
    with pytest.raises(ConfigError, match=r"^\$BROKER_PASSWORD: .* from its dsn"):
        load(environ={"BROKER_DSN": with_pw, "BROKER_PASSWORD": SECRET})
    with pytest.raises(
        ConfigError, match=r"^\$BROKER_PASSWORD: there is no \[pools\.default\]"
    ):
        load_text(
            tmp_path,
            "[pools.x]\ndsn = 'mysql://h/db'\n",
            environ={"BROKER_PASSWORD": SECRET},
        )


def test_command_line_dsn_with_password_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"^--dsn: must not contain a password.*/proc/PID/cmdline.*password_file",
    ) as info:
        load(dsn=f"mysql://app:{SECRET}@h/db", environ={})
    assert SECRET not in str(info.value)


def test_dsn_with_password_is_allowed_in_file_and_environment(tmp_path):
    dsn = f"mysql://app:{SECRET}@h/db"
    assert load(environ={"BROKER_DSN": dsn}).pools["default"].password == SECRET
    from_file = load_text(tmp_path, f"[pools.default]\ndsn = '{dsn}'\n")
    assert from_file.pools["default"].password == SECRET


def test_password_never_reaches_repr_safe_dsn_or_describe(tmp_path):
    (tmp_path / "pw").write_text(SECRET)
    config = load_text(
        tmp_path,
        f"""
        [pools.default]
        dsn = "mysql://app@h/db"

        [pools.infile]
        dsn = "mysql://app:{SECRET}@h:3307/db?charset=utf8mb4"

        [pools.fromfile]
        dsn = "mysql://app@h/db"
        password_file = "pw"
        """,
        environ={"BROKER_PASSWORD": SECRET},
    )
    assert all(pool.password == SECRET for pool in config.pools.values())
    for pool in config.pools.values():
        assert SECRET not in repr(pool)
        assert SECRET not in str(pool)
        assert SECRET not in pool.safe_dsn()
    assert config.pools["infile"].safe_dsn() == "mysql://app@h:3307/db?charset=utf8mb4"
    assert SECRET not in repr(config)
    text = describe(config)
    assert SECRET not in text
    assert "mysql://app@h:3307/db?charset=utf8mb4" in text
    assert "password: in the dsn" in text
    assert f"password: from {tmp_path / 'pw'}" in text


@pytest.mark.parametrize(
    "dsn",
    [
        f"mysql://app:{SECRET}#x@h/db",
        f"mysql://app:{SECRET}?x@h/db",
        f"mysql://app:{SECRET}/x@h/db",
        f"mysql://app:{SECRET}@h:port/db",
        f"mysql://app:{SECRET}@h/db?bogus=1",
        f"mysql://app:{SECRET}@[::1/db",
    ],
)
def test_malformed_dsn_errors_do_not_echo_the_password(dsn):
    with pytest.raises(ConfigError) as info:
        load(environ={"BROKER_DSN": dsn})
    assert SECRET[:4] not in str(info.value)
    assert str(info.value).startswith("pools.default.dsn (from $BROKER_DSN): ")


# -- sandbox, reload and describe ---------------------------------------------------


def test_sandbox_dsn_fills_pools_without_a_dsn(tmp_path):
    config = load_text(tmp_path, "[pools.default]\nmax_size = 4\n")
    assert config.sandbox is True
    assert config.pools["default"].dsn == ""
    with pytest.raises(ConfigError, match=r"^pools\.default\.dsn: not set"):
        config.pools["default"].connect_args()
    filled = config.with_sandbox_dsn("mysql://root:pw@127.0.0.1:33061/")
    pool = filled.pools["default"]
    assert pool.max_size == 4
    assert (pool.port, pool.user, pool.password) == (33061, "root", "pw")
    assert filled.sandbox is True
    assert config.pools["default"].dsn == ""  # the original is untouched


def test_needs_restart_lists_keys_that_cannot_change_live():
    old = load(dsn=DSN, environ={})
    same_socket = dataclasses.replace(
        old,
        broker=dataclasses.replace(old.broker, drain_timeout=1.0, log_level="debug"),
        pools={"default": dataclasses.replace(old.pools["default"], max_size=50)},
    )
    assert needs_restart(old, same_socket) == []
    moved = dataclasses.replace(
        old,
        broker=BrokerConfig(
            endpoint=("tcp://127.0.0.1:5555",),
            socket_mode=0o600,
            metrics_address="127.0.0.1:9187",
        ),
    )
    assert needs_restart(old, moved) == [
        "broker.endpoint",
        "broker.socket_mode",
        "broker.metrics_address",
    ]


@pytest.mark.parametrize(
    ("drain", "warned"), [(30, False), (40, False), (40.5, True), (60, True)]
)
def test_drain_timeout_must_fit_the_units_stop_timeout(tmp_path, drain, warned):
    """45 s TimeoutStopSec minus 5 s to close connections leaves 40 s to drain."""
    config = load_text(
        tmp_path, f'[broker]\ndrain_timeout = {drain}\n[pools.default]\ndsn = "{DSN}"\n'
    )
    warnings = config_warnings(config)
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0].startswith(f"broker.drain_timeout: {drain:g}s does not fit")
        assert "TimeoutStopSec=45s" in warnings[0]


def test_describe_summarises_pools_and_endpoints(tmp_path):
    config = load_text(
        tmp_path,
        f"""
        [broker]
        endpoint = ["ipc:///run/b.sock", "tcp://127.0.0.1:5555"]
        socket_mode = "0600"

        [pools.default]
        dsn = "{DSN}"
        min_size = 2
        max_size = 8
        """,
    )
    text = describe(config)
    assert f"config: {tmp_path / 'broker.toml'}" in text
    assert "ipc:///run/b.sock, tcp://127.0.0.1:5555 (socket mode 0600)" in text
    assert f"pool default: {DSN}" in text
    assert "size 2..8" in text
    assert "sandbox" not in text
    assert "sandbox" in describe(load(environ={}))


def test_load_does_not_read_the_real_environment(monkeypatch):
    monkeypatch.setenv("BROKER_DSN", "mysql://real@h/db")
    assert load(environ={}).sandbox is True
    assert load().pools["default"].user == "real"
    assert os.environ["BROKER_DSN"] == "mysql://real@h/db"


def test_plain_tcp_off_loopback_needs_curve_or_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="allow_insecure_tcp"):
        load_text(tmp_path, "[broker]\nendpoint = 'tcp://*:5555'\n")
    ok = load_text(
        tmp_path, "[broker]\nendpoint = 'tcp://*:5555'\nallow_insecure_tcp = true\n"
    )
    assert ok.broker.allow_insecure_tcp is True
    with pytest.raises(ConfigError, match="go together"):
        load_text(tmp_path, "[broker]\ncurve_secret_key = '/k'\n")
