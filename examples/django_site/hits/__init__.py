"""The example site's one app: a row per request."""
