"""Evaluate a pack without writing probe files (issue 23): probes made from the pack are
shown for review, edited, saved beside the pack and run at once to a score; the tab's
help documents the formats, its defaults follow Ask, its limit reads "100 probes", and
before a first run it says what to do."""
from __future__ import annotations

import json
from pathlib import Path


from .conftest import FACTS
from .test_evaluation import view  # noqa: F401 - the Evaluation tab on a tiny reader


def test_probes_made_from_the_pack_are_reviewed_edited_saved_and_run_to_a_score(qtbot, view):
    ctx, v, path = view
    assert v.pages.currentWidget() is v.empty and "No evaluation yet" in v.empty.text()
    assert "Make probes from a pack" in v.empty.text()
    v.mode.setCurrentIndex(v.mode.findData("context"))  # the tiny reader has no memory branch
    dlg = v.make_probes(path)
    assert dlg.isVisible() and dlg.current_pack() == path and dlg.sample.text() == "100 probes"
    dlg.make_btn.click()
    qtbot.waitUntil(lambda: dlg.table.rowCount() > 0, timeout=10_000)
    assert dlg.table.rowCount() == len(FACTS)  # every fact sentence can be cut
    rows = {dlg.table.item(r, 0).text(): dlg.table.item(r, 1).text() for r in range(dlg.table.rowCount())}
    assert rows["Paris is the capital of"] == "France"
    assert rows["Iron has the atomic number"] == "26"
    # the user corrects one answer and drops one probe (an empty prompt leaves it out)
    r_japan = next(r for r in range(dlg.table.rowCount()) if dlg.table.item(r, 0).text() == "The currency of Japan is the")
    dlg.table.item(r_japan, 0).setText("The currency of Japan is")
    dlg.table.item(r_japan, 1).setText("the yen")
    from app.views.probe_maker import COLUMNS

    r_paris = next(r for r in range(dlg.table.rowCount()) if dlg.table.item(r, 0).text() == "Paris is the capital of")
    dlg.table.item(r_paris, COLUMNS.index("paraphrases")).setText("France's capital is | The capital of France is")
    r_nile = next(r for r in range(dlg.table.rowCount()) if "Nile" in dlg.table.item(r, 0).text())
    dlg.table.item(r_nile, 0).setText("")
    with qtbot.waitSignal(v.run_finished, timeout=120_000) as sig:
        dlg.run_btn.click()
    saved = Path(path).with_name("facts.probes.jsonl")
    lines = [json.loads(x) for x in saved.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(FACTS) - 1
    japan = next(x for x in lines if x["prompt"] == "The currency of Japan is")
    assert japan["answer"] == "the yen" and japan["subject"] == "Japan"
    paris = next(x for x in lines if x["prompt"] == "Paris is the capital of")
    assert paris["paraphrases"] == ["France's capital is", "The capital of France is"]
    run = sig.args[0]
    assert run.file == str(saved.resolve()) and run.result["n"] == len(FACTS) - 1
    assert run.result["accuracy"] is not None and run.mode == "context" and run.result["n_paraphrases"] == 2
    assert v.pages.currentWidget() is v.splitter and v.table.rowCount() == 1
    assert v.current_file() == str(saved.resolve())


def test_help_formats_limit_wording_and_ask_defaults(qtbot, make_ctx, small_pack):
    from app.views.evaluation import EvaluationView

    ctx = make_ctx([str(small_pack)])
    ctx.settings.ask_mode, ctx.settings.ask_k = "none", 7
    v = EvaluationView(ctx)
    qtbot.addWidget(v)
    v.show()
    assert v.mode.currentData() == "none" and v.k.value() == 7  # what Ask uses
    assert v.limit.text() == "100 probes"
    v.follow_ask("context", 4)
    assert v.mode.currentData() == "context" and v.k.value() == 4
    assert not v.help.isVisibleTo(v)
    v.help_btn.click()
    assert v.help.isVisibleTo(v)
    for field in ("prompt", "answer", "paraphrases", "subject", "relation", "old_text", "new_text", "new"):
        assert f"<code>{field}</code>" in v.help.text()
    edits = small_pack.parent / "e.jsonl"
    edits.write_text(json.dumps({"old_text": "a", "new_text": "b", "prompt": "p", "new": "n"}) + "\n")
    v.set_file(str(edits))
    assert v.limit.text() == "100 edits"
