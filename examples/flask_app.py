"""The same app on Flask: ``gunicorn --preload -k gthread examples.flask_app:app``.

Nothing Flask-specific is needed: no teardown hook, no connection object per
request. `record_hit` (shared with `examples.wsgi_app`) uses the default client,
which importing `examples.wsgi_app` already used before the fork.
"""

from __future__ import annotations

from flask import Flask, jsonify

from examples.wsgi_app import record_hit

app = Flask(__name__)


@app.get("/hit")
def hit() -> object:
    """Insert a row and read it back; say which process did."""
    return jsonify(record_hit())
