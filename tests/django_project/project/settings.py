"""Settings of the test project: one database through the broker, as users write it."""

import os

SECRET_KEY = "tests-only"  # noqa: S105  never served
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
USE_TZ = True
INSTALLED_APPS = ["shop"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "project.urls"
ALLOWED_HOSTS = ["*"]

DATABASES = {
    "default": {
        "ENGINE": "client.django",
        "NAME": os.environ["DJANGO_DB_NAME"],
        "OPTIONS": {
            "endpoint": os.environ["BROKER_ENDPOINT"],
            "pool": "default",
            "test_pool": "test",
            "timeout": 30,
        },
    }
}
