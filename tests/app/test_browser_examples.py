"""Worked examples in the browser: imported from a probe file through the GUI, marked in the
table, chosen by the tag filter, and removed again by undo."""
from __future__ import annotations

import json

from .conftest import FACTS, open_window
from .cut_text import cut_text_of


def test_examples_imported_in_the_gui_are_marked_filtered_and_undone(qtbot, make_ctx, small_pack, tmp_path):
    src = tmp_path / "probes_train.jsonl"
    src.write_text(json.dumps({"prompt": "The capital of Peru is", "answer": "Lima", "subject": "Peru",
                               "paraphrases": ["Peru's capital city is"]}) + "\n", encoding="utf-8")
    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    b = win.browser
    with qtbot.waitSignal(ctx.jobs.finished, timeout=120_000):
        win.workspace_panel.import_examples([str(src)], path)
    qtbot.waitUntil(lambda: b.model.rowCount() == len(FACTS) + 2, timeout=60_000)
    cols = b.model.columns()

    def row(r: int) -> dict:
        return {c: b.model.data(b.model.index(r, cols.index(c))) for c in ("title", "text")}

    rows = [row(r) for r in range(b.model.rowCount())]
    marked = [r for r in rows if r["title"].startswith("[example]")]
    assert [r["text"] for r in marked] == ["The capital of Peru is Lima.", "Peru's capital city is Lima."]
    assert all(r["title"] == "[example] Peru" for r in marked)
    assert not any(r["title"].startswith("[example]") for r in rows if r not in marked)  # facts are not marked
    titles = [win.jobs_panel.table.item(r, 0).text() for r in range(win.jobs_panel.table.rowCount())]
    assert any("Import 1 probe file(s) as examples into facts" in t for t in titles), titles

    # the filter: "Examples (2)" heads the tag list and shows only them
    qtbot.waitUntil(lambda: b.tag.findData("example") >= 0, timeout=10_000)
    i = b.tag.findData("example")
    assert i == 1 and b.tag.itemText(i) == "Examples (2)"
    b.tag.setCurrentIndex(i)
    assert cut_text_of(b.tag, win) is None  # it read 'Worked exam…'
    qtbot.waitUntil(lambda: b.model.rowCount() == 2, timeout=10_000)
    assert {row(r)["text"] for r in range(2)} == {"The capital of Peru is Lima.", "Peru's capital city is Lima."}

    # undo of the import removes the examples
    qtbot.waitUntil(lambda: win.act_undo.isEnabled() and "probes_train.jsonl" in win.act_undo.text(), timeout=20_000)
    assert "import examples from probes_train.jsonl" in win.act_undo.text()  # not a plain import
    with qtbot.waitSignal(ctx.hub.changed, timeout=20_000):
        win.act_undo.trigger()
    qtbot.waitUntil(lambda: b.model.rowCount() == 0, timeout=20_000)
    b.tag.setCurrentIndex(0)
    qtbot.waitUntil(lambda: b.model.rowCount() == len(FACTS), timeout=20_000)
    assert not any(row(r)["title"].startswith("[example]") for r in range(b.model.rowCount()))
    win.close()


def test_the_job_details_say_a_probe_file_is_imported_as_examples():
    from app.views.job_details import what_it_does

    said = what_it_does("build_memory", "", {"inputs": ["/x/probes_train.jsonl"], "pack": "/x/geo.plugmem",
                                             "as_examples": True})
    assert said.startswith("Imports the probe file(s) probes_train.jsonl into the pack geo as worked examples")
    assert "each passage" in what_it_does("build_memory", "", {"inputs": ["/x/f.jsonl"], "pack": "/x/geo.plugmem"})
