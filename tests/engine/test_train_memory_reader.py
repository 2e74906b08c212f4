"""The train_memory_reader job on the tiny reader: learns, checkpoints, resumes, cancels, rejects bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.mechanisms.dpm.train_branch import TrainDataError, TrainMemoryReaderConfig, load_checkpoint, read_examples, train_memory_reader
from engine.mechanisms import dpm
from engine.reader.tiny import make_tiny_reader
from engine.progress import JobCancelled
from engine.resources import demo_dir

SMALL = {"layers": 2, "heads": 2, "head_dim": 16, "batch": 8, "absent_pool": 4, "p_absent": 0.1, "neighbours": 6}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_reader(seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    lines = (demo_dir() / "geography" / "counterfactual_train.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    p = tmp_path_factory.mktemp("data") / "cf.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def trained(tiny, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "branch"
    events = []
    res = train_memory_reader(
        {"out": str(out), "data": [str(data)], "steps": 40, "lr": 1e-2, **SMALL},
        progress=lambda f, m="", **metrics: events.append((f, m, metrics)),
        reader=tiny,
    )
    return out, res, events


def mean_answer_logprob(reader, branch, examples) -> float:
    """Mean log p(answer) with the example's own fact as the only memory entry."""
    f = dpm.DPMFusion(reader, branch)
    tot = 0.0
    for e in examples:
        ans = reader.tokenizer(" " + e["answer"], add_special_tokens=False)["input_ids"]
        tot += f.leave_one_out(e["prompt"], [e["text"]], [0.8], ans).logp_all
    return tot / len(examples)


def test_training_makes_the_reader_follow_its_memory(tiny, data, trained):
    out, res, events = trained
    assert res["steps_done"] == 40 and res["final_loss"] < res["initial_loss"]
    branch = dpm.load(out, tiny)  # the saved artefact: config.json + model.safetensors
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    untrained = dpm.MemoryBranch(branch.config, tiny)
    examples = read_examples([data])
    gain = mean_answer_logprob(tiny, branch, examples) - mean_answer_logprob(tiny, untrained, examples)
    assert gain > 1.0, gain  # nats per answer, on counterfactual facts the reader never saw
    # Live loss curve for the GUI: progress carries loss and step metrics.
    losses = [m for _, _, m in events if "loss" in m]
    assert losses and all({"loss", "step"} <= set(m) for m in losses)
    assert events[-1][0] == 1.0
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["steps"] == 40 and meta["reader"]["name"] == tiny.name


def test_cancel_checkpoints_and_a_new_run_resumes(tiny, data, tmp_path):
    out = tmp_path / "b"
    seen = {"step": 0}

    def progress(fraction, message="", **metrics):
        seen["step"] = max(seen["step"], metrics.get("step", 0))

    cfg = {"out": str(out), "data": [str(data)], "steps": 6, "checkpoint_every": 2, **SMALL}
    with pytest.raises(JobCancelled, match="resume"):  # cancelled once step 3 is done
        train_memory_reader(cfg, progress=progress, should_stop=lambda: seen["step"] >= 3, reader=tiny)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert 0 < ck["step"] < 6
    assert not (out / "model.safetensors").exists()  # no half-trained branch is published
    res = train_memory_reader(cfg, reader=tiny)
    assert res["resumed_from"] == ck["step"] and res["steps_done"] == 6
    assert (out / "model.safetensors").is_file()
    # The precomputed reader states were reused, not recomputed.
    assert (out / "precomputed.pt").is_file()


def test_a_checkpoint_of_another_shape_is_refused(tiny, data, tmp_path):
    out = tmp_path / "b"
    train_memory_reader({"out": str(out), "data": [str(data)], "steps": 1, **SMALL}, reader=tiny)
    with pytest.raises(ValueError, match="another branch shape"):
        train_memory_reader({"out": str(out), "data": [str(data)], "steps": 2, **(SMALL | {"heads": 4})}, reader=tiny)


def test_a_checkpoint_for_another_reader_is_refused(tiny, data, tmp_path):
    out = tmp_path / "b"
    train_memory_reader({"out": str(out), "data": [str(data)], "steps": 1, **SMALL}, reader=tiny)
    with pytest.raises(dpm.DPMError, match="trained for the reader"):
        train_memory_reader({"out": str(out), "data": [str(data)], "steps": 2, **SMALL}, reader=make_tiny_reader(seed=3))


@pytest.mark.parametrize(
    "line, match",
    [
        ("{oops", r"cf\.jsonl:2: not valid JSON"),
        ('{"text": "a", "prompt": "b"}', r"cf\.jsonl:2: field 'answer'"),
        ('["a"]', r"cf\.jsonl:2: expected a JSON object with text"),
    ],
)
def test_bad_training_data_names_file_and_line(tmp_path, line, match):
    p = tmp_path / "cf.jsonl"
    p.write_text('{"text": "t", "prompt": "p", "answer": "a"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(TrainDataError, match=match):
        read_examples([p])


def test_missing_data_and_bad_configs(tmp_path):
    with pytest.raises(TrainDataError, match="no such file"):
        read_examples([tmp_path / "none.jsonl"])
    for bad, match in [
        ({"out": "x"}, "missing data"),
        ({"out": "x", "data": "d", "steps": 0}, "steps must be a positive"),
        ({"out": "x", "data": "d", "lr": -1}, "lr must be > 0"),
        ({"out": "x", "data": "d", "value_mode": "avg"}, "value_mode"),
        ({"out": "x", "data": "d", "value_space": "logits"}, "value_space"),
        ({"out": "x", "data": "d", "speed": 3}, "unknown field"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainMemoryReaderConfig.from_dict(bad)


def test_cli_train_memory_reader(tiny, data, tmp_path, capsys):
    from engine.cli import main

    folder = tiny.save(tmp_path / "tiny-reader")
    out = tmp_path / "branch"
    code = main(["train-memory-reader", "--data", str(data), "--out", str(out), "--reader", str(folder), "--steps", "2",
                 "--layers", "2", "--heads", "2", "--head-dim", "16", "--batch", "4", "--value-space", "unembedding", "--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert json.loads(cap.out)["steps_done"] == 2 and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["config"]["value_space"] == "unembedding"
    code = main(["train-memory-reader", "--data", str(tmp_path / "nope.jsonl"), "--out", str(out), "--reader", str(folder)])
    cap = capsys.readouterr()
    assert code == 2 and "nope.jsonl: no such file" in cap.err
    code = main(["train-memory-reader", "--data", str(data), "--out", str(out), "--steps", "0"])
    cap = capsys.readouterr()
    assert code == 2 and "argument --steps: must be at least 1 (got 0)" in cap.err
