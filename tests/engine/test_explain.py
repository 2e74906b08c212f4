"""Predictions and their explanation records, on the tiny reader with real packs and the real key encoder."""
from __future__ import annotations

import json

import pytest

from engine.explain import Explanation, PredictError, Predictor, predict, retrieve
from engine.memory import Memory
from engine.reader.tiny import make_tiny_reader

from .test_dpm import OSLO, PARIS, PROMPT, ROME, copy_branch, random_branch

RECORD_KEYS = {"answer", "answer_without_memory", "mode", "retrieved", "prompt", "packs"}
ENTRY_KEYS = {"pack", "id", "title", "text", "source", "score", "weight", "loo_delta"}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_reader(seed=0)


@pytest.fixture
def zoo(tmp_path, encoder):
    m = Memory.open(tmp_path / "zoo.plugmem", encoder, create=True, name="zoo")
    m.add_many([
        {"text": ROME, "title": "Zebra", "source": "zoo.txt:1"},
        {"text": PARIS, "title": "Lion", "source": "zoo.txt:2"},
        {"text": "Tiger facts: Lima Lima Lima Lima Lima", "title": "Tiger", "source": "zoo.txt:3"},
    ])
    yield m
    m.close()


@pytest.fixture
def farm(tmp_path, encoder):
    m = Memory.open(tmp_path / "farm.plugmem", encoder, create=True, name="farm")
    m.add_many([
        {"text": "Zebra facts are also kept on the farm: Cairo Cairo Cairo", "title": "Zebra"},
        {"text": "Cow facts: Tokyo Tokyo Tokyo Tokyo", "title": "Cow"},
    ])
    yield m
    m.close()


def entry_id(mem, text):
    return next(e.id for e in mem.pack.page(0, 100) if e.text == text)


@pytest.mark.parametrize("mode", ["dpm", "context", "none"])
def test_nothing_plugged_gives_exactly_the_base_reader(tiny, mode):
    p = Predictor(tiny, copy_branch(tiny))
    rec = p.predict(PROMPT, [], mode=mode, max_new_tokens=6)
    base = tiny.generate(PROMPT, max_new_tokens=6)
    assert rec.answer == base and rec.answer_without_memory == base and rec.retrieved == []


def test_dpm_answer_follows_memory_and_record_has_the_issue_keys(tiny, zoo):
    rec = Predictor(tiny, copy_branch(tiny)).predict(PROMPT, [zoo], mode="dpm", k=3, max_new_tokens=3)
    assert rec.answer.startswith(" Rome")
    assert rec.answer_without_memory == tiny.generate(PROMPT, max_new_tokens=3)
    d = json.loads(rec.to_json())
    assert RECORD_KEYS <= set(d) and d["mode"] == "dpm" and d["packs"] == ["zoo"]
    assert len(d["retrieved"]) == 3
    for r in d["retrieved"]:
        assert ENTRY_KEYS <= set(r) and r["pack"] == "zoo"
    top = d["retrieved"][0]
    assert (top["text"], top["title"], top["source"]) == (ROME, "Zebra", "zoo.txt:1")
    assert [r["score"] for r in d["retrieved"]] == sorted((r["score"] for r in d["retrieved"]), reverse=True)
    # The entry the answer was copied from carries the weight and the leave-one-out effect.
    assert top["weight"] == max(r["weight"] for r in d["retrieved"]) and top["weight"] > 0.5
    assert top["loo_delta"] > 1.0 and top["loo_delta"] == max(r["loo_delta"] for r in d["retrieved"])
    assert Explanation.from_dict(d).to_dict() == rec.to_dict()


def test_an_edit_changes_the_next_prediction_without_rebuilding_the_index(tiny, zoo, monkeypatch):
    p = Predictor(tiny, copy_branch(tiny))
    assert p.predict(PROMPT, [zoo], k=3, max_new_tokens=3).answer.startswith(" Rome")
    monkeypatch.setattr(Memory, "rebuild_index", lambda *a, **k: pytest.fail("the index was rebuilt"))
    zoo.edit(entry_id(zoo, ROME), text=OSLO)
    p.warm_entries([OSLO])  # what the app does in the background right after an edit
    assert p._dpm.cache.get(OSLO) is not None
    rec = p.predict(PROMPT, [zoo], k=3, max_new_tokens=3, explain=False)
    assert rec.answer.startswith(" Oslo") and rec.retrieved[0].text == OSLO
    p.forget_entries([OSLO])
    assert p._dpm.cache.get(OSLO) is None
    assert p.predict(PROMPT, [zoo], k=3, max_new_tokens=3, explain=False).answer == rec.answer
    zoo.undo()
    assert p.predict(PROMPT, [zoo], k=3, max_new_tokens=3).answer.startswith(" Rome")
    zoo.set_status([entry_id(zoo, ROME)], "disabled")
    assert all(r.text != ROME for r in p.predict(PROMPT, [zoo], k=3, max_new_tokens=3).retrieved)


