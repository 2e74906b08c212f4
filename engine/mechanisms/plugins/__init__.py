"""Knowledge plugins by map-tuning (DESIGN.md, "The four knowledge mechanisms", item 2).

The domain's entities and triples live in the pack (``entities``: import and link
mentions); entity embeddings are trained from the triples with TransE (``transe``, a job)
or imported (``embeddings``: their folder's io); a small mapping network turns an
entity's embedding into one vector of the reader's input-embedding space: ``config``
(``MappingConfig``), ``module`` (``MappingNetwork`` and ``KnowledgePlugin``), ``io`` (the
plugin folder: save, load, the reader and entity-set checks), ``attach`` (the
``PluginInjector`` that puts its vectors before each linked mention; the reader itself is
not touched); ``map_tune`` (the training job) trains the mapping with the reader frozen;
``mechanism`` is the ``engine.mechanisms.base.Mechanism``. ``engine.evaluate.plugins``
measures what it does on held-out entities. Nothing heavy is imported here.
"""
from engine.mechanisms.plugins.errors import EmbeddingError, PluginError, TriplesError

__all__ = ["EmbeddingError", "PluginError", "TriplesError"]
