"""Fact-probe and edit metrics on the tiny reader with a branch that copies its memory."""
from __future__ import annotations

import json
import re

import pytest

from engine.evaluate import EvalDataError, Probe, evaluate_edits, evaluate_probes, is_correct, read_edits, read_probes
from engine.explain import Predictor
from engine.memory import Memory
from engine.reader.tiny import make_tiny_reader

from .test_dpm import copy_branch

ANIMALS = {"Zebra": "Rome", "Lion": "Paris", "Tiger": "Lima", "Camel": "Cairo", "Panda": "Tokyo"}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_reader(seed=0)


@pytest.fixture(scope="module")
def predictor(tiny):
    return Predictor(tiny, copy_branch(tiny))


@pytest.fixture
def zoo(tmp_path, encoder):
    m = Memory.open(tmp_path / "zoo.plugmem", encoder, create=True, name="zoo")
    m.add_many([
        {"text": f"{a} facts: {w} {w} {w} {w} {w}", "title": a, "tags": ["word", "zoo"]}
        for a, w in ANIMALS.items()
    ])
    yield m
    m.close()


def probes() -> list[Probe]:
    return [Probe(f"{a} facts:", w, paraphrases=[f"Facts about the {a.lower()}:"], relation="word", subject=a)
            for a, w in ANIMALS.items()]


def write_jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) if not isinstance(r, str) else r for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_the_probe_rule():
    assert is_correct(" Tokyo.", "Tokyo") and is_correct("\n tokyo is", "Tokyo")
    assert not is_correct(" The capital is Tokyo", "Tokyo") and not is_correct(" Tok", "Tokyo")
    assert not is_correct(" anything", "  ")


def test_probe_accuracy_with_and_without_memory(predictor, zoo):
    res = evaluate_probes(predictor, [zoo], probes(), mode="dpm", k=1)
    assert res["n"] == 5 and res["hit_at_k"] == 1.0
    assert res["accuracy"] == 1.0 and res["accuracy_without_memory"] == 0.0
    assert res["by_relation"]["word"] == {"n": 5, "accuracy": 1.0, "accuracy_without_memory": 0.0, "hit_at_k": 1.0}
    assert res["n_paraphrases"] == 5 and res["paraphrase_accuracy_without_memory"] == 0.0
    # The same answers as one prediction at a time.
    one = predictor.predict("Zebra facts:", [zoo], k=1, max_new_tokens=3, explain=False)
    assert one.answer.lstrip().startswith("Rome")


def test_limit_and_mode_none(predictor, zoo):
    res = evaluate_probes(predictor, [zoo], probes(), mode="none", k=1, limit=2, paraphrases=False)
    assert res["n"] == 2 and res["accuracy"] == res["accuracy_without_memory"] == 0.0
    assert res["hit_at_k"] is None and res["n_paraphrases"] == 0


def test_a_wrong_memory_entry_is_a_wrong_answer_and_shows_as_a_failure(predictor, zoo):
    zebra = next(e.id for e in zoo.pack.page(0, 10) if e.title == "Zebra")
    zoo.edit(zebra, text="Zebra facts: Oslo Oslo Oslo Oslo Oslo")
    res = evaluate_probes(predictor, [zoo], probes(), mode="dpm", k=1, paraphrases=False)
    assert res["accuracy"] == 0.8
    assert [f["prompt"] for f in res["failures"]] == ["Zebra facts:"]
    assert res["failures"][0]["got"].lstrip().startswith("Oslo")
    # probe by probe, in the file's order (runs are compared on it): only the zebra is wrong
    zebra_at = [p.prompt for p in probes()].index("Zebra facts:")
    assert res["correct_by_probe"] == "".join("0" if i == zebra_at else "1" for i in range(5))


