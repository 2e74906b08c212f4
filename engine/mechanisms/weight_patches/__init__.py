"""Weight patches by constrained fine-tuning (DESIGN.md, "The four knowledge mechanisms",
item 4): no code yet. Not "edits": entry edits are a pack's thing.

What goes here: rewrite chosen facts by fine-tuning chosen layers under an L-infinity bound
delta on the change; keep the change as a reversible patch (the difference of the touched
tensors); report efficacy (the modified facts), generalisation (paraphrases) and locality
(unmodified facts), before and after.

Checklist (docs/ENGINE.md, "How to add a mechanism"), all inside this folder:

* ``config.py``: a ``PatchConfig`` (layers, delta, steps, lr), validated;
* ``module.py``: the patch itself: ``{parameter name: delta tensor}`` with its bound checked;
* ``attach.py``: add the deltas in place under ``torch.no_grad()`` and subtract them on
  detach; keep a copy of the touched tensors to restore them exactly (float rounding of
  ``w + d - d`` is not bit for bit), which the base interface's test demands;
* ``io.py``: ``config.json`` (format ``plugmem-weight-patch``, version, the reader
  fingerprint, the facts) + ``model.safetensors`` of the deltas; another reader's is refused;
* ``train.py``: the constrained fine-tuning job ``run(config, progress, should_stop)``;
* ``mechanism.py``: a ``WeightPatchMechanism(MechanismBase)`` with
  ``spec = mechanism("weight_patches")``, ``attach``, ``leave_one_out`` (each patched
  tensor left out in turn), ``save``/``load``;
* and one ``MechanismSpec("weight_patches", "weight change", ...)`` in
  ``engine/mechanisms/registry.py``; the evaluation's edit metrics live in ``engine/evaluate``.
"""
