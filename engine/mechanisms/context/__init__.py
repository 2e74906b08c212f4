"""Training-free baseline and fallback: the retrieved entries are written before the prompt.

Files: ``fusion`` (the prompt layouts, ``ContextFusion``: answers and leave-one-out) and
``mechanism`` (the ``engine.mechanisms.base.Mechanism``). Of the common inner shape it has
no module, no training job and no weights: its artefact is the layout's ``config.json``.
"""
from engine.mechanisms.context.fusion import TEMPLATES, ContextFusion, context_prompt, format_facts

__all__ = ["TEMPLATES", "ContextFusion", "context_prompt", "format_facts"]