def test_edit_metrics_apply_measure_and_undo(predictor, zoo):
    cv = zoo.pack.content_version
    texts = sorted(e.text for e in zoo.pack.page(0, 10))
    edits = read_edits_rows([
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Zebra facts:", "new": "Oslo", "old": "Rome", "paraphrase": "Facts about the zebra:", "subject": "Zebra"},
        {"old_text": "Tiger facts: Lima Lima Lima Lima Lima", "new_text": "Tiger facts: Seoul Seoul Seoul Seoul Seoul",
         "prompt": "Tiger facts:", "new": "Seoul", "old": "Lima", "subject": "Tiger"},
    ])
    res = evaluate_edits(predictor, [zoo], edits, probes(), mode="dpm", k=1)
    assert res["n"] == 2 and res["efficacy"] == 1.0 and res["efficacy_before"] == 0.0
    assert res["followed_by_edit"] == "11"
    assert res["old_answer_after"] == 0.0 and res["edit_retrieved"] == 1.0
    assert res["n_paraphrases"] == 1
    assert res["n_locality"] == 3 and res["locality"] == 1.0  # Lion, Camel, Panda: untouched subjects
    assert res["locality_accuracy_before"] == res["locality_accuracy_after"] == 1.0
    assert res["restored"] is True
    assert sorted(e.text for e in zoo.pack.page(0, 10)) == texts
    assert zoo.pack.content_version > cv  # restored by undo, through the normal path
    assert zoo.search("Zebra facts:", k=1)[0].entry.text.endswith("Rome")
    assert zoo.redo() is None  # Edit > Redo does not bring the counterfactual edits back
    assert sorted(e.text for e in zoo.pack.page(0, 10)) == texts


def test_edit_failures_of_every_kind_name_what_was_retrieved_and_the_edited_entrys_rank(predictor, zoo):
    """A user reading why an edit evaluation fell short sees each failing prompt, its kind
    (the edit's prompt, its paraphrase, an untouched fact whose answer changed), the answer
    and the ranks of the retrieved entries, the edited one marked."""
    edits = read_edits_rows([
        # followed on its prompt; its "paraphrase" asks about the lion, whose entry answers it
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Zebra facts:", "new": "Oslo", "paraphrase": "Lion facts:", "subject": "Zebra"},
        # its prompt asks about the panda: the edit is not followed
        {"old_text": "Tiger facts: Lima Lima Lima Lima Lima", "new_text": "Tiger facts: Seoul Seoul Seoul Seoul Seoul",
         "prompt": "Panda facts:", "new": "Seoul", "subject": "Tiger"},
    ])
    # An untouched subject whose answer came from an edited entry: "Rome" is no longer there.
    loc = probes() + [Probe("Rome Rome Rome:", "Rome", subject="Rome")]
    res = evaluate_edits(predictor, [zoo], edits, loc, mode="dpm", k=2)
    assert res["efficacy"] == 0.5 and res["generalization"] == 0.0
    by_kind = {f["kind"]: f for f in res["failures"]}
    assert set(by_kind) == {"efficacy", "paraphrase", "locality"}
    assert res["n_failures"] == {"efficacy": 1, "paraphrase": 1, "locality": 1}
    eff = by_kind["efficacy"]
    assert (eff["prompt"], eff["expected"]) == ("Panda facts:", "Seoul") and eff["got"].lstrip().startswith("Tokyo")
    para = by_kind["paraphrase"]
    assert para["prompt"] == "Lion facts:" and para["edit_prompt"] == "Zebra facts:" and para["got"].lstrip().startswith("Paris")
    locality = by_kind["locality"]
    assert locality["prompt"] == "Rome Rome Rome:" and locality["before"].lstrip().startswith("Rome")
    assert locality["got"] != locality["before"]
    for f in res["failures"]:
        ranks = [r["rank"] for r in f["retrieved"]]
        assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) == 2
        assert f["retrieved"][0]["text"].split(":")[0] in f["prompt"] or f["kind"] == "locality"
        marked = [r["rank"] for r in f["retrieved"] if r["edited"]]
        assert f["edited_rank"] == (marked[0] if marked else None)
        assert all(r["text"].startswith(("Zebra", "Tiger")) for r in f["retrieved"] if r["edited"])
    assert res["restored"] is True


