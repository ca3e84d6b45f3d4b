"""One table: a row per request."""

from django.db import models


class Hit(models.Model):
    """A request's row: its token and the process that wrote it."""

    token = models.CharField(max_length=32)
    pid = models.IntegerField()
