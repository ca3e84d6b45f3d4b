"""Settings of the example site: the one DATABASES entry a broker user writes.

``$BROKER_ENDPOINT`` and ``$DJANGO_DB_NAME`` fill it in here. For the
comparison in bench.py only, ``$DJANGO_ENGINE=mysql`` switches to Django's own
MySQL backend (on pymysql) with ``$DJANGO_CONN_MAX_AGE`` ("none" for None).
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only")
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["hits"]
ROOT_URLCONF = "mysite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "client.django",
        "NAME": os.environ.get("DJANGO_DB_NAME", "appdb"),  # informational
        "OPTIONS": {
            "endpoint": os.environ.get(
                "BROKER_ENDPOINT", "ipc:///run/broker/broker.sock"
            ),
            "pool": "default",
            "timeout": 30,
        },
    }
}

if os.environ.get("DJANGO_ENGINE") == "mysql":  # bench.py's baseline, not a recipe
    import pymysql

    pymysql.install_as_MySQLdb()
    max_age = os.environ.get("DJANGO_CONN_MAX_AGE", "0")
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ["DJANGO_DB_NAME"],
        "HOST": os.environ["MYSQL_HOST"],
        "PORT": os.environ["MYSQL_PORT"],
        "USER": os.environ["MYSQL_USER"],
        "PASSWORD": os.environ["MYSQL_PASSWORD"],
        "CONN_MAX_AGE": None if max_age == "none" else int(max_age),
    }
