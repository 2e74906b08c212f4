"""Differentiable plug-in memory (PlugLM's DPM) for a decoder-only reader.

A memory branch sits beside the feed-forward block of the reader's last M decoder
layers: Llama-style layers compute ``h = h + mlp(norm(h))``; a forward hook on each
chosen ``mlp`` returns ``mlp(x) + mem(x)``, which gives exactly ``h + FFN(h) + Mem(h)``
without touching transformers internals (detaching removes the hooks).

What the branch attends to (``value_mode='tokens'``, the default): each retrieved
entry is run once through the frozen reader itself (no memory). For every entry
token j, the KEY is the reader's FFN input at the same layer at position j-1 (the
state that was about to predict token j) and the VALUE is a vector for token j
(``value_space``): its input embedding ('embedding', the first branches), or the
least-squares direction that raises token j's output logit above every other
('unembedding'; with tied embeddings the input embedding raises the token itself
only when it is frequent: for " Tokyo" the raised tokens were junk). A prompt
position whose state resembles "about to say the object of this fact" therefore
finds the entry position that was about to say it, and the branch adds that
token's vector to the residual stream: a learned, relation-agnostic copy from
memory (an induction head over retrieved text). Attention logits get
``beta * retrieval_score`` per entry; a learned "null" slot (value 0) lets a
position attend to nothing. ``value_mode='pooled'`` keeps one slot per entry (mean
key and mean value), the cheaper alternative it was measured against.

The output projection starts at zero, so an untrained branch leaves the reader
exactly as it was; with every entry masked the branch adds exactly zero. The
reader stays frozen and only the branch trains.

Usage::

    branch = MemoryBranch(DPMConfig(layers=4), reader)
    mem = branch.encode_values(reader, [["Tokyo is the capital of Japan.", ...]])
    with attach(reader, branch), branch.memory(mem, scores):
        logits = reader.model(**batch).logits
    branch.last_weights  # [batch, k] attention mass per entry at the recorded position

Files (the same inner shape as every mechanism): ``config`` (DPMConfig, format names),
``module`` (MemoryBranch, MemoryValues), ``attach`` (hooks on a reader), ``io`` (save/load
with the reader check), ``fusion`` (DPMFusion: answers and leave-one-out), ``mechanism``
(the ``engine.mechanisms.base.Mechanism`` of the branch), ``train_branch`` (the training
job), ``entry_store`` (entry states on disk) and ``prepare`` (filling that store).
"""
from __future__ import annotations

from engine.mechanisms.dpm.config import DEFAULT_BRANCH, FORMAT, FORMAT_VERSION, MATCH_MODES, VALUE_MODES, VALUE_SPACES, DPMConfig, DPMError
from engine.mechanisms.dpm.module import MemoryBranch, MemoryValues, final_norm_weight, unembedding_map
from engine.mechanisms.dpm.attach import Attachment, attach, detach
from engine.mechanisms.dpm.io import check_compatible, default_branch_path, load, load_default_branch, read_config, save
from engine.mechanisms.dpm.fusion import DPMFusion, EntryCache, greedy, lower_states

# The package's API in one place: callers write ``dpm.load(folder, reader)``, ``dpm.attach(...)``.
__all__ = [
    "Attachment",
    "DEFAULT_BRANCH",
    "DPMConfig",
    "DPMError",
    "DPMFusion",
    "EntryCache",
    "FORMAT",
    "FORMAT_VERSION",
    "MATCH_MODES",
    "MemoryBranch",
    "MemoryValues",
    "VALUE_MODES",
    "VALUE_SPACES",
    "attach",
    "check_compatible",
    "default_branch_path",
    "detach",
    "final_norm_weight",
    "greedy",
    "load",
    "load_default_branch",
    "lower_states",
    "read_config",
    "save",
    "unembedding_map",
]
