"""mysql-broker: one process per host owns every MySQL connection."""

__version__ = "0.1.0"
