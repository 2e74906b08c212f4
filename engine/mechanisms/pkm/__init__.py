"""Product-key memory layer (DESIGN.md, "The four knowledge mechanisms", item 3).

Two half-key codebooks, top-k over their Cartesian product, a weighted sum of value rows,
added beside the feed-forward block of a chosen layer (``h + FFN(n) + PKM(n)``), values at
zero so the pretrained reader is exactly unchanged until trained; grown on a domain corpus
(values with their own learning rate); it reports memory usage (share of slots used, KL to
uniform, Gini). Lample et al. 2019; the recipe (start from the pretrained reader, add beside
the FFN rather than replace it) is Kim & Jung 2020's.

* ``config.py``: ``PKMConfig`` (layer, slots, heads, k, key_dim, query_norm, placement, init),
  the size presets, ``PKMError``;
* ``module.py``: ``ProductKeyMemory`` (query net + norm, product keys, EmbeddingBag values);
* ``attach.py``: the hook on the layer's ``mlp`` (or the swap, for ``placement='replace'``);
  detaching leaves the reader bit for bit as before;
* ``io.py``: ``config.json`` (format ``plugmem-pkm``) + ``model.safetensors``, atomic;
  another reader's layer, wrong shapes, a pickle or a mixed pair of files are refused;
* ``usage.py``: XLM's memory-usage figures;
* ``corpus.py``: documents from packs or corpus files, the split by document, token windows;
* ``train.py``: the job ``run(config, progress, should_stop)`` (``grow`` for the runner);
* ``mechanism.py``: ``PKMMechanism`` (attach, leave_one_out over the slots read, save/load).
"""
from engine.mechanisms.pkm.config import FORMAT, FORMAT_VERSION, PRESETS, PKMConfig, PKMError, default_layer, preset

__all__ = ["FORMAT", "FORMAT_VERSION", "PRESETS", "PKMConfig", "PKMError", "default_layer", "preset"]
