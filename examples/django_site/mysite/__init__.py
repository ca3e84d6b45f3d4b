"""The example site's project package: settings, urls, wsgi."""