def read_edits_rows(rows, tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return read_edits(write_jsonl(Path(d) / "edits.jsonl", rows))


def test_an_edit_of_an_unknown_entry_is_named_and_nothing_changes(predictor, zoo, tmp_path):
    cv = zoo.pack.content_version
    path = write_jsonl(tmp_path / "e.jsonl", [
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "x", "prompt": "p", "new": "n"},
        {"old_text": "Unicorn facts: none", "new_text": "x", "prompt": "p", "new": "n"},
    ])
    with pytest.raises(EvalDataError, match=r"e\.jsonl:2: old_text 'Unicorn facts: none' is not the text"):
        evaluate_edits(predictor, [zoo], read_edits(path), [], mode="dpm", k=1)
    assert zoo.pack.content_version == cv


def test_edits_are_undone_even_when_the_evaluation_is_cancelled(predictor, zoo):
    from engine.progress import JobCancelled

    edits = read_edits_rows([{"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo",
                              "prompt": "Zebra facts:", "new": "Oslo"}])
    calls = {"n": 0}

    def stop():  # let the "before" pass run, stop during the "after" pass
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(JobCancelled):
        evaluate_edits(predictor, [zoo], edits, [], mode="dpm", k=1, should_stop=stop)
    assert zoo.search("Zebra facts:", k=1)[0].entry.text == "Zebra facts: Rome Rome Rome Rome Rome"


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", r"p\.jsonl:2: not valid JSON"),
        ('{"prompt": "x"}', r"p\.jsonl:2: field 'answer' must be a non-empty string"),
        ('{"prompt": "x", "answer": "y", "paraphrases": "z"}', r"p\.jsonl:2: 'paraphrases' must be a list"),
        ("[1, 2]", r"p\.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_probe_files_name_file_and_line(tmp_path, line, match):
    path = write_jsonl(tmp_path / "p.jsonl", ['{"prompt": "a", "answer": "b"}', line])
    with pytest.raises(EvalDataError, match=match):
        read_probes(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(EvalDataError, match="no such file"):
        read_probes(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvalDataError, match="no probes"):
        read_probes(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(EvalDataError, match=r"bin\.jsonl:1: not valid UTF-8"):
        read_edits(tmp_path / "bin.jsonl")


def test_demo_probe_and_edit_files_read():
    from engine.resources import demo_dir

    p = read_probes(demo_dir() / "geography" / "probes_heldout.jsonl")
    assert len(p) > 100 and {x.split for x in p} >= {"heldout_relation", "heldout_entity"}
    e = read_edits(demo_dir() / "chemistry" / "edits.jsonl")
    assert len(e) == 100 and all(x.new and x.paraphrase for x in e)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    from engine.mechanisms import dpm
    from engine.reader import load_reader

    root = tmp_path_factory.mktemp("models")
    folder = make_tiny_reader(seed=0).save(root / "tiny-reader")
    branch = dpm.save(copy_branch(load_reader(folder)), root / "copy-branch")
    return str(folder), str(branch)


def run_cli(capsys, *argv):
    from engine.cli import main

    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_eval_reports_both_modes(cli_models, zoo, tmp_path, capsys):
    reader, branch = cli_models
    pack = str(zoo.pack.path)
    zoo.close()
    probes_path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": f"{a} facts:", "answer": w, "relation": "word", "subject": a} for a, w in ANIMALS.items()
    ])
    code, out, err = run_cli(capsys, "eval", probes_path, "--memory", pack, "--mode", "dpm,context", "-k", "1",
                             "--reader", reader, "--branch", branch, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert {"n", "accuracy", "accuracy_without_memory", "hit_at_k", "by_relation"} <= set(d)
    assert d["n"] == 5 and d["accuracy"] == 1.0 and d["hit_at_k"] == 1.0
    assert set(d["by_mode"]) == {"dpm", "context"} and d["by_mode"]["context"]["mode"] == "context"
    code, out, _ = run_cli(capsys, "eval", probes_path, "--memory", pack, "-k", "1", "--limit", "2",
                           "--reader", reader, "--branch", branch)
    assert code == 0 and "accuracy with memory" in out and "100.0%" in out


def test_cli_eval_edits_and_bad_files(cli_models, zoo, tmp_path, capsys):
    reader, branch = cli_models
    pack = str(zoo.pack.path)
    zoo.close()
    edits = write_jsonl(tmp_path / "e.jsonl", [
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Zebra facts:", "new": "Oslo", "paraphrase": "Facts about the zebra:", "subject": "Zebra"},
    ])
    loc = write_jsonl(tmp_path / "loc.jsonl", [{"prompt": "Lion facts:", "answer": "Paris", "subject": "Lion"}])
    code, out, err = run_cli(capsys, "eval-edits", edits, "--memory", pack, "--locality", loc, "-k", "1",
                             "--reader", reader, "--branch", branch, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert {"n", "efficacy", "generalization", "locality"} <= set(d)
    assert d["efficacy"] == 1.0 and d["locality"] == 1.0 and d["restored"] is True
    with Memory.open(pack) as m:  # the pack is as before
        assert m.search("Zebra facts:", k=1)[0].entry.text.endswith("Rome")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"old_text": "x"}\n')
    code, out, err = run_cli(capsys, "eval-edits", str(bad), "--memory", pack, "--reader", reader, "--branch", branch)
    assert code == 2 and "bad.jsonl:1: field 'new_text'" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "none.jsonl"), "--memory", pack, "--reader", reader,
                             "--mode", "context")
    assert code == 2 and "no such file" in err


