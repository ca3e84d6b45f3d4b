"""The mysql+broker:// SQLAlchemy dialect: Core and ORM round trips, from forks too."""

import os

import pytest
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

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
