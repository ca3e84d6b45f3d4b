"""Django's ORM through ``ENGINE: "client.django"`` against the real MariaDB and broker.

The project in tests/django_project is set up once in this process (Django's
settings are process-wide), over a broker of this module's own with a
``default`` pool on one database and a ``test`` pool (min_size 0) on
test_NAME for Django's test runner. A second process (select_for_update) and
``manage.py test`` run as real subprocesses.
"""

from __future__ import annotations

import datetime
import io
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import django  # the test extra has it: a missing Django fails, never skips
import pytest
from broker_fixtures import ROOT, BrokerProcess

PROJECT = Path(__file__).resolve().parent / "django_project"
pytestmark = pytest.mark.timeout(120)


class DjangoEnv:
    """This module's database, test database name and broker."""

    def __init__(self, server: Any, name: str, broker: BrokerProcess) -> None:
        self.server = server
        self.name = name
        self.test_name = f"test_{name}"
        self.broker = broker

    def env(self) -> dict[str, str]:
        """Environment for a subprocess running the test project."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(
            DJANGO_DB_NAME=self.name,
            BROKER_ENDPOINT=self.broker.endpoint,
            DJANGO_SETTINGS_MODULE="project.settings",
            PYTHONPATH=f"{PROJECT}{os.pathsep}{ROOT}",
        )
        return env

    def sql(self, statement: str, database: str | None = None) -> tuple:
        """Run one statement on a direct connection; return its rows."""
        conn = self.server.admin()
        try:
            with conn.cursor() as cur:
                if database:
                    cur.execute(f"USE `{database}`")
                cur.execute(statement)
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def django_env(mysql_server: Any) -> Iterator[DjangoEnv]:
    """A database and a broker with pools ``default`` and ``test`` for this module."""
    name = f"dj_{secrets.token_hex(4)}"
    conn = mysql_server.admin()
    conn.query(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    workdir = Path(tempfile.mkdtemp(prefix="bk-dj-", dir="/tmp"))
    password_file = workdir / "mysql-password"
    password_file.write_text(mysql_server.password + "\n")
    password_file.chmod(0o600)
    user = mysql_server.user
    test_pool = {
        "dsn": mysql_server.dsn(user=user, database=f"test_{name}"),
        "min_size": 0,  # test_NAME exists only while Django's test runner runs
        "max_size": 2,
    }
    broker = BrokerProcess(
        workdir,
        mysql_server.dsn(user=user, database=name),
        str(password_file),
        {"max_size": 4, "transaction_idle_timeout": 10},
        {},
        {"test": test_pool},
    )
    broker.start()
    env = DjangoEnv(mysql_server, name, broker)
    try:
        yield env
    finally:
        broker.stop()
        env.sql(f"DROP DATABASE IF EXISTS `{name}`")
        env.sql(f"DROP DATABASE IF EXISTS `test_{name}`")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def orm(django_env: DjangoEnv) -> Iterator[Any]:
    """Django set up in this process on the test project, migrated; the connection."""
    saved = dict(os.environ)
    os.environ.update(
        DJANGO_DB_NAME=django_env.name,
        BROKER_ENDPOINT=django_env.broker.endpoint,
        DJANGO_SETTINGS_MODULE="project.settings",
    )
    sys.path.insert(0, str(PROJECT))
    try:
        django.setup()  # reads the settings module, which reads the environment
    finally:
        os.environ.clear()
        os.environ.update(saved)
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    yield connection
    connection.close()


@pytest.fixture
def shop(orm: Any) -> Iterator[Any]:
    """The test project's models module, its tables emptied after the test."""
    from shop import models

    yield models
    models.Order.objects.all().delete()
    models.Item.objects.all().delete()


def _pins(env: DjangoEnv) -> list[dict]:
    with env.broker.client() as c:
        return c.stats()["pins"]


# --- migrations, introspection, management commands ------------------------------


def test_migrate_forwards_and_back(orm: Any, django_env: DjangoEnv) -> None:
    from django.core.management import call_command

    def tables() -> set[str]:
        return {row[0] for row in django_env.sql("SHOW TABLES", django_env.name)}

    assert {"shop_item", "shop_order"} <= tables()
    call_command("migrate", "shop", "0001", verbosity=0)
    assert "shop_order" not in tables()
    columns = {
        r[0] for r in django_env.sql("SHOW COLUMNS FROM shop_item", django_env.name)
    }
    assert "price" not in columns
    call_command("migrate", "shop", "zero", verbosity=0)
    assert not {"shop_item", "shop_order"} & tables()
    call_command("migrate", verbosity=0)
    assert {"shop_item", "shop_order"} <= tables()
    applied = django_env.sql(
        "SELECT name FROM django_migrations WHERE app = 'shop' ORDER BY id",
        django_env.name,
    )
    assert [row[0] for row in applied] == ["0001_initial", "0002_order_price"]


def test_sqlmigrate_renders_literal_defaults(orm: Any) -> None:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("sqlmigrate", "shop", "0002", stdout=out)
    assert "ADD COLUMN `price` numeric(8, 2) DEFAULT 0 NOT NULL" in out.getvalue()