def test_cli_eval_edits_lists_each_kind_of_failure_with_ranks(cli_models, zoo, tmp_path, capsys):
    reader, branch = cli_models
    pack = str(zoo.pack.path)
    zoo.close()
    edits = write_jsonl(tmp_path / "e.jsonl", [
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Panda facts:", "new": "Oslo", "paraphrase": "Lion facts:", "subject": "Zebra"},
    ])
    loc = write_jsonl(tmp_path / "loc.jsonl", [{"prompt": "Rome Rome Rome:", "answer": "Rome", "subject": "Rome"}])
    args = ("eval-edits", edits, "--memory", pack, "--locality", loc, "-k", "2", "--reader", reader, "--branch", branch)
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "failures: 1 efficacy, 1 paraphrase, 1 locality" in out
    assert "[efficacy] 'Panda facts:' -> 'Tokyo" in out and "expected 'Oslo'" in out
    assert "[paraphrase] 'Lion facts:' -> 'Paris" in out
    assert "[locality] 'Rome Rome Rome:'" in out and "before the edits 'Rome" in out
    ranked = re.findall(r"^ +([12])\.([ *]) \d\.\d{3}  (\w+) facts", out, re.M)  # rank, star, whose entry
    assert [r for r, _, _ in ranked] == ["1", "2"] * 3
    assert all((star == "*") == (who == "Zebra") for _, star, who in ranked)  # the edited entry starred
    code, out, err = run_cli(capsys, *args, "--json")
    d = json.loads(out)
    assert [f["kind"] for f in d["failures"]] == ["efficacy", "paraphrase", "locality"]
    assert all(f["retrieved"][0]["rank"] == 1 for f in d["failures"])


