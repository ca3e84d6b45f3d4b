"""SQLAlchemy's third-party dialect compliance suite, as it ships."""

from sqlalchemy.testing.suite import *  # noqa: F403
