"""Shared by the plugin benchmarks: held-out-entity probes, their kind of answer, per-relation tables."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from engine.evaluate.plugin_scores import compare
from engine.evaluate.plugins import load_probes

HELDOUT_SPLITS = ("heldout_entity", "heldout_both")


def heldout_probes(path: str | Path, pack, *, paraphrases: bool = False) -> list[dict[str, Any]]:
    """The held-out-entity probes of ``path``, each marked ``entity_answer`` when its answer
    names an entity of the pack (the graph carries it as a node) rather than a literal."""
    names = set()
    for e in pack.entities():
        names.add(e["name"].lower())
        names.update(a.lower() for a in e["aliases"])
    out = load_probes(path, list(HELDOUT_SPLITS), paraphrases=paraphrases)
    for p in out:
        p["entity_answer"] = p["answer"].strip().lower() in names
    return out


def groups(probes: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Index lists: all, entity-valued answers, literal answers, and per relation."""
    g: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(probes):
        g["all"].append(i)
        g["entity answers" if p["entity_answer"] else "literal answers"].append(i)
        g[f"{p['relation']}{' (held-out relation)' if p.get('split') == 'heldout_both' else ''}"].append(i)
    return dict(g)


def comparison_table(probes, base, new, base_name: str, new_name: str) -> str:
    """A Markdown table: per group, n, accuracy of both, won/lost and sign-test p, mean Δ log p,
    log p up/down and sign-test p, MRR of the gold first token of both, top-1 changes."""
    lines = [f"| group | n | acc {base_name} | acc {new_name} | won/lost (p) | mean Δ log p | up/down (p) | "
             f"MRR {base_name} | MRR {new_name} | top-1 changes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    g = groups(probes)
    order = ["all", "entity answers", "literal answers"] + sorted(k for k in g if k not in
                                                                   ("all", "entity answers", "literal answers"))
    for key in order:
        if key not in g:
            continue
        idx = g[key]
        c = compare([base[i] for i in idx], [new[i] for i in idx])
        bold = "**" if key == "all" else ""
        lines.append(f"| {bold}{key}{bold} | {c['n']} | {c['acc_base']:.3f} | {c['acc_new']:.3f} | "
                     f"{c['won']}/{c['lost']} ({c['p_acc']:.2g}) | {c['mean_delta_logp']:+.3f} | "
                     f"{c['logp_up']}/{c['logp_down']} ({c['p_logp']:.2g}) | {c['mrr_base']:.3f} | "
                     f"{c['mrr_new']:.3f} | {c['top1_changes']} |")
    return "\n".join(lines)
