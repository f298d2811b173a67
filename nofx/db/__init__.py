"""Persistence: the schema, engines, and migrations (``nofx db upgrade``)."""
