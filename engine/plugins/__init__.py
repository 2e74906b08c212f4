"""Knowledge plugins by map-tuning (DESIGN.md, "The four knowledge mechanisms", item 2).

The domain's entities and triples live in the pack (``entities``: import and link
mentions); entity embeddings are trained from the triples with TransE (``transe``) or
imported (``embeddings``); a small mapping network (``mapping``) turns an entity's
embedding into one vector of the reader's input-embedding space, inserted before each
linked mention of the entity; ``map_tune`` trains the mapping with the reader frozen;
``engine.evaluate.plugins`` measures what it does on held-out entities (``python -m
engine.plugins.evaluate`` runs it). Nothing heavy is imported here.
"""
from engine.plugins.errors import EmbeddingError, PluginError, TriplesError

__all__ = ["EmbeddingError", "PluginError", "TriplesError"]
