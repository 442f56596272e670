"""Serving tests: a package, so the ``server`` fixture (Ray + Serve, package scope) ends with it."""
