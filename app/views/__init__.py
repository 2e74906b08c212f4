"""Panels of the main window; each runs alone with ``python -m app.views.<name>``."""