def test_edits_left_by_a_killed_edit_evaluation_are_undone_next_time(predictor, zoo):
    from engine.evaluate import undo_interrupted_evaluation
    from engine.evaluate.edits import AUTHOR

    texts = sorted(e.text for e in zoo.pack.page(0, 10))
    by_text = {e.text: e.id for e in zoo.pack.page(0, 10)}
    # What a SIGKILLed evaluation leaves: its edits applied (through the normal path), never undone.
    zoo.edit(by_text["Zebra facts: Rome Rome Rome Rome Rome"], text="Zebra facts: Oslo Oslo Oslo Oslo Oslo", author=AUTHOR)
    zoo.edit(by_text["Tiger facts: Lima Lima Lima Lima Lima"], text="Tiger facts: Seoul Seoul Seoul Seoul Seoul", author=AUTHOR)
    assert sorted(e.text for e in zoo.pack.page(0, 10)) != texts
    edits = read_edits_rows([
        {"old_text": "Lion facts: Paris Paris Paris Paris Paris", "new_text": "Lion facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Lion facts:", "new": "Oslo", "subject": "Lion"},
        # the killed run's own edit, run again: its old_text is back only after the clean-up
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Zebra facts:", "new": "Oslo", "subject": "Zebra"},
    ])
    res = evaluate_edits(predictor, [zoo], edits, (), mode="dpm", k=1)  # the next evaluation cleans up first
    assert res["restored"] is True
    assert sorted(e.text for e in zoo.pack.page(0, 10)) == texts
    assert zoo.redo() is None

    # A change of the user's on top is never undone for them.
    zoo.edit(by_text["Zebra facts: Rome Rome Rome Rome Rome"], text="Zebra facts: Oslo Oslo Oslo Oslo Oslo", author=AUTHOR)
    zoo.edit(by_text["Tiger facts: Lima Lima Lima Lima Lima"], text="Tiger facts: Lima Lima Lima Lima Oslo", author="ada")
    assert undo_interrupted_evaluation(zoo) == 0
    assert "Tiger facts: Lima Lima Lima Lima Oslo" in {e.text for e in zoo.pack.page(0, 10)}


def test_an_edit_evaluation_running_elsewhere_keeps_its_edits_and_blocks_a_second_one(predictor, zoo, evaluating_elsewhere):
    """Two evaluations of one pack (say the app's job and `plugmem eval-edits`) would undo each
    other's edits: while one holds the pack's evaluation lock, a second refuses at once, and
    the clean-up of 'interrupted' evaluations leaves the running one's edits alone."""
    from engine.evaluate import undo_interrupted_evaluation
    from engine.evaluate.edits import AUTHOR
    from engine.store.locks import PackBusyError

    by_text = {e.text: e.id for e in zoo.pack.page(0, 10)}
    # The other process's evaluation applied its edit, and holds the lock until it undoes it.
    zoo.edit(by_text["Zebra facts: Rome Rome Rome Rome Rome"], text="Zebra facts: Oslo Oslo Oslo Oslo Oslo", author=AUTHOR)
    with evaluating_elsewhere(zoo.pack.path):
        cv = zoo.pack.content_version
        edits = read_edits_rows([
            {"old_text": "Lion facts: Paris Paris Paris Paris Paris", "new_text": "Lion facts: Oslo Oslo Oslo Oslo Oslo",
             "prompt": "Lion facts:", "new": "Oslo", "subject": "Lion"},
        ])
        with pytest.raises(EvalDataError, match=r"zoo\.plugmem: another edit evaluation is running on this pack"):
            evaluate_edits(predictor, [zoo], edits, (), mode="dpm", k=1)
        assert undo_interrupted_evaluation(zoo) == 0  # the running evaluation's edit is its own to undo
        # A user's own change now would be popped by that evaluation's undo: it is refused, named.
        with pytest.raises(PackBusyError, match=r"zoo\.plugmem: an edit evaluation is running on this pack in another"):
            zoo.edit(by_text["Lion facts: Paris Paris Paris Paris Paris"], text="Lion facts: Lima Lima Lima Lima Lima")
        with pytest.raises(PackBusyError):
            zoo.add("Bear facts: Kyiv Kyiv Kyiv Kyiv Kyiv")
        assert zoo.pack.content_version == cv
    assert undo_interrupted_evaluation(zoo) == 1  # its holder gone without undoing: now it is left behind
    assert "Zebra facts: Rome Rome Rome Rome Rome" in {e.text for e in zoo.pack.page(0, 10)}
    zoo.edit(by_text["Lion facts: Paris Paris Paris Paris Paris"], text="Lion facts: Lima Lima Lima Lima Lima")  # free again
