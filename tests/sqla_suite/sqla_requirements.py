"""What the suite may expect of MySQL/MariaDB, for mysql+broker and mysql+pymysql alike.

SQLAlchemy's own requirements for MySQL live in its repository's test/, not in
the installed package; these are the same answers for MariaDB 10.11, kept to
what both drivers are run with, so their counts compare.
"""

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.requirements import SuiteRequirements

_OPEN = (
    "table_ddl_if_exists",
    "index_ddl_if_exists",
    "foreign_keys",
    "foreign_key_ddl",
    "unique_constraints_reflect_as_index",
    "standalone_binds",
    "except_",
    "window_functions",
    "ctes",
    "autoincrement_insert",
    "dbapi_lastrowid",
    "views",
    "schemas",
    "foreign_key_constraint_name_reflection",
    "implicit_default_schema",
    "server_side_cursors",
    "comment_reflection",
    "view_column_reflection",
    "foreign_key_constraint_option_reflection_ondelete",
    "foreign_key_constraint_option_reflection_onupdate",
    "temporary_tables",
    "create_or_replace_view",
    "unique_constraint_reflection",
    "check_constraint_reflection",
    "duplicate_key_raises_integrity_error",
    "datetime",
    "date",
    "time",
    "isolation_level",
    "get_isolation_level_values",
    "json_type",
    "json_array_indexes",
    "precision_numerics_general",
    "expression_server_defaults",
    "implicit_decimal_binds",
    "update_from",
    "delete_from",
    "unicode_connections",
    "regexp_match",
    "regexp_replace",
    "two_phase_transactions",
    "supports_bitwise_or",
    "supports_bitwise_and",
    "supports_bitwise_xor",
    "supports_bitwise_shift",
    "foreign_keys_reflect_as_index",
    "unique_index_reflect_as_unique_constraints",
    "reflect_table_options",
)
# What MySQL/MariaDB lack, as SQLAlchemy's own requirements say for them.
_CLOSED = (
    "datetime_microseconds",  # DATETIME without fsp
    "time_microseconds",
    "datetime_implicit_bound",
    "date_implicit_bound",
    "time_implicit_bound",
    "unbounded_varchar",  # VARCHAR needs a length
    "precision_generic_float_type",
    "sql_expression_limit_offset",  # LIMIT takes literals only
)


class Requirements(SuiteRequirements):
    """SuiteRequirements with MySQL/MariaDB's capabilities opened."""

    def get_isolation_levels(self, config):
        """Return the levels MySQL offers and its default."""
        return {
            "default": "REPEATABLE READ",
            "supported": [
                "SERIALIZABLE",
                "READ UNCOMMITTED",
                "READ COMMITTED",
                "REPEATABLE READ",
                "AUTOCOMMIT",
            ],
        }


for _name in _OPEN:
    setattr(Requirements, _name, property(lambda self: exclusions.open()))
for _name in _CLOSED:
    setattr(Requirements, _name, property(lambda self: exclusions.closed()))
