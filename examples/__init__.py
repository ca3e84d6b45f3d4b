"""Recipes: the broker's client under gunicorn, uwsgi, celery and multiprocessing."""
