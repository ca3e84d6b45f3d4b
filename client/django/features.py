"""What Django may rely on: Django's MySQL features, less database cloning."""

from __future__ import annotations

from django.db.backends.mysql import features as mysql


class DatabaseFeatures(mysql.DatabaseFeatures):
    """Django's MySQL features, measured on the pool's server as Django does.

    ``can_clone_databases`` is off: Django clones a test database (``manage.py
    test --parallel``) by piping mysqldump into mysql, which needs the server's
    address and credentials, and those live in the broker's config only.
    """

    can_clone_databases = False
