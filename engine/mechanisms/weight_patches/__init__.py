"""Weight patches: facts rewritten inside the reader by constrained fine-tuning (DESIGN.md,
"The four knowledge mechanisms", item 4; Zhu et al. 2020, "Modifying Memories in
Transformer Models"). Not "edits": entry edits are a pack's thing.

Chosen tensors of the reader (``PatchConfig.layers`` x ``targets``, default the MLP
down-projection of one early block) are fine-tuned on the facts' answer tokens by
projected gradient descent: after every step each tensor is clamped into
[theta0 - delta, theta0 + delta]. The change is kept as a **weight patch**, the deltas of
the touched tensors only, reversible exactly.

* ``config.py``: ``PatchConfig`` (layers, targets, delta, lr, steps, stop_loss,
  locality_weight), validated; ``PatchError``; the format names;
* ``module.py``: ``Fact`` and ``WeightPatch`` (``{tensor name: delta}``, the base tensors'
  sha256, the reader's fingerprint, the facts, who, when, metrics);
* ``attach.py``: ``PatchStack`` (the patches applied to one reader, in order; removing one
  restores from copies bit for bit and re-checks the later ones) and ``applied(reader, patches)``;
* ``io.py``: ``config.json`` + ``delta.safetensors``, atomic write, every field checked;
* ``train.py``: ``make_patch`` (a batch of facts), ``make_sequential`` (one patch per fact,
  each on top of the earlier ones), and the job ``run(config, progress, should_stop)``;
* ``mechanism.py``: ``WeightPatchMechanism`` (kind "weight change": composed first).

Edit metrics across mechanisms live in ``engine/evaluate`` (``compare.py``).
"""
from engine.mechanisms.weight_patches.attach import PatchStack, applied
from engine.mechanisms.weight_patches.config import FORMAT, PatchConfig, PatchError
from engine.mechanisms.weight_patches.io import is_patch_folder, load, save
from engine.mechanisms.weight_patches.module import Fact, WeightPatch
from engine.mechanisms.weight_patches.train import make_patch, make_sequential

__all__ = ["FORMAT", "Fact", "PatchConfig", "PatchError", "PatchStack", "WeightPatch", "applied",
           "is_patch_folder", "load", "make_patch", "make_sequential", "save"]
