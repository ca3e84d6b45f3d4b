"""``import MySQLdb`` for Django's MySQL backend: pymysql under that name.

Django's ``django.db.backends.mysql`` imports ``MySQLdb``, its constants and
converters at import. With mysqlclient installed, nothing is done here. Else
pymysql takes the name, as ``pymysql.install_as_MySQLdb()`` does, and the
submodules Django imports are aliased too: left to the import system,
``MySQLdb.converters`` would run pymysql's modules a second time, and their
``from .err import`` would rebind ``pymysql.err`` for the whole process to a
copy whose classes pymysql's connections never raise.
"""

from __future__ import annotations

import sys

_SUBMODULES = ("constants", "constants.CLIENT", "constants.FIELD_TYPE", "converters")

try:
    import MySQLdb  # noqa: F401  mysqlclient keeps its name
except ImportError:
    import pymysql
    import pymysql.constants.CLIENT
    import pymysql.constants.FIELD_TYPE
    import pymysql.converters

    pymysql.install_as_MySQLdb()
    for _name in _SUBMODULES:
        sys.modules.setdefault(f"MySQLdb.{_name}", sys.modules[f"pymysql.{_name}"])