def test_several_packs_are_merged_by_score(tiny, zoo, farm):
    rec = Predictor(tiny, copy_branch(tiny)).predict(PROMPT, [zoo, farm], k=4, max_new_tokens=3)
    assert rec.packs == ["zoo", "farm"] and len(rec.retrieved) == 4
    assert {r.pack for r in rec.retrieved} == {"zoo", "farm"}
    scores = [r.score for r in rec.retrieved]
    assert scores == sorted(scores, reverse=True)
    everything = sorted(
        [(h.score, "zoo", h.entry.id) for h in zoo.search(PROMPT, k=4)] + [(h.score, "farm", h.entry.id) for h in farm.search(PROMPT, k=4)],
        reverse=True,
    )[:4]
    assert [(r.pack, r.id) for r in rec.retrieved] == [(p, i) for _, p, i in everything]
    assert retrieve(PROMPT, [zoo, farm], 2) == retrieve(PROMPT, [zoo, farm], 4)[:2]


def test_context_mode_explains_with_attention_and_leave_one_out(tiny, zoo):
    rec = Predictor(tiny).predict(PROMPT, [zoo], mode="context", k=3, max_new_tokens=4)
    assert rec.mode == "context" and len(rec.retrieved) == 3
    assert rec.answer_without_memory == tiny.generate(PROMPT, max_new_tokens=4)
    from engine.mechanisms.context import context_prompt

    assert rec.answer == tiny.generate(context_prompt(PROMPT, [r.text for r in rec.retrieved]), max_new_tokens=4)
    assert all(r.weight is not None and 0 <= r.weight <= 1 for r in rec.retrieved)
    assert all(isinstance(r.loo_delta, float) for r in rec.retrieved)


def test_mode_none_ignores_the_memory(tiny, zoo):
    rec = Predictor(tiny, copy_branch(tiny)).predict(PROMPT, [zoo], mode="none", max_new_tokens=3)
    assert rec.answer == rec.answer_without_memory == tiny.generate(PROMPT, max_new_tokens=3)
    assert rec.retrieved == []


