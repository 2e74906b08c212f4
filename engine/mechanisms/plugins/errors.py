"""Errors of the knowledge-plugin mechanism; each message names what is wrong and where."""
from __future__ import annotations


class PluginError(ValueError):
    """A knowledge plugin (or its inputs) cannot be used as given."""


class TriplesError(PluginError):
    """A triples/entities file is malformed or inconsistent (names file and line)."""


class EmbeddingError(PluginError):
    """Entity embeddings are missing, malformed or do not match the pack's entities."""
