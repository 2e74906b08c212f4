"""Product-key memory layer (DESIGN.md, "The four knowledge mechanisms", item 3): no code yet.

What goes here: two half-key codebooks, top-k over their Cartesian product, a weighted sum
of value rows, added beside the feed-forward block of a chosen layer, initialised so the
pretrained reader is unchanged; trained on a domain corpus (values with their own learning
rate); it reports memory usage (share of slots used, KL to uniform, Gini).

Checklist (docs/ENGINE.md, "How to add a mechanism"), all inside this folder:

* ``config.py``: a ``PKMConfig`` dataclass (layer, codebook size, k, heads, value dim), validated;
* ``module.py``: the ``nn.Module(config)``; ``[batch, T, d]`` shapes commented where they change;
* ``attach.py``: a forward hook on the chosen layer's ``mlp`` (as ``dpm.attach`` does);
  detaching removes it, so the reader is bit for bit as before;
* ``io.py``: ``config.json`` (format ``plugmem-pkm``, version, the reader fingerprint) +
  ``model.safetensors``, atomic write; another reader's layer is refused;
* ``train.py``: the job ``run(config, progress, should_stop)`` with checkpoints (resumable);
* ``mechanism.py``: a ``PKMMechanism(MechanismBase)`` with ``spec = mechanism("pkm")``,
  ``attach``, ``leave_one_out`` (the layer's top slots left out in turn), ``save``/``load``;
* and one ``MechanismSpec("pkm", "added layer", ...)`` in ``engine/mechanisms/registry.py``.
"""