def test_inspectdb_describes_the_tables(orm: Any) -> None:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("inspectdb", "shop_item", "shop_order", stdout=out)
    text = out.getvalue()
    assert "class ShopItem(models.Model):" in text
    assert "name = models.CharField(unique=True, max_length=50)" in text
    assert "opens = models.TimeField(blank=True, null=True)" in text
    assert "item = models.ForeignKey(ShopItem, models.DO_NOTHING)" in text


def test_dbshell_is_refused_with_what_to_do(orm: Any) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=r"dbshell cannot run through the broker"):
        call_command("dbshell")


def test_host_user_password_and_unknown_options_are_refused(orm: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from client.django.base import DatabaseWrapper

    base = {**orm.settings_dict, "OPTIONS": dict(orm.settings_dict["OPTIONS"])}
    with pytest.raises(ImproperlyConfigured, match=r"'HOST'.*dsn and password_file"):
        DatabaseWrapper({**base, "HOST": "db.example"}).get_connection_params()
    bad = {**base, "OPTIONS": {**base["OPTIONS"], "charset": "latin1"}}
    with pytest.raises(ImproperlyConfigured, match=r"unknown key\(s\) 'charset'"):
        DatabaseWrapper(bad).get_connection_params()


def test_missing_test_pool_says_how_to_configure_it(orm: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from client.django.base import DatabaseWrapper

    options = {k: v for k, v in orm.settings_dict["OPTIONS"].items()}
    options.pop("test_pool")
    wrapper = DatabaseWrapper({**orm.settings_dict, "OPTIONS": options})
    with pytest.raises(ImproperlyConfigured, match=r"\[pools.test\].*min_size = 0"):
        wrapper.creation._create_test_db(verbosity=0, autoclobber=True)


def test_django_test_runner_creates_and_destroys_its_database(
    orm: Any, django_env: DjangoEnv
) -> None:
    proc = subprocess.run(
        [sys.executable, "manage.py", "test", "shop", "--noinput", "-v", "2"],
        cwd=PROJECT,
        env=django_env.env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"Creating test database for alias 'default' ('{django_env.test_name}')" in (
        out
    )
    assert "Ran 3 tests" in out
    assert (
        f"Destroying test database for alias 'default' ('{django_env.test_name}')"
        in (out)
    )
    assert not django_env.sql(f"SHOW DATABASES LIKE '{django_env.test_name}'")
    # The process that ran the tests is back on the application's pool.
    assert orm.settings_dict["OPTIONS"]["pool"] == "default"


def test_pymysql_keeps_its_own_error_classes(orm: Any, django_env: DjangoEnv) -> None:
    import pymysql

    assert pymysql.err is sys.modules["pymysql.err"]  # not a MySQLdb.err copy
    conn = django_env.server.admin()
    try:
        with pytest.raises(pymysql.err.ProgrammingError) as caught:
            conn.query("SELECT * FROM no_such_db.no_such_table")
    finally:
        conn.close()
    assert type(caught.value).__module__ == "pymysql.err"


# --- the ORM ------------------------------------------------------------------------


def test_crud_round_trips_values(shop: Any) -> None:
    item = shop.Item.objects.create(
        name="pen", qty=3, opens=datetime.time(9, 30, 15, 250), price=Decimal("2.50")
    )
    got = shop.Item.objects.get(pk=item.pk)
    assert (got.name, got.qty, got.opens, got.price) == (
        "pen",
        3,
        datetime.time(9, 30, 15, 250),
        Decimal("2.50"),
    )
    order = shop.Order.objects.create(item=got, note="näive ✓")
    assert shop.Order.objects.select_related("item").get(pk=order.pk).item.name == "pen"
    assert shop.Order.objects.get(pk=order.pk).placed.tzinfo is not None
    got.qty = 4
    got.save()
    assert shop.Item.objects.values_list("qty", flat=True).get(pk=item.pk) == 4
    assert shop.Item.objects.filter(name__startswith="p").count() == 1
    assert shop.Item.objects.filter(pk=item.pk).delete() == (
        2,
        {"shop.Order": 1, "shop.Item": 1},
    )
    assert not shop.Item.objects.exists()


def test_integrity_errors_are_djangos(shop: Any) -> None:
    from django.db import IntegrityError

    shop.Item.objects.create(name="pen")
    with pytest.raises(IntegrityError, match="Duplicate entry"):
        shop.Item.objects.create(name="pen")


def test_nested_atomic_rolls_back_the_inner_block_only(shop: Any) -> None:
    from django.db import IntegrityError, transaction

    with transaction.atomic():
        shop.Item.objects.create(name="outer")
        with pytest.raises(IntegrityError), transaction.atomic():  # noqa: PT012
            shop.Item.objects.create(name="inner")
            shop.Item.objects.create(name="outer")  # duplicate: the savepoint unwinds
        with transaction.atomic():
            shop.Item.objects.create(name="kept")
    assert sorted(shop.Item.objects.values_list("name", flat=True)) == [
        "kept",
        "outer",
    ]
    with pytest.raises(RuntimeError), transaction.atomic():  # noqa: PT012
        shop.Item.objects.create(name="gone")
        raise RuntimeError
    assert not shop.Item.objects.filter(name="gone").exists()


def test_idle_connection_holds_nothing_and_atomic_pins_for_the_block(
    shop: Any, orm: Any, django_env: DjangoEnv
) -> None:
    from django.db import transaction

    shop.Item.objects.create(name="a")
    assert orm.connection is not None  # Django holds an open connection ...
    assert _pins(django_env) == []  # ... which holds no MySQL connection
    with transaction.atomic():
        shop.Item.objects.create(name="b")
        pins = _pins(django_env)
        assert len(pins) == 1
        assert (pins[0]["kind"], pins[0]["pool"]) == ("transaction", "default")
        assert pins[0]["who"]["pid"] == os.getpid()
    assert _pins(django_env) == []


def test_select_for_update_blocks_a_second_process(
    shop: Any, django_env: DjangoEnv
) -> None:
    from django.db import transaction

    item = shop.Item.objects.create(name="locked", qty=1)
    script = (
        "import django; django.setup()\n"
        "from django.db import transaction\n"
        "from shop.models import Item\n"
        "with transaction.atomic():\n"
        f"    it = Item.objects.select_for_update().get(pk={item.pk})\n"
        "    print(it.qty, flush=True)\n"
        "    it.qty += 1\n"
        "    it.save()\n"
    )
    with transaction.atomic():
        shop.Item.objects.select_for_update().get(pk=item.pk)
        other = subprocess.Popen(
            [sys.executable, "-c", script],
            env=django_env.env(),
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            # Waiting for the row lock: a LOCK WAIT transaction, or (MariaDB
            # waits in the optimizer's "Statistics" for a primary-key lookup,
            # before INNODB_TRX lists it) the statement still running.
            while not django_env.sql(
                "SELECT 1 FROM information_schema.INNODB_TRX "
                "WHERE trx_state = 'LOCK WAIT' UNION SELECT 1 FROM "
                "information_schema.PROCESSLIST WHERE COMMAND = 'Query' "
                "AND INFO LIKE '%FOR UPDATE' AND TIME_MS > 300 "
                "AND ID <> CONNECTION_ID()"
            ):
                assert other.poll() is None, other.communicate()
                assert time.monotonic() < deadline, "second process never waited"
                time.sleep(0.05)
            shop.Item.objects.filter(pk=item.pk).update(qty=10)
        except BaseException:
            other.kill()
            raise
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out.split() == ["10"]  # it waited for this commit, then read its value
    assert shop.Item.objects.get(pk=item.pk).qty == 11


def test_bulk_create_of_a_thousand_rows(shop: Any, orm: Any) -> None:
    items = shop.Item.objects.bulk_create(
        [shop.Item(name=f"n{i}", qty=i) for i in range(1000)]
    )
    assert shop.Item.objects.count() == 1000
    assert sum(shop.Item.objects.values_list("qty", flat=True)) == sum(range(1000))
    if orm.features.can_return_rows_from_bulk_insert:  # MariaDB: RETURNING
        assert len({item.pk for item in items} - {None}) == 1000


def test_update_rowcount_counts_matched_rows(shop: Any) -> None:
    shop.Item.objects.bulk_create([shop.Item(name=f"m{i}", qty=5) for i in range(3)])
    # Nothing changes, but Django's MySQL backend asks for matched rows (FOUND_ROWS).
    assert shop.Item.objects.filter(qty=5).update(qty=5) == 3
    assert shop.Item.objects.filter(name="m0").update(qty=6) == 1


def test_saving_an_unchanged_object_updates_it(shop: Any) -> None:
    # save() takes an UPDATE of 0 rows to mean "no such row" and INSERTs: with
    # changed-row counts this would raise a duplicate key error.
    item = shop.Item.objects.create(name="same", qty=1)
    item.save()
    assert shop.Item.objects.filter(name="same").count() == 1


def test_queries_show_the_sql_sent(shop: Any, orm: Any) -> None:
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(orm) as captured:
        shop.Item.objects.filter(name="it's").count()
    (query,) = captured.captured_queries
    assert "WHERE `shop_item`.`name` = 'it\\'s'" in query["sql"]


def test_autocommit_is_set_in_either_spelling(orm: Any) -> None:
    from client.django.base import DatabaseWrapper

    class MethodStyle:  # pymysql's conn.autocommit(value)
        def __init__(self) -> None:
            self.calls: list[bool] = []

        def autocommit(self, value: bool) -> None:
            self.calls.append(value)

    class AttributeStyle:  # conn.autocommit = value
        autocommit = True

    wrapper = DatabaseWrapper(orm.settings_dict)
    wrapper.connection = MethodStyle()
    wrapper._set_autocommit(False)
    assert wrapper.connection.calls == [False]
    wrapper.connection = AttributeStyle()
    wrapper._set_autocommit(False)
    assert wrapper.connection.autocommit is False


def test_health_check_pings_the_broker(orm: Any) -> None:
    orm.ensure_connection()
    assert orm.is_usable()
