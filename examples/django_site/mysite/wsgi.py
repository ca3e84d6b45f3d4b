"""WSGI entry point: ``gunicorn --preload mysite.wsgi:application``.

The query below runs at import, in gunicorn's master before it forks (with
--preload), so a broker that is down fails the boot instead of the first
request. That is safe with the broker: the Django connection it opens holds
no MySQL connection, and each worker's first query opens its own ZeroMQ
socket. No post_fork hook is needed.
"""

import os

from django.core.wsgi import get_wsgi_application
from django.db import connection, connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_wsgi_application()

with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
# Django's own MySQL backend needs this, or every worker inherits one MySQL
# socket; with the broker it only drops a connection object that held nothing.
connections.close_all()