def test_leave_one_out_changes_match_predictions_without_each_entry(tiny, zoo):
    br = random_branch(tiny)
    rec = Predictor(tiny, br).predict(PROMPT, [zoo], k=3, max_new_tokens=3)
    from engine.mechanisms.dpm import DPMFusion

    f = DPMFusion(tiny, br)
    ans = tiny.tokenizer(rec.answer, add_special_tokens=False)["input_ids"]
    texts = [r.text for r in rec.retrieved]
    scores = [r.score for r in rec.retrieved]
    for i, r in enumerate(rec.retrieved):
        without = f.leave_one_out(PROMPT, texts[:i] + texts[i + 1:], scores[:i] + scores[i + 1:], ans).logp_all
        assert r.loo_delta == pytest.approx(rec.answer_logprob - without, abs=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"mode": "magic"}, "Unknown mode 'magic'"),
        ({"k": 0}, "k must be a positive"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_requests_are_named(tiny, kwargs, match):
    args = {"prompt": PROMPT, "mode": "context", "k": 3, "max_new_tokens": 3} | kwargs
    with pytest.raises(PredictError, match=match):
        predict(tiny, args["prompt"], [], mode=args["mode"], k=args["k"], max_new_tokens=args["max_new_tokens"])


def test_dpm_without_a_branch_says_what_to_do(tiny, zoo):
    with pytest.raises(PredictError, match="needs a trained memory branch"):
        predict(tiny, PROMPT, [zoo], mode="dpm")


def test_a_branch_of_another_reader_is_a_clear_error(tiny):
    other = make_tiny_reader(seed=1)
    with pytest.raises(PredictError, match="trained for the reader"):
        Predictor(other, copy_branch(tiny))


def test_html_escapes_user_text(tiny, tmp_path, encoder):
    with Memory.open(tmp_path / "x.plugmem", encoder, create=True, name="<b>x</b>") as m:
        m.add("Zebra <script>alert(1)</script> Rome Rome Rome", title="<i>t</i>")
        html = Predictor(tiny, copy_branch(tiny)).predict(PROMPT, [m], k=1, max_new_tokens=2).to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    """A tiny reader saved as a model folder, and a copy branch saved for that loaded reader."""
    from engine.mechanisms import dpm
    from engine.reader import load_reader

    root = tmp_path_factory.mktemp("models")
    folder = make_tiny_reader(seed=0).save(root / "tiny-reader")
    reader = load_reader(folder)
    branch = dpm.save(copy_branch(reader), root / "copy-branch")
    other = dpm.save(copy_branch(make_tiny_reader(seed=0)), root / "other-branch")  # fingerprint of the in-memory reader
    return str(folder), str(branch), str(other)


@pytest.fixture
def zoo_pack(zoo):
    path = str(zoo.pack.path)
    zoo.close()
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from engine.cli import main

    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_predict_prints_the_record(cli_models, zoo_pack, capsys):
    reader, branch, _ = cli_models
    code, out, err = run_cli(capsys, "predict", PROMPT, "--memory", zoo_pack, "-k", "3", "--max-new-tokens", "3",
                             "--reader", reader, "--branch", branch, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["answer"].startswith(" Rome") and d["mode"] == "dpm" and len(d["retrieved"]) == 3
    assert ENTRY_KEYS <= set(d["retrieved"][0])
    code, out, _ = run_cli(capsys, "predict", PROMPT, "--memory", zoo_pack, "--mode", "context", "--reader", reader)
    assert code == 0 and "without memory:" in out and "zoo#" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["predict", "  "], "prompt is empty"),
        (["predict", PROMPT, "-k", "0"], "argument -k: must be at least 1 (got 0)"),
        (["predict", PROMPT, "--mode", "magic"], "choose from dpm, context, none"),
        (["predict", PROMPT, "--memory", "{missing}"], "no such pack"),
        (["predict", PROMPT, "--memory", "{pack}", "--mode", "context", "--reader", "{nowhere}"], "Reader model folder not found"),
        (["predict", PROMPT, "--memory", "{pack}", "--reader", "{reader}"], "needs a memory branch trained for the reader"),
        (["predict", PROMPT, "--memory", "{pack}", "--reader", "{reader}", "--branch", "{other}"], "trained for the reader"),
        (["predict", PROMPT, "--memory", "{pack}", "--reader", "{reader}", "--branch", "{nowhere}"], "branch folder not found"),
        (["predict", PROMPT, "--memory", "{foreign}", "--mode", "context", "--reader", "{reader}"], "encoder"),
    ],
)
def test_cli_predict_bad_input_is_one_line_and_status_2(cli_models, zoo_pack, tmp_path, capsys, args, match):
    from engine.fingerprint import EncoderFingerprint
    from engine.store import Pack

    reader, branch, other = cli_models
    foreign = tmp_path / "foreign.plugmem"
    Pack.create(foreign, name="foreign", encoder=EncoderFingerprint("acme/other", "f" * 64, 768, "cls")).close()
    names = {"pack": zoo_pack, "reader": reader, "other": other, "foreign": str(foreign),
             "missing": str(tmp_path / "missing.plugmem"), "nowhere": str(tmp_path / "nowhere")}
    code, out, err = run_cli(capsys, *[a.format(**names) for a in args])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and match in err


# ----------------------------------------------------------------------------- the real reader and the shipped branch


@pytest.mark.slow
def test_shipped_branch_follows_an_edited_fact_and_unplugged_is_the_base_reader(tmp_path, encoder):
    from engine.mechanisms import dpm
    from engine.reader import load_reader

    reader = load_reader()
    p = Predictor(reader, dpm.load_default_branch(reader))
    prompt = "The capital of Japan is"
    with Memory.open(tmp_path / "geo.plugmem", encoder, create=True, name="geo") as m:
        m.add_many([
            {"text": "The capital of Japan is Tokyo.", "title": "Japan"},
            {"text": "The capital of France is Paris.", "title": "France"},
            {"text": "The currency of Japan is the yen.", "title": "Japan"},
        ])
        assert p.predict(prompt, [], max_new_tokens=4).answer == reader.generate(prompt, max_new_tokens=4)
        rec = p.predict(prompt, [m], k=3, max_new_tokens=4)
        assert rec.answer.lstrip().startswith("Tokyo")
        tokyo = rec.retrieved[0]
        assert tokyo.text == "The capital of Japan is Tokyo." and tokyo.weight == max(r.weight for r in rec.retrieved)
        m.edit(tokyo.id, text="The capital of Japan is Lisbon.")  # a counterfactual the reader never saw
        after = p.predict(prompt, [m], k=3, max_new_tokens=4)
        assert after.answer.lstrip().startswith("Lisbon"), after.answer
        lisbon = after.retrieved[0]
        assert lisbon.text == "The capital of Japan is Lisbon." and lisbon.loo_delta > 2.0  # the answer rests on it
        assert after.answer_without_memory == reader.generate(prompt, max_new_tokens=4)
        m.undo()
        assert p.predict(prompt, [m], k=3, max_new_tokens=4).answer.lstrip().startswith("Tokyo")
