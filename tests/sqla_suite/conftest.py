"""Hook SQLAlchemy's testing plugin up to the mysql+broker / mariadb+broker dialects."""

import pytest
from sqlalchemy.dialects import registry

registry.register("mysql.broker", "client.sqla", "MySQLDialect_broker")
registry.register("mariadb.broker", "client.sqla", "MariaDBDialect_broker")

pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402, F403
