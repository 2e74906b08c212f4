"""Memory edits and weight patches side by side (engine.evaluate.compare), on the tiny reader
with the branch that copies its memory and a small zoo pack."""
from __future__ import annotations

import pytest
import torch

from engine.evaluate import EvalDataError, Probe
from engine.evaluate.compare import check_mechanisms, compare
from engine.mechanisms.weight_patches import PatchConfig, PatchStack
from engine.probe_files import Edit

from .test_evaluate import ANIMALS, predictor, tiny, zoo  # noqa: F401 - fixtures

EDITS = [
    Edit("Zebra facts: Rome Rome Rome Rome Rome", "Zebra facts: Oslo Oslo Oslo Oslo Oslo", "Zebra facts:", "Oslo",
         paraphrase="Facts about the zebra:", subject="Zebra"),
    Edit("Tiger facts: Lima Lima Lima Lima Lima", "Tiger facts: Kyiv Kyiv Kyiv Kyiv Kyiv", "Tiger facts:", "Kyiv",
         subject="Tiger"),
]
LOCALITY = [Probe(f"{a} facts:", w, subject=a) for a, w in ANIMALS.items()]
CFG = PatchConfig(layers=[0, 1], delta=0.05, lr=0.02, steps=12)


def test_every_mechanism_reports_the_same_figures_and_undoes_exactly(predictor, zoo):  # noqa: F811
    texts = sorted(e.text for e in zoo.pack.page(0, 10))
    state = {k: v.clone() for k, v in predictor.reader.model.state_dict().items()}
    res = compare(predictor, zoo, EDITS, LOCALITY, mechanisms=["dpm", "context", "patch_batch", "patch_sequential",
                                                              "plugins"], patch_config=CFG, k=1)
    rows = res["rows"]
    assert res["n"] == 2 and res["n_locality"] == 3  # Zebra and Tiger are edited: not locality probes
    assert rows["plugins"] == {"skipped": "no knowledge plugin plugged", "label": "memory edit + plugins"}
    for name in ("dpm", "context", "patch_batch", "patch_sequential"):
        r = rows[name]
        assert {"efficacy", "paraphrase", "locality", "accuracy_before", "accuracy_after", "seconds_to_change",
                "artefact_bytes", "reversible_exactly"} <= set(r), name
        assert r["reversible_exactly"] is True and r["artefact_bytes"] > 0 and r["seconds_to_change"] > 0
    assert rows["dpm"]["followed"][0] == "1"  # the copying branch follows the edited entry (Oslo)
    assert rows["patch_batch"]["efficacy"] == 1.0 and rows["patch_sequential"]["artefact"] == "2 patches"
    assert all(set(d["followed"]) == {"dpm", "context", "patch_batch", "patch_sequential"} for d in res["differ"])
    # a patch is a few tensors; an entry edit is a sentence and its key
    assert rows["patch_batch"]["artefact_bytes"] > rows["context"]["artefact_bytes"]
    assert sorted(e.text for e in zoo.pack.page(0, 10)) == texts  # the pack is as before
    now = predictor.reader.model.state_dict()
    assert all(torch.equal(now[k], state[k]) for k in state) and PatchStack.of(predictor.reader).names() == []


def test_bad_mechanism_names_and_unknown_entries_are_refused(predictor, zoo):  # noqa: F811
    with pytest.raises(EvalDataError, match="--mechanisms: magic: choose from dpm, context"):
        check_mechanisms(["dpm", "magic"])
    bad = [Edit("Yak facts: none", "Yak facts: some", "Yak facts:", "some", where="e.jsonl:1")]
    with pytest.raises(EvalDataError, match="e.jsonl:1: old_text 'Yak facts: none' is not the text"):
        compare(predictor, zoo, bad, LOCALITY, mechanisms=["context"])
