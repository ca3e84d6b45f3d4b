"""The Django database backend ``"ENGINE": "client.django"``: MySQL on the broker.

Django's own ``django.db.backends.mysql`` (SQL compiler, introspection, schema
editor, features) runs over `client.dbapi`, the way it runs on pymysql after
``pymysql.install_as_MySQLdb()``; only the connection layer is ours. Django is
an optional extra (``pip install 'mysql-broker[django]'``): nothing else in
`client` imports this package. See `client.django.base` for the settings.
"""

from client.django import mysqldb  # noqa: F401  before django.db.backends.mysql
