"""The mysql+broker:// SQLAlchemy dialect: Core and ORM round trips, from forks too."""

import os

import pytest
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm import exc as orm_exc

import client
from client import dbapi
from client.sqla import MySQLDialect_broker


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)
    karma: Mapped[int] = mapped_column(default=0)


def _url(broker, **extra):
    query = "&".join(f"{k}={v}" for k, v in {"timeout": 10, **extra}.items())
    return f"mysql+broker:///?endpoint={broker.endpoint}&{query}"


@pytest.fixture
def engine(broker):
    e = sa.create_engine(_url(broker))
    Base.metadata.create_all(e)
    yield e
    e.dispose()


def _pins(db):
    return [p["kind"] for p in db.stats()["pins"]]


def _count(direct, sql="SELECT COUNT(*) FROM users"):
    with direct.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_url_selects_the_broker_dialect_on_a_null_pool(broker):
    e = sa.create_engine(_url(broker, pool="default", name="sa-test"))
    assert isinstance(e.dialect, MySQLDialect_broker)
    assert e.dialect.driver == "broker"
    assert e.dialect.loaded_dbapi is dbapi
    assert e.dialect.paramstyle == "pyformat"
    assert isinstance(e.pool, sa.pool.NullPool)
    with e.connect() as conn:
        assert conn.execute(sa.text("SELECT 1 + :n"), {"n": 1}).scalar() == 2
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn.client.name == "sa-test"
        assert dbapi_conn.timeout == 10.0
    assert e.dialect.server_version_info >= (5, 0)
    e.dispose()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql+broker://app:pw@db.example/appdb", "user, password, host, database"),
        ("mysql+broker:///appdb", "database"),
        ("mysql+broker:///?colour=blue", "unknown mysql\\+broker:// URL key 'colour'"),
        ("mysql+broker:///?timeout=soon", "not a number"),
    ],
)
def test_url_refuses_what_the_broker_owns_or_does_not_know(url, match):
    with pytest.raises(exc.ArgumentError, match=match):
        sa.create_engine(url).connect()


def test_core_round_trip(engine, direct):
    users = User.__table__
    with engine.begin() as conn:
        conn.execute(
            sa.insert(users), [{"name": f"u{i}", "karma": i} for i in range(10)]
        )
        result = conn.execute(
            sa.update(users).where(users.c.karma >= 5).values(karma=0)
        )
        assert result.rowcount == 5
        assert conn.execute(sa.delete(users).where(users.c.name == "u0")).rowcount == 1
    assert _count(direct) == 9
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(users.c.name, users.c.karma).order_by(users.c.id).limit(3)
        ).all()
        assert rows == [("u1", 1), ("u2", 2), ("u3", 3)]
        assert conn.execute(sa.select(sa.func.sum(users.c.karma))).scalar() == 10


def test_orm_round_trip_with_update_and_rollback(engine, direct):
    with Session(engine) as session:
        session.add_all([User(name="ann"), User(name="bob")])
        session.commit()
        ann = session.scalars(sa.select(User).where(User.name == "ann")).one()
        ann.karma = 7
        session.commit()
        session.add(User(name="eve"))
        session.flush()
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 3
        assert _count(direct) == 2  # flushed, not committed
        session.rollback()
        names = session.scalars(sa.select(User.name).order_by(User.name)).all()
        assert names == ["ann", "bob"]
    assert _count(direct, "SELECT karma FROM users WHERE name = 'ann'") == 7


def test_integrity_error_is_sqlalchemys_wrapping_ours(engine):
    with Session(engine) as session:
        session.add(User(name="dup"))
        session.commit()
        session.add(User(name="dup"))
        with pytest.raises(exc.IntegrityError) as info:
            session.commit()
        assert isinstance(info.value.orig, client.IntegrityError)
        assert info.value.orig.errno == 1062
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_orm_from_forked_processes(engine, direct):
    children, per_child = 4, 25
    pids = []
    for n in range(children):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with Session(engine) as session:
                    for i in range(per_child):
                        session.add(User(name=f"c{n}-{i}", karma=n))
                    session.commit()
                    mine = session.scalars(sa.select(User).where(User.karma == n)).all()
                    for user in mine:
                        user.karma += 100
                    session.commit()
                    session.add(User(name=f"c{n}-discarded"))
                    session.flush()
                    session.rollback()
                    code = 0 if len(mine) == per_child else 2
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0] * children
    assert _count(direct) == children * per_child
    assert _count(direct, "SELECT COUNT(*) FROM users WHERE karma >= 100") == 100
    assert (
        _count(direct, "SELECT COUNT(*) FROM users WHERE name LIKE '%discarded'") == 0
    )


def test_idle_engine_and_sessions_pin_nothing(engine, db):
    with Session(engine) as session:
        session.add(User(name="x"))
        session.flush()
        assert _pins(db) == ["transaction"]
        session.commit()
        assert _pins(db) == []
        session.scalars(sa.select(User)).all()
        assert _pins(db) == ["transaction"]
    assert _pins(db) == []


def test_autocommit_and_isolation_levels(engine, direct):
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as conn:
        conn.execute(sa.insert(User.__table__).values(name="auto", karma=1))
        assert _count(direct) == 1  # no commit needed
    with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn:
        assert conn.get_isolation_level() == "READ COMMITTED"
        karma = sa.select(User.karma).where(User.name == "auto")
        assert conn.execute(karma).scalar() == 1
        direct.query("UPDATE users SET karma = 2")
        assert conn.execute(karma).scalar() == 2  # sees the commit made meanwhile
    with engine.connect() as conn:
        assert conn.get_isolation_level() == "REPEATABLE READ"


def test_stream_results_use_a_broker_stream(engine, db):
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=50).execute(
            sa.text("SELECT seq FROM seq_1_to_5000")
        )
        first = result.fetchmany(10)
        assert first == [(i,) for i in range(1, 11)]
        assert _pins(db) == ["stream"]
        rest = result.all()
        assert len(rest) == 4990
        assert rest[-1] == (5000,)


def test_reflection_and_pre_ping(broker, engine):
    inspector = sa.inspect(engine)
    assert inspector.get_table_names() == ["users"]
    columns = {c["name"]: c for c in inspector.get_columns("users")}
    assert set(columns) == {"id", "name", "karma"}
    assert isinstance(columns["name"]["type"], sa.String)
    pinged = sa.create_engine(
        _url(broker), pool_pre_ping=True, poolclass=sa.pool.QueuePool
    )
    with pinged.connect() as conn:
        assert conn.execute(sa.text("SELECT 3")).scalar() == 3
    with pinged.connect() as conn:  # a pooled connection, pinged first
        assert conn.execute(sa.text("SELECT 4")).scalar() == 4
    pinged.dispose()


class VersionedBase(DeclarativeBase):
    pass


class Doc(VersionedBase):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(sa.String(40))
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


def _two_writers(engine):
    """Two sessions load one row; both change it; return what the second sees."""
    with Session(engine) as s:
        s.add(Doc(id=1, body="v0"))
        s.commit()
    first, second = Session(engine), Session(engine)
    try:
        a = first.get(Doc, 1)
        b = second.get(Doc, 1)  # both read version 1
        a.body = "first"
        first.commit()
        b.body = "second"
        try:
            second.commit()
        except orm_exc.StaleDataError as err:
            second.rollback()
            return err
        return None
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("scheme", ["mysql+broker", "mariadb+broker"])
def test_version_id_col_refuses_the_second_writer(broker, scheme):
    e = sa.create_engine(_url(broker).replace("mysql+broker", scheme))
    assert e.dialect.supports_sane_rowcount
    assert e.dialect.is_mariadb == (scheme == "mariadb+broker")
    VersionedBase.metadata.create_all(e)
    err = _two_writers(e)
    assert err is not None, "second writer's commit silently overwrote the first"
    assert "expected to update 1 row(s); 0 were matched" in str(err)
    with e.connect() as conn:
        row = conn.execute(sa.text("SELECT body, version FROM docs")).one()
    assert tuple(row) == ("first", 2)
    e.dispose()


def test_update_of_a_row_deleted_meanwhile_is_stale(engine):
    with Session(engine) as s:
        s.add(User(name="gone", karma=1))
        s.commit()
        user = s.scalars(sa.select(User)).one()
        with engine.begin() as conn:
            conn.execute(sa.delete(User.__table__))
        user.karma = 1  # the value it has: an UPDATE that changes nothing
        s.flush()  # no version column: an unchanged value matched 0 rows...
        with engine.begin() as conn:
            result = conn.execute(
                sa.update(User.__table__).where(User.id == user.id).values(karma=1)
            )
            assert result.rowcount == 0
        s.rollback()
    with Session(engine) as s:
        s.add(User(name="kept", karma=1))
        s.commit()
        with engine.begin() as conn:
            same = conn.execute(
                sa.update(User.__table__).where(User.name == "kept").values(karma=1)
            )
            assert same.rowcount == 1  # matched, though nothing changed


def test_lastrowid_of_a_text_insert(engine):
    with engine.begin() as conn:
        first = conn.execute(sa.text("INSERT INTO users (name, karma) VALUES ('a', 0)"))
        second = conn.execute(
            sa.text("INSERT INTO users (name, karma) VALUES ('b', 0)")
        )
        assert (first.lastrowid, second.lastrowid) == (1, 2)


def test_two_phase_commit_and_recover(engine, direct, db):
    with engine.connect() as conn:
        tx = conn.begin_twophase()
        conn.execute(sa.text("INSERT INTO users (name, karma) VALUES ('xa', 0)"))
        assert [p["kind"] for p in db.stats()["pins"]] == ["session"]
        tx.prepare()
        assert tx.xid.encode() in engine.dialect.do_recover_twophase(conn)  # as pymysql
        tx.commit()
    assert _count(direct) == 1
    assert db.stats()["pins"] == []
    with engine.connect() as conn:
        tx = conn.begin_twophase()
        conn.execute(sa.text("INSERT INTO users (name, karma) VALUES ('xb', 0)"))
        tx.rollback()
    assert _count(direct) == 1
